#!/usr/bin/env bash
# The speed/accuracy table of the backbones (issue 21): the anomaly model trained on
# magnetic-tile (the tuning dataset) with each EfficientNet-Lite variant at the defaults, its
# held-out figures, beside criterion's times for the backbone and the whole model on this
# machine, at the input size the run chooses and at 256. Writes the models to var/eval-backbones/ and the table to
# var/eval-backbones/table.md. Takes about 20 minutes on 2 cores.
# Usage: scripts/eval-backbones.sh PATH_TO_LINESIGHT_BINARY [DATASETS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(realpath "$1")"
data="${2:-../shared/datasets}"
out=var/eval-backbones
target="${CARGO_TARGET_DIR:-target}"
mkdir -p "$out"

if [ ! -d "$data/magnetic-tile" ]; then
  echo "eval-backbones: skipping: $data/magnetic-tile is absent"
  exit 0
fi

# At the size the run chooses (128 on magnetic-tile) and at 256, where a deeper network's
# receptive field may pay. Each with the 4096-entry bank these figures were first measured
# with: the backbones are compared, not the bank the run would choose (scripts/eval-bank-size.sh).
for variant in lite0 lite1; do
  for size in auto 256; do
    "$bin" train anomaly --layout magnetic-tile --data "$data/magnetic-tile" \
      --out "$out/magnetic-tile-anomaly-$variant-$size" --name "magnetic-tile-anomaly-$variant-$size" \
      --backbone "models/efficientnet-$variant/efficientnet-$variant.safetensors" --input-size "$size" \
      --bank-size 4096
  done
done

# Both backbones' benches in one run, so their times compare.
started="$(date +%s)"
cargo bench --locked --bench inspect -- \
  '^anomaly/(backbone_features_(256|128)|score_256_input(128|256)_bank4096)(_lite1)?$'

PYTHONPATH=scripts python3 - "$out" "$target/criterion" "$started" <<'PY'
import json, sys
import criterion_times
out, criterion, started = sys.argv[1], sys.argv[2], float(sys.argv[3])

def ms(bench):
    """This run's median time of `bench`, in ms."""
    value = criterion_times.median_ms(criterion, bench, since=started)
    if value is None:
        raise SystemExit(f"eval-backbones: this run of criterion wrote no estimate for {bench}")
    return value

rows = ["| backbone | input | held-out image AUROC | AP | pixel AUROC "
        "| false rejects (target 0.05) | backbone features (ms) | anomaly model, 256 image (ms) |",
        "|---|---|---|---|---|---|---|---|"]
for variant, suffix in [("lite0", ""), ("lite1", "_lite1")]:
    for size in ["auto", "256"]:
        card = json.load(open(f"{out}/magnetic-tile-anomaly-{variant}-{size}/card.json"))
        m, input_size = card["metrics"], card["input_size"]
        chosen = " (chosen)" if size == "auto" else ""
        rows.append(
            f"| EfficientNet-{variant.capitalize()} | {input_size}{chosen} "
            f"| {m['image_auroc']:.4f} | {m['average_precision']:.4f} | {m['pixel_auroc']:.4f} "
            f"| {m['at_threshold']['false_reject_rate']:.4f} "
            f"| {ms(f'anomaly/backbone_features_{input_size}{suffix}'):.2f} "
            f"| {ms(f'anomaly/score_256_input{input_size}_bank4096{suffix}'):.2f} |")
table = "\n".join(rows)
open(f"{out}/table.md", "w").write(table + "\n")
print(table)
PY

#!/usr/bin/env bash
# Turned copies of the good images in the anomaly model's bank (`train anomaly --orientations`,
# issue 21), chosen on magnetic-tile's development part and reported once on its held-out part.
# The development part is the training part (three quarters) split again the way training
# splits a dataset: var/eval-orientations/magnetic-tile-dev holds links to its images (read in
# place, nothing copied), so its own held-out quarter never overlaps the real one. Each setting
# trains on it with three seeds: no turns, the flip left to right alone, `auto` (both flips and
# the half turn there: what the protocol's limit of 0.75 takes) and every turn; then `none` and
# `auto` train on the whole dataset once. Writes the table to var/eval-orientations/table.md.
# Takes about 8 minutes on 2 cores.
# Usage: scripts/eval-orientations.sh PATH_TO_LINESIGHT_BINARY [DATASETS_DIR]
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: scripts/eval-orientations.sh PATH_TO_LINESIGHT_BINARY [DATASETS_DIR]" >&2
  exit 2
fi
# Both resolved where they were given, before the script moves to the checkout (as
# eval-scales.sh does).
bin="$(realpath "$1")"
data="$(realpath -m "${2:-$(dirname "$0")/../../shared/datasets}")"
cd "$(dirname "$0")/.."
out=var/eval-orientations
mkdir -p "$out"

if [ ! -d "$data/magnetic-tile" ]; then
  echo "eval-orientations: skipping: $data/magnetic-tile is absent"
  exit 0
fi

# The development part: every image training would train on, linked with its mask.
python3 scripts/magnetic-tile-dev.py "$data/magnetic-tile" "$out/magnetic-tile-dev"

settings=(none flip-horizontal auto all)
# Every run with the 4096-entry bank these figures were first measured with: turned copies add
# patches, and a bank the run chose would grow with them, mixing two effects in one figure.
for turns in "${settings[@]}"; do
  for seed in 0 1 2; do
    "$bin" train anomaly --layout magnetic-tile --data "$out/magnetic-tile-dev" \
      --out "$out/dev-$turns-$seed" --name "dev-$turns" --orientations "$turns" --seed "$seed" \
      --bank-size 4096 > "$out/dev-$turns-$seed.log"
  done
done
for turns in none auto; do
  "$bin" train anomaly --layout magnetic-tile --data "$data/magnetic-tile" \
    --out "$out/held-out-$turns" --name "magnetic-tile-anomaly-$turns" --orientations "$turns" \
    --bank-size 4096 > "$out/held-out-$turns.log"
done

python3 - "$out" "${settings[@]}" <<'PY'
import json, statistics, sys
out, settings = sys.argv[1], sys.argv[2:]
def card(name):
    return json.load(open(f"{out}/{name}/card.json"))
def auroc(name):
    return card(name)["metrics"]["image_auroc"]
def turns(name):
    choice = card(name).get("orientation_choice")
    return ", ".join(choice["chosen"]) if choice and choice["chosen"] else "none"
rows = ["| --orientations | turns learnt | development AUROC, seeds 0/1/2 (mean) | held-out AUROC (seed 0) | training, seed 0 (s) |",
        "|---|---|---|---|---|"]
for s in settings:
    dev = [auroc(f"dev-{s}-{seed}") for seed in range(3)]
    held = f"{auroc(f'held-out-{s}'):.4f}" if s in ("none", "auto") else ""
    seconds = card(f"dev-{s}-0")["training_duration_s"]
    rows.append(f"| {s} | {turns(f'dev-{s}-0')} | {' / '.join(f'{a:.4f}' for a in dev)} "
                f"({statistics.mean(dev):.4f}) | {held} | {seconds:.0f} |")
trials = card("dev-auto-0")["orientation_choice"]["trials"]
rows.append("")
rows.append("Each turn's trial on the development part (AUROC of turned good validation images "
            "against the same images as they are): "
            + ", ".join(f"{t['orientation']} {t['turned_auroc']:.3f}" for t in trials))
table = "\n".join(rows)
print(table)
open(f"{out}/table.md", "w").write(table + "\n")
PY

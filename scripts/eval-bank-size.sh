#!/usr/bin/env bash
# The anomaly model's memory bank size (issue 21: "coreset size ... chosen by the training run
# itself"), tried on magnetic-tile's development part (scripts/magnetic-tile-dev.py; the real
# held-out quarter is never looked at). Trains the model at input 128 (what `--input-size auto`
# chooses there) with banks of 1024 to 16384 entries and with `--bank-size auto` (the run's own
# choice, src/models/anomaly/bank_size.rs), seeds 0, 1 and 2, and writes each one's AUROC on
# the development part's own held-out quarter, with how much each bank the choice tried raised
# good validation images' scores over a bank of every good patch, to var/eval-bank-size/table.md.
# Takes about 6 minutes on 2 cores.
# Usage: scripts/eval-bank-size.sh PATH_TO_LINESIGHT_BINARY [DATASETS_DIR]
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: scripts/eval-bank-size.sh PATH_TO_LINESIGHT_BINARY [DATASETS_DIR]" >&2
  exit 2
fi
# Both resolved where they were given, before the script moves to the checkout.
bin="$(realpath "$1")"
data="$(realpath -m "${2:-$(dirname "$0")/../../shared/datasets}")"
cd "$(dirname "$0")/.."
out=var/eval-bank-size
mkdir -p "$out"

if [ ! -d "$data/magnetic-tile" ]; then
  echo "eval-bank-size: skipping: $data/magnetic-tile is absent"
  exit 0
fi
python3 scripts/magnetic-tile-dev.py "$data/magnetic-tile" "$out/magnetic-tile-dev"

for bank in 1024 2048 4096 8192 16384 auto; do
  for seed in 0 1 2; do
    model="$out/dev-$bank-$seed"
    "$bin" train anomaly --layout magnetic-tile --data "$out/magnetic-tile-dev" \
      --out "$model" --name "dev-bank-$bank" --input-size 128 --bank-size "$bank" \
      --seed "$seed" > "$model.log" 2>&1 \
      || { echo "eval-bank-size: training with bank $bank (seed $seed) failed: see $model.log" >&2; exit 1; }
  done
done

python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
SEEDS = (0, 1, 2)
def card(bank, seed):
    return json.load(open(f"{out}/dev-{bank}-{seed}/card.json"))
# The rise each size the choice tried gave, from the `auto` runs' cards.
rises = {}
for seed in SEEDS:
    for trial in card("auto", seed)["bank_size_choice"]["trials"]:
        rises.setdefault(trial["bank_size"], {})[seed] = trial["score_rise"]
rows = ["| --bank-size | entries | development AUROC, seeds 0/1/2 (mean) | good validation scores' rise over every patch, seeds 0/1/2 | training, seed 0 (s) |",
        "|---|---|---|---|---|"]
for bank in ("1024", "2048", "4096", "8192", "16384", "auto"):
    cards = [card(bank, seed) for seed in SEEDS]
    aurocs = [c["metrics"]["image_auroc"] for c in cards]
    entries = sorted({c["bank_size"] for c in cards})
    rise = rises.get(int(bank), {}) if bank != "auto" else {}
    rise = " / ".join(f"{100 * rise[s]:+.1f} %" for s in SEEDS) if len(rise) == len(SEEDS) else ""
    rows.append(f"| {bank} | {', '.join(map(str, entries))} | "
                + " / ".join(f"{a:.4f}" for a in aurocs)
                + f" ({sum(aurocs) / len(aurocs):.4f}) | {rise} | {cards[0]['training_duration_s']:.0f} |")
choice = card("auto", 0)["bank_size_choice"]
rows += ["", f"Seed 0's choice: {choice['rule']}; {choice['n_patches']} good patches, "
         f"{choice['n_validation']} validation images scored against all of them in {choice['reference_seconds']:.1f} s."]
table = "\n".join(rows)
open(f"{out}/table.md", "w").write(table + "\n")
print(table)
PY

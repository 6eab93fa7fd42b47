#!/usr/bin/env bash
# Two scales at once for the anomaly model (issue 21: "multi-scale inputs"), tried on
# magnetic-tile's development part (scripts/magnetic-tile-dev.py; the real held-out quarter is
# never looked at). Trains the model at input 128 (what `--input-size auto` chooses there) and
# at 256, seeds 0, 1 and 2, scores the development part's own held-out quarter with each
# (`linesight eval anomaly --scores`), and sums the two models' scores image by image (each is
# already in standard deviations of good validation parts): the two-scale model. Writes the
# table, with each summed score's AUROC alone, and a second table of every subset of the four
# scores at 128 (which of them the model should sum), to var/eval-scales/table.md.
# Takes about 8 minutes on 2 cores.
# Usage: scripts/eval-scales.sh PATH_TO_LINESIGHT_BINARY [DATASETS_DIR]
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: scripts/eval-scales.sh PATH_TO_LINESIGHT_BINARY [DATASETS_DIR]" >&2
  exit 2
fi
# Both resolved where they were given, before the script moves to the checkout.
bin="$(realpath "$1")"
data="$(realpath -m "${2:-$(dirname "$0")/../../shared/datasets}")"
cd "$(dirname "$0")/.."
out=var/eval-scales
mkdir -p "$out"

if [ ! -d "$data/magnetic-tile" ]; then
  echo "eval-scales: skipping: $data/magnetic-tile is absent"
  exit 0
fi
python3 scripts/magnetic-tile-dev.py "$data/magnetic-tile" "$out/magnetic-tile-dev"

# Each with the 4096-entry bank these figures were first measured with: the scales are
# compared, not the bank the run would choose (scripts/eval-bank-size.sh).
for size in 128 256; do
  for seed in 0 1 2; do
    model="$out/dev-$size-$seed"
    "$bin" train anomaly --layout magnetic-tile --data "$out/magnetic-tile-dev" \
      --out "$model" --name "dev-$size" --input-size "$size" --seed "$seed" --bank-size 4096 \
      > "$model.log" 2>&1 \
      || { echo "eval-scales: training at $size (seed $seed) failed: see $model.log" >&2; exit 1; }
    "$bin" eval anomaly --model "$model" --layout magnetic-tile \
      --data "$out/magnetic-tile-dev" --scores "$model.csv" --json "$model.json" \
      > "$model.eval.log" 2>&1 \
      || { echo "eval-scales: scoring at $size (seed $seed) failed: see $model.eval.log" >&2; exit 1; }
  done
done

python3 - "$out" <<'PY'
import csv, itertools, json, statistics, sys
out = sys.argv[1]
SEEDS = range(3)

def auroc(scores, labels):
    """Probability that a defective image outscores a good one (ties count half)."""
    pos = [s for s, l in zip(scores, labels) if l]
    neg = [s for s, l in zip(scores, labels) if not l]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))

def scored(size, seed):
    with open(f"{out}/dev-{size}-{seed}.csv") as f:
        return {row["image"]: row for row in csv.DictReader(f)}

def figures(size, seed):
    return json.load(open(f"{out}/dev-{size}-{seed}.json"))

rows = ["| input | development AUROC, seeds 0/1/2 (mean) | patch / image / head / coarse alone, seed 0 | training, seed 0 (s) |",
        "|---|---|---|---|"]
def seconds(size):
    return json.load(open(f"{out}/dev-{size}-0/card.json"))["training_duration_s"]
for size in (128, 256):
    aurocs = [figures(size, seed)["image_auroc"] for seed in SEEDS]
    alone = figures(size, 0)["score_auroc"]
    rows.append(f"| {size} | {' / '.join(f'{a:.4f}' for a in aurocs)} ({statistics.mean(aurocs):.4f}) | "
                + " / ".join("n/a" if alone.get(k) is None else f"{alone[k]:.3f}"
                             for k in ("patch", "image", "head", "coarse_image"))
                + f" | {seconds(size):.0f} |")
both = []
for seed in SEEDS:
    small, large = scored(128, seed), scored(256, seed)
    if small.keys() != large.keys():
        sys.exit(f"eval-scales: the two sizes scored different images (seed {seed})")
    images = sorted(small)
    labels = [small[i]["class"] != "good" for i in images]
    both.append(auroc([float(small[i]["score"]) + float(large[i]["score"]) for i in images], labels))
rows.append(f"| 128 + 256, scores summed | {' / '.join(f'{a:.4f}' for a in both)} "
            f"({statistics.mean(both):.4f}) | | {seconds(128) + seconds(256):.0f} |")

# Which of the four scores to sum (issue 21: "patch vs image scores"), at the chosen input
# size: every subset, each score standardised as the model standardises it (the card's
# score_scale), judged on the same images. Read, not chosen by the run: painted defects, all a
# good-only run has to judge by, are what the patch head learns, so they would crown the head,
# the weakest score on real defects here, and they say nothing of the image-level scores, which
# find defects that cover the surface.
KEYS = {"patch": ("patch_mean", "patch_std"), "image_gaussian": ("image_mean", "image_std"),
        "head": "head", "coarse_image": "coarse_image"}
def standardised(seed):
    scale = json.load(open(f"{out}/dev-128-{seed}/card.json"))["score_scale"]
    spread = {k: (scale[v[0]], scale[v[1]]) if isinstance(v, tuple) else
              (scale[v]["mean"], scale[v]["std"]) for k, v in KEYS.items()}
    rows = list(scored(128, seed).values())
    z = [{k: (float(r[k]) - m) / s for k, (m, s) in spread.items()} for r in rows]
    for r, each in zip(rows, z):  # the four, summed, are the model's own score
        if abs(sum(each.values()) - float(r["score"])) > 1e-3 * max(1.0, abs(float(r["score"]))):
            sys.exit(f"eval-scales: {r['image']}: the standardised scores do not sum to its score")
    return z, [r["class"] != "good" for r in rows]
subsets = [s for k in range(1, 5) for s in itertools.combinations(KEYS, k)]
judged = {s: [] for s in subsets}
for seed in SEEDS:
    z, labels = standardised(seed)
    for s in subsets:
        judged[s].append(auroc([sum(each[k] for k in s) for each in z], labels))
rows += ["", "| scores summed (input 128) | development AUROC, seeds 0/1/2 (mean) |", "|---|---|"]
for s in sorted(subsets, key=lambda s: -statistics.mean(judged[s])):
    names = " + ".join({"image_gaussian": "image", "coarse_image": "coarse"}.get(k, k) for k in s)
    rows.append(f"| {names} | {' / '.join(f'{a:.4f}' for a in judged[s])} "
                f"({statistics.mean(judged[s]):.4f}) |")
table = "\n".join(rows)
print(table)
open(f"{out}/table.md", "w").write(table + "\n")
PY

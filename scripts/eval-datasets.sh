#!/usr/bin/env bash
# Trains and evaluates the models on the real datasets in ../shared/datasets (read in place)
# and checks each held-out figure against issues 3 and 21's targets; exits 1 when one is not met.
# Writes each model and its card (held-out metrics inside) to var/eval/. Takes about
# 92 minutes on 2 cores (24 min 31 s measured before DeepPCB was added; DeepPCB's anomaly model
# at the input size it chooses, 256, takes 3-5 min, with auto:512 17 min (choosing 512), its
# boxes 15 min (choosing 512), its
# golden-template model seconds,
# KolektorSDD's anomaly model seconds, CrackForest 32 min (choosing 1024)).
# Usage: scripts/eval-datasets.sh PATH_TO_LINESIGHT_BINARY [DATASETS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(realpath "$1")"
data="${2:-../shared/datasets}"
out=var/eval
mkdir -p "$out"

missing=0
for set in neu-det magnetic-tile kolektorsdd deeppcb; do
  if [ ! -d "$data/$set" ]; then
    echo "eval-datasets: skipping: $data/$set is absent"
    missing=1
  fi
done
[ "$missing" = 0 ] || exit 0

"$bin" train supervised --layout neu-det --data "$data/neu-det" --out "$out/neu-det" \
  --name neu-det --epochs 10 --augmented-copies 1 --input-size 128
"$bin" train supervised --layout magnetic-tile --data "$data/magnetic-tile" --out "$out/magnetic-tile" \
  --name magnetic-tile --epochs 30 --learning-rate 3e-3 --augmented-copies 3 --input-size 256
# KolektorSDD by 3-fold cross-validation over its items, as its authors measure it (its own
# held-out items are 12 images here), with magnetic-tile's settings: a new product, untuned.
"$bin" train supervised --layout kolektorsdd --data "$data/kolektorsdd" --out "$out/kolektorsdd-cv" \
  --name kolektorsdd --epochs 30 --learning-rate 3e-3 --augmented-copies 3 --input-size 256 --folds 3
# Labels without masks (issue 21): the same magnetic-tile images tagged with their class only,
# through a view of links to the images and none to the masks. The model it trains is then
# scored on the real folder, whose held-out part is the same images with their masks.
tags="$(mktemp -d)"
trap 'rm -rf "$tags"' EXIT
for class in "$data"/magnetic-tile/MT_*/; do
  name="$(basename "$class")"
  mkdir -p "$tags/$name/Imgs"
  ln -s "$(realpath "$class")"/Imgs/*.jpg "$tags/$name/Imgs/"
done
"$bin" train supervised --layout magnetic-tile --data "$tags" --out "$out/magnetic-tile-tags" \
  --name magnetic-tile-tags --epochs 30 --learning-rate 3e-3 --augmented-copies 3 --input-size 256
"$bin" eval supervised --model "$out/magnetic-tile-tags" --layout magnetic-tile \
  --data "$data/magnetic-tile" --json "$out/magnetic-tile-tags/held-out-with-masks.json"
# CrackForest (issue 21), where it is there: road cracks outlined by its `.seg` files,
# magnetic-tile's settings but the input size, which the run chooses on its validation images
# (`auto:1024`: 128, 256, 512 or 1024, up to twice the photos' 480 px, by the F1 of their
# cracks' outlines). Every image shows a crack, so there is no good image to pass and the
# threshold is the heat-map cut that outlined the validation images' cracks best: the figure
# is how well the heat maps outline the cracks, pixel by pixel within 2 px, on the held-out
# quarter.
if [ -d "$data/crackforest" ]; then
  "$bin" train supervised --layout crackforest --data "$data/crackforest" --out "$out/crackforest" \
    --name crackforest --epochs 30 --learning-rate 3e-3 --augmented-copies 3 --input-size auto:1024
else
  echo "eval-datasets: no CrackForest figure: $data/crackforest is absent"
  rm -rf "$out/crackforest"
fi
# DeepPCB with its boxes (issue 21), a product untouched by tuning: the supervised model learns
# the tested boards' boxes, each of its defect type (the templates are its goods), and draws one
# box per blob of its heat map, named by the type its patches vote for, the box shape chosen on
# its validation images. The input size is chosen by the run on the same images' boxes
# (`auto:512`): its defects are a few pixels of a 640-pixel board, and at 256 a patch (20 board
# pixels) is wider than most of them. One augmented copy keeps training time down (906 s
# measured alone on 2 cores, the three sizes' first fits included).
"$bin" train supervised --layout deeppcb --data "$data/deeppcb" --out "$out/deeppcb-boxes" \
  --name deeppcb-boxes --epochs 30 --learning-rate 3e-3 --augmented-copies 1 --input-size auto:512
# DeepPCB by golden-template comparison (issue 21's box figure): each tested board compared with
# its own template, the differences judged by a classifier learnt from the training boards'
# typed boxes; how deep a difference must reach and how near ones join, then the threshold, are
# chosen on a fifth of them held back; under a minute to train.
"$bin" train template --layout deeppcb --data "$data/deeppcb" --out "$out/deeppcb-template" \
  --name deeppcb-template
"$bin" train anomaly --layout magnetic-tile --data "$data/magnetic-tile" --out "$out/magnetic-tile-anomaly" \
  --name magnetic-tile-anomaly
# DeepPCB and KolektorSDD as new products (issue 21): good-only onboarding at the defaults,
# the input size chosen by the run itself (`--input-size auto`). DeepPCB's defect-free
# templates are its goods; held out: every 4th template and every 4th tested board.
# KolektorSDD's clean images are its goods: 13 in the subset here, 7 to train on, too few to
# choose a size or judge much, so its figure is reported without a target.
"$bin" train anomaly --layout deeppcb --data "$data/deeppcb" --out "$out/deeppcb-anomaly" \
  --name deeppcb-anomaly
# The same product with 512 allowed (`auto:512`, about four times 256's cost per part, past the
# 20 ms a default is held to): the run chooses for itself whether the size pays (about 17 min).
"$bin" train anomaly --layout deeppcb --data "$data/deeppcb" --out "$out/deeppcb-anomaly-512" \
  --name deeppcb-anomaly-512 --input-size auto:512
"$bin" train anomaly --layout kolektorsdd --data "$data/kolektorsdd" \
  --out "$out/kolektorsdd-anomaly" --name kolektorsdd-anomaly

python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
def metrics(name):
    return json.load(open(f"{out}/{name}/card.json"))["metrics"]
def crack_f1(which, model="crackforest"):
    if not os.path.exists(f"{out}/{model}/card.json"):
        return None
    return metrics(model)["thin_defect"][which]["f1"]
checks = [
    ("neu-det 6-class accuracy", metrics("neu-det")["class_accuracy"], 0.97),
    ("magnetic-tile defect-vs-good accuracy", metrics("magnetic-tile")["defect_vs_good_accuracy"], 0.97),
    ("magnetic-tile defect-class accuracy", metrics("magnetic-tile")["defect_class_accuracy"], 0.90),
    ("kolektorsdd image AP, 3-fold CV by item", json.load(open(f"{out}/kolektorsdd-cv/cross-validation.json"))["pooled"]["average_precision"], 0.95),
    # Trained on tags alone (no target in the issue: "image-level labels suffice"); the masks
    # judge its heat maps afterwards, reported without a target.
    ("magnetic-tile tags-only defect-vs-good acc.", metrics("magnetic-tile-tags")["defect_vs_good_accuracy"], 0.95),
    ("magnetic-tile tags-only pixel AUROC", json.load(open(f"{out}/magnetic-tile-tags/held-out-with-masks.json"))["pixel_auroc"], None),
    # Issue 21 asks 0.95 (issue 3 asked 0.92).
    ("magnetic-tile anomaly image AUROC", metrics("magnetic-tile-anomaly")["image_auroc"], 0.95),
    ("deeppcb anomaly image AUROC (new product)", metrics("deeppcb-anomaly")["image_auroc"], 0.95),
    ("deeppcb anomaly image AUROC, auto:512", metrics("deeppcb-anomaly-512")["image_auroc"], None),
    ("kolektorsdd anomaly image AUROC (7 goods)", metrics("kolektorsdd-anomaly")["image_auroc"], None),
    # At the model's own threshold (the cut chosen on validation); the best single threshold over the
    # held-out images (the crack literature's ODS) is reported beside it, not judged.
    # Judged where the dataset is there (reported n/a otherwise).
    ("crackforest crack F1 (2 px)", crack_f1("at_model_threshold"),
     None if crack_f1("at_model_threshold") is None else 0.85),
    ("crackforest crack F1, best threshold", crack_f1("best_over_images"), None),
    # The issue's mAP@0.5: each of the six defect types' average precision, a box counting only
    # for a true box of the type it names, averaged; at the authors' own IoU 0.33 beside it; and
    # the class-agnostic AP (a box counting for a true box of any type), reported.
    # Judged on the golden-template model, which compares each board with its template as the
    # authors' own detector does; the patch model's boxes (no template) are reported beside it.
    ("deeppcb box mAP@0.5 (six types, template)", metrics("deeppcb-template")["boxes"]["mean_average_precision"][0]["value"], 0.90),
    ("deeppcb box mAP@0.33 (template)", metrics("deeppcb-template")["boxes"]["mean_average_precision"][1]["value"], None),
    ("deeppcb box AP@0.5, class-agnostic (template)", metrics("deeppcb-template")["boxes"]["at_iou"][0]["average_precision"], None),
    ("deeppcb box mAP@0.5 (patch model, no template)", metrics("deeppcb-boxes")["boxes"]["mean_average_precision"][0]["value"], None),
    ("deeppcb box mAP@0.33 (patch model)", metrics("deeppcb-boxes")["boxes"]["mean_average_precision"][1]["value"], None),
    ("deeppcb box AP@0.5, class-agnostic (patch)", metrics("deeppcb-boxes")["boxes"]["at_iou"][0]["average_precision"], None),
]
unmet = 0
for name, value, target in checks:
    shown = "n/a" if value is None else f"{value:.4f}"
    if target is None:
        print(f"{name:<42} {shown:>6}  reported")
        continue
    met = value is not None and value >= target
    unmet += not met
    print(f"{name:<42} {shown:>6}  target {target:.2f}  {'met' if met else 'NOT MET'}")
# The input size each supervised run asked to choose took, with its trials on the validation
# images.
for name in ["crackforest", "deeppcb-boxes"]:
    if not os.path.exists(f"{out}/{name}/card.json"):
        continue
    choice = json.load(open(f"{out}/{name}/card.json")).get("input_size_choice")
    if choice is None:
        continue
    trials = ", ".join(f"{t['input_size']}: " + ("n/a" if t["value"] is None else f"{t['value']:.3f}")
                       for t in choice["trials"])
    print(f"{name + ' input size':<42} {choice['chosen']:>6}  ({trials}: {choice['figure']})")
# The input size each anomaly run chose, with its trials on painted defects.
for name in ["magnetic-tile-anomaly", "deeppcb-anomaly", "deeppcb-anomaly-512", "kolektorsdd-anomaly"]:
    choice = json.load(open(f"{out}/{name}/card.json")).get("input_size_choice") or {}
    trials = ", ".join(f"{t['input_size']}: {t['painted_auroc']:.3f}" for t in choice.get("trials", []))
    print(f"{name + ' input size':<42} {choice.get('chosen', 'given'):>6}  ({trials or choice.get('rule', '')})")
# The feature maps each anomaly run's patch features keep, with their trials on painted defects.
for name in ["magnetic-tile-anomaly", "deeppcb-anomaly", "deeppcb-anomaly-512", "kolektorsdd-anomaly"]:
    card = json.load(open(f"{out}/{name}/card.json"))
    choice = card.get("patch_stages_choice") or {}
    trials = ", ".join(f"{t['stages']}: {t['painted_auroc']:.3f}" for t in choice.get("trials", []))
    print(f"{name + ' feature maps':<42} {card.get('patch_stages', 'both'):>8}  ({trials or choice.get('rule', 'given')})")
# The memory bank each anomaly run chose, with how much each size tried raised good validation
# images' scores over a bank of every good patch.
for name in ["magnetic-tile-anomaly", "deeppcb-anomaly", "deeppcb-anomaly-512", "kolektorsdd-anomaly"]:
    choice = json.load(open(f"{out}/{name}/card.json")).get("bank_size_choice") or {}
    trials = ", ".join(f"{t['bank_size']}: {100 * t['score_rise']:+.1f} %" for t in choice.get("trials", []))
    print(f"{name + ' bank size':<42} {choice.get('chosen', 'given'):>6}  ({trials or choice.get('rule', '')})")
# Which of each anomaly model's summed scores finds the product's held-out defects, each alone.
for name in ["magnetic-tile-anomaly", "deeppcb-anomaly", "deeppcb-anomaly-512", "kolektorsdd-anomaly"]:
    alone = metrics(name).get("score_auroc") or {}
    print(f"{name + ' AUROC alone':<42} " + ", ".join(
        f"{label} " + ("n/a" if alone.get(key) is None else f"{alone[key]:.4f}")
        for key, label in [("patch", "patch"), ("image", "image"), ("head", "head"),
                           ("coarse_image", "coarse"), ("discriminator", "discriminator")]))
# The anomaly threshold's promise (issue 21): chosen by cross-conformal on the good training
# images (each scored by a model fitted without its fold), its false-reject rate on the held-out
# good images must not exceed the target by more than 2 points (the promise is an upper bound).
# Reported beside the card's expectation and 90 % interval.
card = json.load(open(f"{out}/magnetic-tile-anomaly/card.json"))
promise = card.get("threshold_guarantee")
held_out = card["metrics"]["at_threshold"]["false_reject_rate"]
if promise is None:
    print(f"{'magnetic-tile anomaly threshold promise':<42}   none  ({card['threshold_rule']})")
    unmet += 1
else:
    met = held_out is not None and held_out <= promise["target"] + 0.02
    unmet += not met
    low, high = promise["interval_90"]
    print(f"{'magnetic-tile anomaly held-out false rejects':<42} {held_out:.4f}  target "
          f"≤ {promise['target']:.2f} + 0.02 (promised {promise['expected_rate']:.4f}, 90 % "
          f"{low:.4f}-{high:.4f}, {promise['n']} good calibration images)  "
          f"{'met' if met else 'NOT MET'}")
sys.exit(1 if unmet else 0)
PY

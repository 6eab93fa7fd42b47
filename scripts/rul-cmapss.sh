#!/usr/bin/env bash
# Reproduces the C-MAPSS FD001 remaining-useful-life figure (issue 16): 20 engines of the
# official training file are held out and cut at random cycles the way the official test set
# is (5 cuts each, so 100 test units), the model is trained on the other 80 (16 of them kept
# inside training for validation and the interval), and the held-out units are evaluated
# once: RMSE against the RUL capped at 125, the PHM08 score and the 90 % interval's coverage.
#
#   bash scripts/rul-cmapss.sh [TRAIN_FD001.txt] [WORK_DIR]
#
# Defaults: ../shared/datasets/cmapss-fd001/train_FD001.txt and target/rul-cmapss. Training
# takes a few minutes on two cores.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
train_file=${1:-"$here/../shared/datasets/cmapss-fd001/train_FD001.txt"}
work=${2:-"$here/target/rul-cmapss"}
seed=${SEED:-1}

if [[ ! -f "$train_file" ]]; then
    echo "no C-MAPSS training file at $train_file" >&2
    exit 1
fi
cd "$here"
cargo build --locked --bin linesight
bin=${CARGO_TARGET_DIR:-$here/target}/debug/linesight

mkdir -p "$work"
"$bin" rul split --cmapss "$train_file" --holdout 20 --cuts-per-engine 5 --seed "$seed" \
    --out "$work/split"
start=$(date +%s)
"$bin" rul train --cmapss "$work/split/train_FD001.txt" --seed "$seed" --out "$work/model"
echo "training took $(( $(date +%s) - start )) s"
"$bin" rul eval --model "$work/model" --cmapss "$work/split/test_FD001.txt" \
    --rul "$work/split/RUL_FD001.txt" --json "$work/eval.json"

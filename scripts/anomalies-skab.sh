#!/usr/bin/env bash
# Reproduces the SKAB figures of the multivariate anomaly detector (src/analyse/maintenance):
#   1. the tuning grid, on the valve1 files only, its best 8 by F1 (the settings chosen from
#      it are the defaults of `anomaly::Settings`: explained variance 0.85, limit quantile
#      0.99, median of 30 samples, alarm level 1, persistence 5; a median of 60 scored 0.001
#      more on valve1, within noise, at 10 s more detection delay);
#   2. those defaults on every folder, with valve2 + other (not tuned on) reported together.
# SKAB's protocol: fitted on the first 400 rows of each file, scored on the rest; F1, FAR and
# MAR summed over files. "F1 all-anom." is the F1 of calling every scored row anomalous: the
# scored parts are about half anomalous, so that floor is about 0.70.
#
#   bash scripts/anomalies-skab.sh [SKAB_DIR] [JSON_OUT]
set -euo pipefail

skab=${1:-/work/shared/datasets/skab}
json=${2:-target/anomalies-skab.json}
cargo build --locked --bin linesight
linesight=${CARGO_TARGET_DIR:-target}/debug/linesight

echo "== tuning grid on valve1 (F1 on valve1 only)"
for variance in 0.85 0.95; do
    for window in 5 15 30 60; do
        for quantile in 0.99 0.999; do
            for level in 1 1.5 2 3; do
                line=$("$linesight" anomalies eval --skab "$skab" --only valve1 \
                    --explained-variance "$variance" --smoothing-window "$window" \
                    --limit-quantile "$quantile" --alarm-level "$level" | grep '^valve1')
                echo "variance $variance window $window quantile $quantile level $level | $line"
            done
        done
    done
done | awk -F'|' '{ split($2, f, " +"); print f[5], $0 }' | sort -n | tail -8

echo
echo "== defaults on every folder"
"$linesight" anomalies eval --skab "$skab" --combine valve2,other --json "$json"
echo "(per-file counts in $json)"

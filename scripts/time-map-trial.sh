#!/usr/bin/env bash
# How long a training run's choice of feature maps takes (src/models/anomaly/patch_stages.rs):
# starts `linesight train anomaly` on a dataset, stops it once the maps are chosen, and prints
# the wall time between the run's "input size chosen" and "feature maps chosen" log lines
# (the maps' trial alone), with each candidate's AUROC and its share of that time. Run it with
# nothing else on the machine; give two binaries to compare them in one run (each is run
# twice, alternately, so that a cold file cache does not favour the second).
# Usage: scripts/time-map-trial.sh LAYOUT DATA BACKBONE BINARY [BINARY...]
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: scripts/time-map-trial.sh LAYOUT DATA BACKBONE BINARY [BINARY...]" >&2
  exit 2
fi
layout=$1 data=$2 backbone=$3
shift 3
work=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2> /dev/null; rm -rf "$work"' EXIT
run=0
for round in 1 2; do
  for bin in "$@"; do
    run=$((run + 1))
    # A log of its own per run, there before the run starts: a look at it can never find an
    # earlier run's line.
    log="$work/log.$run"
    : > "$log"
    NO_COLOR=1 "$bin" train anomaly --layout "$layout" --data "$data" --backbone "$backbone" \
      --out "$work/model.$run" > "$log" 2>&1 &
    pid=$!
    while kill -0 "$pid" 2> /dev/null; do
      if grep -qs "feature maps chosen" "$log"; then
        kill "$pid" 2> /dev/null || true
        break
      fi
      sleep 0.5
    done
    wait "$pid" 2> /dev/null || true
    pid=""
    rm -rf "$work/model.$run"
    python3 - "$log" "$bin" "$round" << 'PY'
import re
import sys
from datetime import datetime

log, binary, round_ = sys.argv[1:]
text = re.sub(r"\x1b\[[0-9;]*m", "", open(log).read())
times = dict(
    (what, stamp)
    for stamp, what in re.findall(
        r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z.*?(input size chosen|feature maps chosen)", text
    )
)
if len(times) < 2:
    sys.exit(f"{binary}: the run ended before choosing its feature maps:\n{text[-2000:]}")
at = {what: datetime.fromisoformat(stamp[:26]) for what, stamp in times.items()}
wall = (at["feature maps chosen"] - at["input size chosen"]).total_seconds()
trials = re.findall(
    r"PatchStagesTrial \{ stages: (\w+), painted_auroc: ([0-9.]+), seconds: ([0-9.]+)", text
)
if not trials:
    print(f"{binary}: no PatchStagesTrial in its log (has the log line changed?)", file=sys.stderr)
each = ", ".join(f"{s} {float(a):.4f} ({float(t):.1f} s)" for s, a, t in trials)
print(f"round {round_}  {binary}: {wall:.1f} s  [{each}]")
PY
  done
done

#!/usr/bin/env bash
# Live checks against a running station binary on the simulated line:
#   1. the live, labelling, models, MES and what-if pages in headless Chromium (Playwright),
#   2. the HTTP API against its OpenAPI description (schemathesis),
#   3. kill -9: every record the API acknowledged is still there after a restart,
#   4. Ctrl-C (SIGINT) stops the station cleanly.
# Usage: scripts/test-live.sh PATH_TO_LINESIGHT_BINARY
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(realpath "$1")"
work="$(mktemp -d)"
station_pid=""
cleanup() {
  [ -n "$station_pid" ] && kill -9 "$station_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

passed=0
failed=0
check() { # check NAME COMMAND...
  local name="$1"; shift
  if "$@"; then echo "live: ok   $name"; passed=$((passed + 1));
  else echo "live: FAIL $name"; failed=$((failed + 1)); fi
}

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"
# The environment's admin token (kept from before roles) for the station; an operator's token
# for the page and reads, made the way an administrator would.
export LINESIGHT_ADMIN_TOKEN="live-test-$$"
mkdir -p "$work/data"
operator="$("$bin" token create --role operator --name live-operator --data-dir "$work/data" 2>/dev/null)"
# A quality engineer's, for the labelling page.
engineer="$("$bin" token create --role engineer --name live-engineer --data-dir "$work/data" 2>/dev/null)"
# The MES's token, for schemathesis.
mes="$("$bin" token create --role mes-client --name live-mes --data-dir "$work/data" 2>/dev/null)"
auth=(-H "Authorization: Bearer $operator")

# A model registry of its own, holding the shipped model: the models page trains into it, and
# the source tree's models/ stays as it is.
mkdir -p "$work/models"
cp -r models/defect-net-sim "$work/models/"

start_station() {
  "$bin" run --config config/simulated-line.toml --data-dir "$work/data" --bind "127.0.0.1:$port" \
    --model-registry "$work/models" \
    >>"$work/station.log" 2>&1 &
  station_pid=$!
  for _ in $(seq 1 100); do
    curl -fsS "$base/health" >/dev/null 2>&1 && return 0
    kill -0 "$station_pid" 2>/dev/null || break
    sleep 0.2
  done
  echo "station did not come up; its log:"; cat "$work/station.log"; return 1
}

records_json() { curl -fsS "${auth[@]}" "$base/api/v1/inspections?limit=500"; }
# Waits (up to 60 s) until the station has recorded parts with ids of at least $1.
wait_for_part() {
  for _ in $(seq 1 300); do
    records_json 2>/dev/null | python3 -c 'import json,sys; items=json.load(sys.stdin)["items"]; sys.exit(0 if items and items[0]["part_id"] >= int(sys.argv[1]) else 1)' "$1" && return 0
    sleep 0.2
  done
  echo "no part with id >= $1 was recorded within 60 s"; return 1
}
start_station
wait_for_part 5 # some parts through the gate

check "live page in Chromium" env LINESIGHT_TOKEN="$operator" node tests/ui/live.mjs "$base" "$work"
check "labelling page in Chromium" \
  env LINESIGHT_TOKEN="$engineer" LINESIGHT_OPERATOR_TOKEN="$operator" node tests/ui/label.mjs "$base" "$work"
check "models page in Chromium" \
  env LINESIGHT_TOKEN="$engineer" LINESIGHT_OPERATOR_TOKEN="$operator" node tests/ui/models.mjs "$base" "$work"
check "what-if page in Chromium" env LINESIGHT_TOKEN="$operator" node tests/ui/whatif.mjs "$base" "$work"
check "API conforms to its OpenAPI description (schemathesis)" \
  env LINESIGHT_MES_TOKEN="$mes" LINESIGHT_ADMIN_TOKEN="$LINESIGHT_ADMIN_TOKEN" bash tests/api/schemathesis.sh "$base"
# After schemathesis the line has run for minutes: the MES page has control charts to draw.
check "MES page in Chromium" env LINESIGHT_TOKEN="$operator" node tests/ui/mes.mjs "$base" "$work"
check "metrics in Prometheus text format" bash -c "curl -fsS -H 'Authorization: Bearer $operator' '$base/metrics' | grep -q '^linesight_frames_captured_total{station=\"sim-1\"}'"

records_json >"$work/before.json"
kill -9 "$station_pid"; wait "$station_pid" 2>/dev/null || true
start_station
wait_for_part 100001 # new parts (numbered past the reserved block) reach the gate and are recorded
records_json >"$work/after.json"
# Every record acknowledged before the kill is still there, unchanged (a reused part id would
# overwrite one), and the restarted station numbers its parts after them.
survived() {
  python3 - "$work/before.json" "$work/after.json" "$base" "$operator" <<'PY'
import json, sys, urllib.request
before = {r["part_id"]: r for r in json.load(open(sys.argv[1]))["items"]}
after = {r["part_id"]: r for r in json.load(open(sys.argv[2]))["items"]}
assert before, "no records before the kill"
# The same page as before the kill, read again: the 500 newest up to its newest part (the
# newest 500 after the restart may have pushed the oldest of them out of the page).
request = urllib.request.Request(
    f"{sys.argv[3]}/api/v1/inspections?limit=500&before={max(before) + 1}",
    headers={"Authorization": f"Bearer {sys.argv[4]}"},
)
after_old = {r["part_id"]: r for r in json.load(urllib.request.urlopen(request))["items"]}
lost = [i for i in before if after_old.get(i) != before[i]]
assert not lost, f"records lost or changed by kill -9: {lost}"
new = [i for i in after if i not in before]
assert new and min(new) > max(before), f"part ids not continued: before up to {max(before)}, new {sorted(new)[:5]}"
print(f"{len(before)} records survived; new parts from {min(new)}")
PY
}
check "acknowledged records survive kill -9; part ids continue" survived

# On a data folder without an admin, the demo line makes one and prints a sign-in link.
demo_admin_link() {
  local link token
  link="$(grep -o 'http://[^ ]*/login?token=lst_[0-9a-f_]*' "$work/station.log" | head -1)"
  [ -n "$link" ] || { echo "no sign-in link in the station's output"; return 1; }
  token="${link##*token=}"
  curl -fsS -o /dev/null -H "Authorization: Bearer $token" "$base/api/v1/tokens" || { echo "the demo admin token is not an admin's"; return 1; }
  curl -fsS -o /dev/null "$link" || { echo "the sign-in link does not sign in"; return 1; }
}
check "the demo line prints a working sign-in link for its first admin" demo_admin_link

sigint_stops() {
  kill -INT "$station_pid"
  local rc=0
  wait "$station_pid" || rc=$?
  station_pid=""
  [ "$rc" -eq 0 ] || { echo "exit status $rc; log:"; tail -20 "$work/station.log"; return 1; }
  grep -q "station stopped after" "$work/station.log"
}
check "Ctrl-C stops the station cleanly" sigint_stops

mkdir -p target/test-live && cp -f "$work/live.png" "$work/label.png" "$work/label-final.png" "$work/mes.png" "$work/whatif.png" "$work/models.png" \
  "$work/live-latency.json" "$work/label-frames.json" "$work/label-frames-5mpx.json" target/test-live/ 2>/dev/null || true
echo "live: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

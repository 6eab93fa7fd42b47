#!/usr/bin/env bash
# Fuzzes a running station's HTTP API against its OpenAPI description, so the document and the
# server cannot drift apart. Usage: tests/api/schemathesis.sh BASE_URL
#   LINESIGHT_MES_TOKEN    a mes-client token (required): the whole API as the MES sees it
#   LINESIGHT_ADMIN_TOKEN  an admin token (optional): the write endpoints past the role check
# Three runs, then a few curl checks of what schemathesis cannot reach:
#   (c) admin, only the model, token, audit, label and work-order write endpoints. First, so the
#       journal the next run pulls holds labels, model changes, work orders and audit entries;
#   (a) mes-client, every operation, every check (no 5xx, statuses, content types, headers and
#       bodies as documented; a 2xx must turn 401 when the credential is taken away);
#   (b) no valid credential: every operation but /health must answer 401.
# The schema is the file, not $BASE_URL/api/v1/openapi.json: that needs a credential, and the
# file is what is reviewed (the server serves the same file, compiled in).
set -uo pipefail

base="${1:?usage: tests/api/schemathesis.sh BASE_URL}"
base="${base%/}"
mes="${LINESIGHT_MES_TOKEN:?set LINESIGHT_MES_TOKEN to a mes-client token}"
admin="${LINESIGHT_ADMIN_TOKEN:-}"
cd "$(dirname "$0")/../.."
spec=src/serve/openapi.json
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Derandomized so a failure reproduces on the next run instead of vanishing; one worker and few
# examples per operation so the three runs take about a minute on two cores.
st=(.venv/bin/schemathesis run "$spec"
  --base-url "$base"
  --hypothesis-derandomize
  --hypothesis-suppress-health-check=all
  --workers 1
  --request-timeout 10000
  --no-color
  # GET /api/v1/events is a Server-Sent Events stream that never ends: schemathesis reads the
  # whole body, so it would only ever see its own request timeout. Its 401 and its media type
  # are checked with curl below, its events by the live page (tests/ui/live.mjs).
  --exclude-path /api/v1/events
  # The alarm stream likewise (checked by tests/integration/sensors.rs and the alarm tests).
  --exclude-path /api/v1/alarms/events)

failed=0
run() { # run NAME SCHEMATHESIS-ARGS...
  local name="$1"; shift
  echo "schemathesis: $name"
  if ! "${st[@]}" "$@"; then echo "schemathesis: FAIL $name"; failed=1; fi
}

# (c) With an admin token the write endpoints are exercised past the role check: unknown model
# versions, rollback with nothing to roll back to, stopping the shadow, defect classes replaced
# (the simulated model names no class, so the gate is unchanged), training jobs (one runs,
# the rest are refused while it does) and uploads that are not images, labels on real parts,
# work orders released, started and completed, tokens made, unknown tokens revoked.
# DELETE /api/v1/tokens/{id} stays in: it cannot revoke the tokens this test uses unless a
# generated id equals one of their random 8-hex-digit ids (about 1 in 2^31 per request), and
# the admin token itself is LINESIGHT_ADMIN_TOKEN, which lives in the environment, not in the
# token file.
if [ -n "$admin" ]; then
  ops=(promoteModel rollbackModel setShadowModel setDefectClasses startBacktest startTraining uploadTrainingImage uploadTrainingZip
    listTrainingUploads deleteTrainingUploads listTokens createToken revokeToken getAuditLog
    addLabel flagVerdict labellingQueue exportLabelsCoco importLabelsCoco exportLabels releaseWorkOrder startWorkOrder completeWorkOrder
    acknowledgeAlarm shelveAlarm unshelveAlarm suppressAlarm unsuppressAlarm
    removeAlarmFromService returnAlarmToService)
  run "(c) admin token, write endpoints" -H "Authorization: Bearer $admin" --checks all \
    --hypothesis-max-examples 25 "${ops[@]/#/--include-operation-id=}"
else
  echo "schemathesis: LINESIGHT_ADMIN_TOKEN not set; skipping the admin run"
fi

# (a) The MES's view: everything. Writes its role may not make (labels, models, tokens, audit)
# are 403, which the document lists for them.
run "(a) mes-client token, every operation" -H "Authorization: Bearer $mes" --checks all \
  --hypothesis-max-examples 50

# (b) No valid credential. Schemathesis generates a bearer token of its own (never a valid one);
# its ignored_auth check fails a 2xx, and needs_credential fails anything else but 401. (Its
# warnings that most answers are 401 are what this run wants.)
cat >"$tmp/needs_credential.py" <<'PY'
import re

import schemathesis

# Control characters (but HTAB) are not allowed in an HTTP field value (RFC 9110, 5.5).
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@schemathesis.hook
def map_headers(context, headers):
    """Schemathesis makes its bearer tokens of any Latin-1 character, control characters too;
    hyper refuses such a request with a bare 400 before the station sees it. Keep the fuzzed
    credential, without what HTTP forbids, so the station's own answer is what is checked."""
    if headers and "Authorization" in headers:
        headers["Authorization"] = CONTROL.sub("", headers["Authorization"])
    return headers


@schemathesis.check
def needs_credential(ctx, response, case):
    """A route that declares a security requirement answers 401 without a valid credential."""
    if case.operation.schema.get_security_requirements(case.operation) and response.status_code != 401:
        raise AssertionError(f"expected 401 without a valid credential, got {response.status_code}")
PY
PYTHONPATH="$tmp" SCHEMATHESIS_HOOKS=needs_credential \
  run "(b) no valid credential: 401 everywhere but /health" --checks all --hypothesis-max-examples 10

# What schemathesis cannot reach. Paths and methods come from the document, so a route added to
# it is covered here too.
curl_check() { # curl_check NAME EXPECTED ACTUAL
  if [ "$2" = "$3" ]; then echo "curl: ok   $1"; else echo "curl: FAIL $1: expected $2, got $3"; failed=1; fi
}
# No Authorization header at all (schemathesis always sends one): 401 with WWW-Authenticate,
# for every documented operation that has a security requirement; 200 for the others.
python3 - "$spec" >"$tmp/operations" <<'PY'
import json, re, sys
doc = json.load(open(sys.argv[1]))
default = doc.get("security", [])
for path, item in doc["paths"].items():
    for method, op in item.items():
        if method in ("get", "put", "post", "delete", "patch"):
            secured = bool(op.get("security", default))
            print(method.upper(), re.sub(r"\{[^}]+\}", "1", path), "secured" if secured else "open")
PY
while read -r method path kind; do
  args=(-sS -o /dev/null -D "$tmp/headers" -w '%{http_code}' --max-time 10 -X "$method")
  [ "$method" = GET ] || args+=(-H 'Content-Type: application/json' --data '{}')
  got="$(curl "${args[@]}" "$base$path")"
  if [ "$kind" = secured ]; then
    grep -qi '^www-authenticate: Bearer' "$tmp/headers" && got="$got+www-authenticate"
    curl_check "$method $path without a credential" "401+www-authenticate" "$got"
  else
    curl_check "$method $path without a credential" 200 "$got"
  fi
done <"$tmp/operations"
[ -s "$tmp/operations" ] || { echo "curl: FAIL no operations read from $spec"; failed=1; }
# The pull in each documented media type (schemathesis only ever asks for */*), and 406.
auth=(-H "Authorization: Bearer $mes")
for media in $(python3 -c 'import json,sys; print(*json.load(open(sys.argv[1]))["paths"]["/api/v1/records"]["get"]["responses"]["200"]["content"])' "$spec"); do
  got="$(curl -sS "${auth[@]}" -H "Accept: $media" -o /dev/null -w '%{http_code} %{content_type}' "$base/api/v1/records?from=1&limit=5")"
  curl_check "GET /api/v1/records as $media" "200 $media" "${got%%;*}"
done
got="$(curl -sS "${auth[@]}" -H 'Accept: image/png' -o /dev/null -w '%{http_code} %{content_type}' "$base/api/v1/records")"
curl_check "GET /api/v1/records as image/png" "406 application/json" "$got"
# The live stream's headers (curl gives up on the endless body after 2 s).
got="$(curl -sS -N "${auth[@]}" --max-time 2 -o /dev/null -w '%{http_code} %{content_type}' "$base/api/v1/events" 2>/dev/null)"
curl_check "GET /api/v1/events" "200 text/event-stream" "$got"

exit "$failed"

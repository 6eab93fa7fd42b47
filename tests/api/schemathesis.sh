#!/usr/bin/env bash
# Fuzzes a running station's HTTP API against the OpenAPI document it serves, so the
# document and the server cannot drift apart. Usage: tests/api/schemathesis.sh BASE_URL
set -euo pipefail

base="${1:?usage: tests/api/schemathesis.sh BASE_URL}"
base="${base%/}"
cd "$(dirname "$0")/../.."

# With the station's admin token, the model-change endpoints are exercised past the token check
# (unknown versions, rollback with nothing to roll back to, stopping the shadow).
auth=()
if [ -n "${LINESIGHT_ADMIN_TOKEN:-}" ]; then
  auth=(-H "Authorization: Bearer $LINESIGHT_ADMIN_TOKEN")
fi

# Derandomized so a failure reproduces on the next run instead of vanishing.
exec .venv/bin/schemathesis run "$base/api/v1/openapi.json" \
  "${auth[@]}" \
  --base-url "$base" \
  --checks all \
  --hypothesis-max-examples 60 \
  --hypothesis-derandomize \
  --hypothesis-suppress-health-check=all \
  --workers 1 \
  --request-timeout 10000 \
  --no-color

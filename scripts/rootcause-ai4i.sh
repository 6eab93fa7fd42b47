#!/usr/bin/env bash
# Root cause on AI4I 2020, one failure mode at a time, against the generating rules of its
# SOURCE.md: prints the thresholds found beside the rule's, with the relative error.
#
#   scripts/rootcause-ai4i.sh [CSV] [first|second|all]
#
# CSV defaults to ../shared/datasets/ai4i2020/ai4i2020_dev.csv. The part: settings were chosen
# on generated data (src/analyse/rootcause/tests.rs) and the first 3,750 rows; "first" is the
# even rows, "second" (default, what is reported) the odd rows. Uses the debug binary (built if missing); LINESIGHT=path overrides it.
set -euo pipefail
cd "$(dirname "$0")/.."
csv=${1:-../shared/datasets/ai4i2020/ai4i2020_dev.csv}
part=${2:-second}
bin=${LINESIGHT:-${CARGO_TARGET_DIR:-target}/debug/linesight}
[ -x "$bin" ] || cargo build --locked --bin linesight
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

python3 - "$csv" "$part" "$tmp/part.csv" <<'PY'
import sys
source, part, out = sys.argv[1:]
lines = open(source, encoding="utf-8-sig").read().splitlines()
header, rows = lines[0], [l for l in lines[1:] if l.strip()]
# Halves by parity, not by order: the file is ordered by UDI and heat dissipation failures
# cluster in time (air temperature drifts), so the second half by order holds no HDF.
chosen = {"first": rows[0::2], "second": rows[1::2], "all": rows}[part]
open(out, "w").write("\n".join([header] + chosen) + "\n")
print(f"{source}: {part} part, {len(chosen)} of {len(rows)} rows")
PY

modes=(TWF HDF PWF OSF)
for mode in "${modes[@]}"; do
    excludes=(--exclude UDI --exclude "Product ID" --exclude "Machine failure" --exclude RNF)
    for other in "${modes[@]}"; do
        [ "$other" = "$mode" ] || excludes+=(--exclude "$other")
    done
    echo
    "$bin" rootcause --csv "$tmp/part.csv" --target "$mode" "${excludes[@]}" \
        --json "$tmp/$mode.json" 2>/dev/null
done

echo
python3 - "$tmp" <<'PY'
import json, sys
tmp = sys.argv[1]

def load(mode):
    return json.load(open(f"{tmp}/{mode}.json"))["findings"]

rows = []
def row(mode, quantity, rule, found, sentence):
    error = None if found is None else (found - rule) / rule
    rows.append((mode, quantity, rule, found, error, sentence))

def regions(findings, match):
    for f in findings:
        c = f["condition"]
        terms = c["terms"] if c["kind"] == "conjunction" else [c] if c["kind"] == "region" else []
        for t in terms:
            if match(t["feature"]):
                yield f, t["region"]

# TWF: tool wear above ~200 min (the tool fails or is replaced between 200 and 240 min).
f_twf = load("TWF")
hit = next(((f, r) for f, r in regions(f_twf, lambda n: n == "Tool wear [min]") if r["kind"] == "above"), None)
row("TWF", "tool wear > [min]", 200, hit and hit[1]["threshold"], hit and hit[0]["sentence"])

# HDF: process - air temperature < 8.6 K and rotational speed < 1380 rpm, together.
f_hdf = load("HDF")
conj = next((f for f in f_hdf if f["kind"] == "interaction"), None)
dt = speed = None
if conj:
    for t in conj["condition"]["terms"]:
        r = t["region"]
        if t["feature"] == "Process temperature [K] − Air temperature [K]" and r["kind"] == "below":
            dt = r["threshold"]
        if t["feature"] == "Air temperature [K] − Process temperature [K]" and r["kind"] == "above":
            dt = -r["threshold"]
        if t["feature"] == "Rotational speed [rpm]" and r["kind"] == "below":
            speed = r["threshold"]
row("HDF", "process − air temperature < [K]", 8.6, dt, conj and conj["sentence"])
row("HDF", "rotational speed < [rpm] (same finding)", 1380, speed, conj and conj["sentence"])

# PWF: power = torque × speed (rad/s) outside [3500, 9000] W.
f_pwf = load("PWF")
band = next(((f, r) for f, r in regions(f_pwf, lambda n: n.startswith("power")) if r["kind"] == "outside"), None)
row("PWF", "power below [W]", 3500, band and band[1]["low"], band and band[0]["sentence"])
row("PWF", "power above [W] (same finding)", 9000, band and band[1]["high"], band and band[0]["sentence"])

# OSF: tool wear × torque above 11,000 / 12,000 / 13,000 minNm for L / M / H.
f_osf = load("OSF")
seg = next((f for f in f_osf if f["kind"] == "segmented"
            and "Tool wear" in f["feature"] and "Torque" in f["feature"]), None)
for level, rule in (("L", 11000), ("M", 12000), ("H", 13000)):
    found, quantity = None, f"tool wear × torque > [minNm], type {level}"
    if seg:
        fit = next((t for t in seg["condition"]["thresholds"] if t["level"] == level), None)
        if fit and fit["estimated"]:
            found = fit["threshold"]
            if fit["defective"] < 5:
                quantity += f" ({fit['defective']} failed)"
        elif fit:
            # No overstrained part of this type in these rows: nothing to check against.
            quantity += " (no failure here)"
    row("OSF", quantity, rule, found, seg and seg["sentence"])

print(f"{'mode':5} {'quantity':58} {'rule':>8} {'found':>10} {'error':>8}  within 10 %")
for mode, quantity, rule, found, error, _ in rows:
    shown = "—" if found is None else f"{found:.4g}"
    err = "—" if error is None else f"{error * 100:+.1f} %"
    ok = "yes" if error is not None and abs(error) <= 0.10 else "NO" if "no failure" not in quantity else "not estimable"
    print(f"{mode:5} {quantity:58} {rule:>8} {shown:>10} {err:>8}  {ok}")
print()
seen = set()
for mode, _, _, _, _, sentence in rows:
    if sentence and sentence not in seen:
        seen.add(sentence)
        print(f"{mode}: {sentence}")
PY

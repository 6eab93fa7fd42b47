#!/usr/bin/env python3
"""Independent check of Linesight's control charts (src/analyse/spc).

Reads the JSON the integration test `spc` writes (each case: the input data, the chart options,
the EWMA/CUSUM parameters, and the chart the Rust code computed), recomputes every chart here
from the textbook formulas with numpy (c4 with scipy.special.gamma, d2/d3 by numerical
integration), and compares: centre, σ, every point's statistic, limits and z, the secondary
chart, EWMA and CUSUM statistics, Laney's σ_z, capability, every run-rule hit and every grouped
violation. Tolerance: 1e-9 relative. Prints each mismatch and exits 1 if there is any.

Written from the definitions (Montgomery, Introduction to SQC; Laney 2002; Nelson 1984;
Western Electric 1956; mes-anchors §1.3), vectorised over sliding windows: not a transcription
of the Rust code.

    .venv/bin/python tests/spc/check_spc.py cases.json
"""

import functools
import json
import math
import sys

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import integrate, special, stats

RELATIVE = 1e-9
ABSOLUTE_FLOOR = 1e-12  # for values that are 0 on one side and 1e-17 on the other
MR_D2 = 1.128  # d2 for n = 2, the handbook value (also Laney's constant)
MR_D4 = 3.267  # D4 for n = 2
RULE_ORDER = ["we_1", "we_2", "we_3", "we_4"] + [f"nelson_{i}" for i in range(1, 9)] + [
    "ewma_limit", "cusum_upper", "cusum_lower"]

mismatches = []


def report(case, where, rust, python):
    mismatches.append(f"{case}: {where}: rust={rust!r} python={python!r}")


def same_number(a, b):
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= RELATIVE * max(abs(a), abs(b)) + ABSOLUTE_FLOOR


def compare(case, where, rust, python):
    if isinstance(python, (float, int, np.floating, np.integer)) and not isinstance(python, bool):
        python = float(python)
        if rust is None or not same_number(float(rust), python):
            report(case, where, rust, python)
    elif python is None:
        if rust is not None:
            report(case, where, rust, None)
    elif rust != python:
        report(case, where, rust, python)


# ---------------------------------------------------------------------------------------------
# Constants


@functools.lru_cache(maxsize=None)
def d2_d3_by_integration(n):
    """E[R]/σ and sd(R)/σ of n standard normals (Tippett), by quadrature."""
    cdf = stats.norm.cdf
    d2 = integrate.quad(lambda x: 1 - (1 - cdf(x)) ** n - cdf(x) ** n, -12, 12, limit=200)[0]
    second = 2 * integrate.dblquad(
        lambda y, x: 1 - cdf(y) ** n - (1 - cdf(x)) ** n + (cdf(y) - cdf(x)) ** n,
        -10, 10, lambda x: x, lambda x: 10, epsabs=1e-10)[0]
    return d2, math.sqrt(second - d2 * d2)


def c4_by_gamma(n):
    return math.sqrt(2.0 / (n - 1)) * special.gamma(n / 2) / special.gamma((n - 1) / 2)


def subgroup_constants(case, reported):
    """Checks the constants the chart reports and returns those to recompute with: the table
    values (d2, A2, D3, D4) after checking them against quadrature to the table's three
    decimals (the handbook rounds from rounded d3, so allow 1e-3), and c4, A3, B3, B4 computed
    here from the gamma function."""
    n = reported["n"]
    d2, d3 = d2_d3_by_integration(n)
    derived = {"d2": d2, "a2": 3 / (d2 * math.sqrt(n)),
               "d3": max(0.0, 1 - 3 * d3 / d2), "d4": 1 + 3 * d3 / d2}
    for name, value in derived.items():
        if abs(reported[name] - value) > 1e-3:
            report(case, f"constants.{name} (n={n}) vs quadrature", reported[name], value)
    c4 = c4_by_gamma(n)
    spread = math.sqrt(1 - c4 * c4) / c4
    ours = {"c4": c4, "a3": 3 / (c4 * math.sqrt(n)), "b3": max(0.0, 1 - 3 * spread),
            "b4": 1 + 3 * spread}
    for name, value in ours.items():
        compare(case, f"constants.{name} (n={n})", reported[name], value)
    return {**{k: reported[k] for k in derived}, **ours}


# ---------------------------------------------------------------------------------------------
# Run rules, on the z of the included points (positions in `where` are input indices)


def windows(z, m):
    if len(z) < m:
        return np.empty((0, m))
    return sliding_window_view(z, m)


def rule_firings(rule, z, where):
    """[(input index of the signalling point, involved input indices, direction, first index
    of the window)] for one rule."""
    z = np.asarray(z, dtype=float)
    where = np.asarray(where, dtype=int)
    out = []

    def k_of_m(k, m, limit):
        w = windows(z, m)
        for sign, name in ((1.0, "above"), (-1.0, "below")):
            beyond = sign * w > limit
            hits = (beyond.sum(axis=1) >= k) & beyond[:, -1]
            for start in np.flatnonzero(hits):
                cols = np.flatnonzero(beyond[start])
                out.append((where[start + m - 1], [int(where[start + c]) for c in cols],
                            name, int(where[start])))

    def whole(m, mask, direction):
        for start in np.flatnonzero(mask):
            idx = [int(i) for i in where[start:start + m]]
            out.append((idx[-1], idx, direction, idx[0]))

    if rule in ("we_1", "nelson_1"):
        for pos in np.flatnonzero(np.abs(z) > 3):
            out.append((int(where[pos]), [int(where[pos])], "above" if z[pos] > 0 else "below",
                        int(where[pos])))
    elif rule in ("we_2", "nelson_5"):
        k_of_m(2, 3, 2.0)
    elif rule in ("we_3", "nelson_6"):
        k_of_m(4, 5, 1.0)
    elif rule in ("we_4", "nelson_2"):
        m = 8 if rule == "we_4" else 9
        w = windows(z, m)
        whole(m, np.all(w > 0, axis=1), "above")
        whole(m, np.all(w < 0, axis=1), "below")
    elif rule == "nelson_3":
        d = np.diff(windows(z, 6), axis=1)
        whole(6, np.all(d > 0, axis=1), "increasing")
        whole(6, np.all(d < 0, axis=1), "decreasing")
    elif rule == "nelson_4":
        d = np.diff(windows(z, 14), axis=1)
        flips = np.all(d[:, 1:] * d[:, :-1] < 0, axis=1) & np.all(d != 0, axis=1)
        whole(14, flips, None)
    elif rule == "nelson_7":
        whole(15, np.all(np.abs(windows(z, 15)) < 1, axis=1), None)
    elif rule == "nelson_8":
        w = windows(z, 8)
        whole(8, np.all(np.abs(w) > 1, axis=1) & np.any(w > 0, axis=1) & np.any(w < 0, axis=1),
              None)
    else:
        raise ValueError(rule)
    return out


def group(rule, series, firings):
    """Violations: consecutive firings of one rule and direction whose windows overlap."""
    firings = sorted(firings, key=lambda f: f[0])
    groups = []
    for at, involved, direction, window_start in firings:
        last = groups[-1] if groups else None
        if last and last["direction"] == direction and window_start <= last["last"]:
            last["points"] |= set(involved)
            last["last"] = at
        else:
            groups.append({"rule": rule, "series": series, "direction": direction,
                           "points": set(involved), "last": at})
    return [(g["rule"], g["series"], tuple(sorted(g["points"])), g["direction"]) for g in groups]


def consecutive_signals(direction_of, included):
    """EWMA/CUSUM: each signalling included point, runs of them (no quiet included point in
    between) forming one violation."""
    firings = []
    previous = None
    for i in included:
        d = direction_of(i)
        if d is not None:
            firings.append((i, [i], d, previous if previous is not None else i))
        previous = i
    return firings


# ---------------------------------------------------------------------------------------------
# Charts. Each returns the expected chart as plain lists and the firings per series.


def baseline_mask(excluded, options):
    limits = options["limits"]
    end = len(excluded)
    if limits["source"] == "estimated" and limits.get("baseline") is not None:
        end = limits["baseline"]
    mask = ~excluded.copy()
    mask[end:] = False
    return mask


def shewhart(value, center, sigma, excluded, floor=None, ceiling=None):
    center = np.broadcast_to(np.asarray(center, dtype=float), value.shape)
    sigma = np.broadcast_to(np.asarray(sigma, dtype=float), value.shape)
    lcl = center - 3 * sigma
    ucl = center + 3 * sigma
    if floor is not None:
        lcl = np.maximum(lcl, floor)
    if ceiling is not None:
        ucl = np.minimum(ucl, ceiling)
    z = (value - center) / sigma
    return {"value": value, "center": center, "lcl": lcl, "ucl": ucl,
            "z": [None if e else float(v) for e, v in zip(excluded, z)]}


def attribute(kind, data, options):
    d = np.array([p["count"] for p in data], dtype=float)
    n = np.array([p["n"] for p in data], dtype=float)
    excluded = np.array([p["excluded"] for p in data])
    ratio = d / n
    proportion = kind in ("p", "laney_p")
    laney = kind.startswith("laney")
    limits = options["limits"]
    details = {}
    if limits["source"] == "estimated":
        base = baseline_mask(excluded, options)
        center = d[base].sum() / n[base].sum()
        sd = np.sqrt(center * (1 - center) / n) if proportion else np.sqrt(center / n)
        if laney:
            zb = (ratio[base] - center) / sd[base]
            mr = np.mean(np.abs(np.diff(zb)))
            sigma_z = mr / MR_D2
            details = {"moving_range_z": mr}
        else:
            sigma_z = 1.0
            details = {"moving_range_z": None}
    else:
        center, sigma_z = limits["center"], limits["sigma"]
        sd = np.sqrt(center * (1 - center) / n) if proportion else np.sqrt(center / n)
        details = {"moving_range_z": None}
    details["sigma_z"] = sigma_z
    primary = shewhart(ratio, center, sd * sigma_z, excluded, 0.0, 1.0 if proportion else None)
    primary["n"] = [int(v) for v in n]
    return center, sigma_z, primary, None, details


def individuals_estimate(x, excluded, options):
    limits = options["limits"]
    if limits["source"] == "estimated":
        base = x[baseline_mask(excluded, options)]
        mr = np.mean(np.abs(np.diff(base)))
        return base.mean(), mr / MR_D2, mr
    return limits["center"], limits["sigma"], limits["sigma"] * MR_D2


def capability(values, sigma_within, spec):
    if spec is None:
        return None
    lsl, usl = spec.get("lower"), spec.get("upper")
    mean = float(np.mean(values))
    overall = float(np.std(values, ddof=1))
    out = {"lower": lsl, "upper": usl, "mean": mean, "sigma_within": sigma_within,
           "sigma_overall": overall, "values": len(values)}
    for prefix, s in (("c", sigma_within), ("p", overall)):
        both = (usl - lsl) / (6 * s) if lsl is not None and usl is not None else None
        low = (mean - lsl) / (3 * s) if lsl is not None else None
        high = (usl - mean) / (3 * s) if usl is not None else None
        out[f"{prefix}p"] = both
        out[f"{prefix}pl"] = low
        out[f"{prefix}pu"] = high
        out[f"{prefix}pk"] = min(v for v in (low, high) if v is not None)
    return out


def individuals(data, options):
    x = np.array([p["value"] for p in data])
    excluded = np.array([p["excluded"] for p in data])
    mu, sigma, mr = individuals_estimate(x, excluded, options)
    primary = shewhart(x, mu, sigma, excluded)
    included = np.flatnonzero(~excluded)
    mrs = np.abs(np.diff(x[included]))
    secondary = {"kind": "moving_range", "center": mr, "index": [int(i) for i in included[1:]],
                 "value": mrs, "lcl": np.zeros_like(mrs), "ucl": np.full_like(mrs, MR_D4 * mr)}
    xin = x[included]
    cap = capability(xin, np.mean(np.abs(np.diff(xin))) / MR_D2, options.get("spec"))
    return mu, sigma, primary, secondary, {"moving_range": mr}, cap


def xbar(kind, data, options, reported_constants, case):
    values = np.array([g["values"] for g in data], dtype=float)
    excluded = np.array([g["excluded"] for g in data])
    k = subgroup_constants(case, reported_constants)
    size = values.shape[1]
    means = values.mean(axis=1)
    use_range = kind == "xbar_r"
    spread = np.ptp(values, axis=1) if use_range else values.std(axis=1, ddof=1)
    unbias, low, high = (k["d2"], k["d3"], k["d4"]) if use_range else (k["c4"], k["b3"], k["b4"])
    limits = options["limits"]
    if limits["source"] == "estimated":
        base = baseline_mask(excluded, options)
        center = means[base].mean()
        bar = spread[base].mean()
        sigma = bar / unbias
        width = (k["a2"] if use_range else k["a3"]) * bar
    else:
        center, sigma = limits["center"], limits["sigma"]
        bar = unbias * sigma
        width = 3 * sigma / math.sqrt(size)
    primary = shewhart(means, center, width / 3, excluded)
    primary["n"] = [size] * len(means)
    secondary = {"kind": "range" if use_range else "std_dev", "center": bar,
                 "index": list(range(len(means))), "value": spread,
                 "lcl": np.full_like(spread, low * bar), "ucl": np.full_like(spread, high * bar)}
    within = spread[~excluded].mean() / unbias
    cap = capability(values[~excluded].ravel(), within, options.get("spec"))
    return center, sigma, primary, secondary, {"mean_dispersion": bar}, cap


def ewma(data, options, parameters):
    x = np.array([p["value"] for p in data])
    excluded = np.array([p["excluded"] for p in data])
    mu, sigma, _ = individuals_estimate(x, excluded, options)
    lam, width = parameters["lambda"], parameters["l"]
    z, t = mu, 0
    stat, lcl, ucl = [], [], []
    for value, skip in zip(x, excluded):
        if not skip:
            t += 1
            z = lam * value + (1 - lam) * z
        half = width * sigma * math.sqrt(lam / (2 - lam) * (1 - (1 - lam) ** (2 * t)))
        stat.append(z)
        lcl.append(mu - half)
        ucl.append(mu + half)
    primary = {"value": np.array(stat), "center": np.full(len(x), mu), "lcl": np.array(lcl),
               "ucl": np.array(ucl), "z": [None] * len(x)}
    xin = x[~excluded]
    cap = capability(xin, np.mean(np.abs(np.diff(xin))) / MR_D2, options.get("spec"))
    return mu, sigma, primary, None, {"lambda": lam, "l": width}, cap


def cusum(data, options, parameters):
    x = np.array([p["value"] for p in data])
    excluded = np.array([p["excluded"] for p in data])
    mu, sigma, _ = individuals_estimate(x, excluded, options)
    big_k, big_h = parameters["k"] * sigma, parameters["h"] * sigma
    start = big_h / 2 if parameters["head_start"] else 0.0
    hi, lo = start, start
    highs, lows = [], []
    for value, skip in zip(x, excluded):
        if not skip:
            hi = max(0.0, hi + (value - mu) - big_k)
            lo = max(0.0, lo - (value - mu) - big_k)
        highs.append(hi)
        lows.append(lo)
    count = len(x)
    primary = {"value": np.array(highs), "center": np.zeros(count), "lcl": np.zeros(count),
               "ucl": np.full(count, big_h), "z": [None] * count}
    secondary = {"kind": "cusum_lower", "center": 0.0, "index": list(range(count)),
                 "value": np.array(lows), "lcl": np.zeros(count), "ucl": np.full(count, big_h)}
    details = {"k": parameters["k"], "h": parameters["h"], "reference": big_k,
               "decision_interval": big_h, "head_start": start}
    xin = x[~excluded]
    cap = capability(xin, np.mean(np.abs(np.diff(xin))) / MR_D2, options.get("spec"))
    return mu, sigma, primary, secondary, details, cap


# ---------------------------------------------------------------------------------------------


def check_case(case):
    name, options, out = case["name"], case["options"], case["output"]
    kind = out["kind"]
    if kind in ("p", "laney_p", "u", "laney_u"):
        data = case["input"]["counts"]
        center, sigma, primary, secondary, details = attribute(kind, data, options)
        cap = None
    elif kind == "individuals":
        data = case["input"]["observations"]
        center, sigma, primary, secondary, details, cap = individuals(data, options)
    elif kind in ("xbar_r", "xbar_s"):
        data = case["input"]["subgroups"]
        center, sigma, primary, secondary, details, cap = xbar(
            kind, data, options, out["details"]["subgroups"]["constants"], name)
    elif kind == "ewma":
        data = case["input"]["observations"]
        center, sigma, primary, secondary, details, cap = ewma(data, options, case["parameters"])
    elif kind == "cusum":
        data = case["input"]["observations"]
        center, sigma, primary, secondary, details, cap = cusum(data, options, case["parameters"])
    else:
        report(name, "kind", kind, "a known chart kind")
        return {}

    excluded = [bool(p["excluded"]) for p in data]
    included = [i for i, e in enumerate(excluded) if not e]
    compare(name, "center", out["center"], center)
    compare(name, "sigma", out["sigma"], sigma)
    (detail_kind, rust_details), = out["details"].items()
    for key, value in details.items():
        compare(name, f"details.{detail_kind}.{key}", rust_details.get(key), value)
    if cap is None:
        compare(name, "capability", out["capability"], None)
    else:
        for key, value in cap.items():
            compare(name, f"capability.{key}", (out["capability"] or {}).get(key), value)

    # Rule hits, per series.
    rules = options["rules"]
    firings = {"primary": [], "secondary": []}
    if kind in ("ewma", "cusum"):
        if kind == "ewma":
            def ewma_side(i):
                v = primary["value"][i]
                return "above" if v > primary["ucl"][i] else "below" if v < primary["lcl"][i] else None
            firings["primary"] = [("ewma_limit", f) for f in
                                  consecutive_signals(ewma_side, included)]
        else:
            def over(values):
                return lambda i: "above" if values[i] > primary["ucl"][i] else None
            firings["primary"] = [("cusum_upper", f) for f in consecutive_signals(
                over(primary["value"]), included)]
            under = over(secondary["value"])
            firings["secondary"] = [("cusum_lower", (f[0], f[1], "below", f[3])) for f in
                                    consecutive_signals(under, included)]
        expected_rules = ["ewma_limit"] if kind == "ewma" else ["cusum_upper", "cusum_lower"]
        compare(name, "rules", out["rules"], expected_rules)
    else:
        compare(name, "rules", out["rules"], sorted(rules, key=RULE_ORDER.index))
        z = [primary["z"][i] for i in included]
        for rule in rules:
            firings["primary"] += [(rule, f) for f in rule_firings(rule, z, included)]
        if secondary is not None:
            for rule in ("we_1", "nelson_1"):
                if rule not in rules:
                    continue
                for pos, index in enumerate(secondary["index"]):
                    if excluded[index]:
                        continue
                    v = secondary["value"][pos]
                    side = ("above" if v > secondary["ucl"][pos] else
                            "below" if v < secondary["lcl"][pos] else None)
                    if side:
                        firings["secondary"].append((rule, (index, [index], side, index)))

    # Points, primary then secondary.
    series = [("primary", out["points"], primary, list(range(len(data))))]
    if secondary is not None:
        rust_secondary = out["secondary"] or {"kind": None, "center": None, "points": []}
        compare(name, "secondary.kind", rust_secondary["kind"], secondary["kind"])
        compare(name, "secondary.center", rust_secondary["center"], secondary["center"])
        series.append(("secondary", rust_secondary["points"], secondary, secondary["index"]))
    else:
        compare(name, "secondary", out["secondary"], None)
    for label, rust_points, ours, indices in series:
        compare(name, f"{label}: point indices", [p["index"] for p in rust_points], indices)
        hits = {}
        for rule, (at, *_rest) in firings[label]:
            hits.setdefault(at, set()).add(rule)
        for pos, (index, point) in enumerate(zip(indices, rust_points)):
            where = f"{label}[{index}]"
            for key in ("value", "center", "lcl", "ucl"):
                expected_values = np.broadcast_to(ours[key], (len(indices),))
                compare(name, f"{where}.{key}", point[key], expected_values[pos])
            if label == "primary":
                compare(name, f"{where}.z", point["z"], ours["z"][pos])
                if "n" in ours:
                    compare(name, f"{where}.n", point["n"], ours["n"][pos])
                compare(name, f"{where}.at", point["at"], data[index].get("at"))
            compare(name, f"{where}.excluded", point["excluded"], excluded[index])
            expected = sorted(hits.get(index, set()), key=RULE_ORDER.index)
            compare(name, f"{where}.rules", point["rules"], expected)

    # Violations, as sets of (rule, series, points, direction).
    expected = set()
    for label, found in firings.items():
        by_rule = {}
        for rule, firing in found:
            by_rule.setdefault(rule, []).append(firing)
        for rule, group_firings in by_rule.items():
            expected |= set(group(rule, label, group_firings))
    actual = {(v["rule"], v["series"], tuple(v["points"]), v["direction"])
              for v in out["violations"]}
    for missing in sorted(expected - actual, key=str):
        report(name, "violation missing", None, missing)
    for extra in sorted(actual - expected, key=str):
        report(name, "violation not expected", extra, None)
    for v in out["violations"]:
        if f"point {v['points'][0]}" not in v["message"] and f"points {v['points'][0]}–" not in v["message"]:
            report(name, "violation message names its points", v["message"], v["points"][0])

    counts = {}
    for label in firings:
        for rule, _ in firings[label]:
            counts[rule] = counts.get(rule, 0) + 1
    return counts


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: check_spc.py CASES.json")
    with open(sys.argv[1], encoding="utf-8") as file:
        document = json.load(file)
    total = {}
    for case in document["cases"]:
        counts = check_case(case)
        summary = ", ".join(f"{r} {c}" for r, c in sorted(counts.items(), key=lambda i: RULE_ORDER.index(i[0])))
        print(f"{case['name']}: {len(case['output']['points'])} points; hits: {summary or 'none'}")
        for rule, count in counts.items():
            total[rule] = total.get(rule, 0) + count
    if mismatches:
        print(f"\n{len(mismatches)} mismatches between Rust and numpy:")
        for line in mismatches[:200]:
            print("  " + line)
        if len(mismatches) > 200:
            print(f"  … and {len(mismatches) - 200} more")
        sys.exit(1)
    print(f"\nall agree: {len(document['cases'])} charts; rule hits "
          + ", ".join(f"{r} {total.get(r, 0)}" for r in RULE_ORDER))


if __name__ == "__main__":
    main()

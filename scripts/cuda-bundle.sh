#!/usr/bin/env bash
# Packs the GPU tests and benchmarks (`make test-cuda`, `make bench-cuda`) to run on a GPU box
# that has the NVIDIA driver and the CUDA 13 runtime libraries but no Rust toolchain or
# OpenCV: the two binaries of a `cuda` build, stripped, with the shared libraries they need
# beyond the C and C++ runtimes and CUDA's own, in one archive, and the script that runs them.
#
#   bash scripts/cuda-bundle.sh [OUT]     # default var/cuda-bundle: bundle.tar.xz and run.sh
#
# On the GPU box, from a copy of this repository holding models/efficientnet-lite0 (`make
# weights`) and OUT:  bash OUT/run.sh   (RUN_OUT=folder keeps the logs there; BENCH_FILTER
# chooses the benches, default the GPU ones and the CPU ones they are compared with).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-var/cuda-bundle}")
if [[ -z ${CUDA_HOME:-} ]]; then
    # shellcheck disable=SC1091 # written by scripts/cuda-toolkit.sh (make cuda-toolkit)
    source "${CUDA_PREFIX:-/opt/linesight-cuda}/env.sh"
fi

# The executable of target $1 that cargo built, from its JSON messages.
executable() {
    python3 -c '
import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if (message.get("reason") == "compiler-artifact" and message.get("executable")
            and message["target"]["name"] == sys.argv[1]):
        print(message["executable"])' "$1"
}
bench=$(cargo bench --locked --features cuda --bench inspect --no-run --message-format=json | executable inspect)
tests=$(cargo test --release --locked --features cuda --test cuda --no-run --message-format=json | executable cuda)

staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
mkdir -p "$staging/lib"
strip -o "$staging/inspect" "$bench"
strip -o "$staging/cuda" "$tests"
# The C and C++ runtimes are on every Linux box, and CUDA's libraries come with the driver and
# the toolkit there: everything else the binaries link goes along.
system='^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s|libz|libcuda|libcudart|libcublas|libcublasLt|libcurand|libnvrtc)\.so'
for binary in "$staging/inspect" "$staging/cuda"; do
    ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }'
done | sort -u | while read -r name path; do
    [[ $name =~ $system ]] || cp -L "$path" "$staging/lib/$name"
done

mkdir -p "$out"
tar -C "$staging" -cf - inspect cuda lib | xz -T0 -6 >"$out/bundle.tar.xz"
cat >"$out/run.sh" <<EOF
#!/usr/bin/env bash
# Written by scripts/cuda-bundle.sh: runs the GPU tests, then the GPU benchmarks, from the
# root of a copy of the repository holding models/efficientnet-lite0.
set -uo pipefail
logs=\${RUN_OUT:-\$PWD/var/cuda-run}
mkdir -p "\$logs"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
# The binaries find the repository's files where they were built.
built=$PWD
if ! [[ \$PWD -ef \$built ]]; then
    if [[ -e \$built ]]; then
        echo "run.sh: the binaries look for the repository at \$built, which is another folder" >&2
        exit 1
    fi
    mkdir -p "\$(dirname "\$built")" && ln -s "\$PWD" "\$built" || exit 1
fi
unpacked=\$(mktemp -d)
tar -C "\$unpacked" -xJf "$(realpath --relative-to="$PWD" "$out")/bundle.tar.xz" || exit 1
# CUDA 13's runtime libraries wherever the box keeps them (a toolkit, or Python's wheels).
cuda_libs=\$(find /usr /opt -name 'libcublas.so.13' -o -name 'libnvrtc.so.13' -o -name 'libcurand.so.10' -o -name 'libcudart.so.13' 2>/dev/null | xargs -r -n1 dirname | sort -u | paste -sd:)
export LD_LIBRARY_PATH=\$unpacked/lib:\$cuda_libs:/usr/local/nvidia/lib64\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}
if ldd "\$unpacked/cuda" | grep 'not found'; then
    echo "run.sh: libraries missing (above)" >&2
    exit 1
fi
cd "\$built"
"\$unpacked/cuda" --test-threads=2 2>&1 | tee "\$logs/cuda-tests.log"
tests=\${PIPESTATUS[0]}
"\$unpacked/inspect" --bench "\${BENCH_FILTER:-cuda/|anomaly/(score_256_input128|batch)}" \\
    --warm-up-time 1 --measurement-time 3 2>&1 | tee "\$logs/bench.log"
exit \$tests
EOF
chmod +x "$out/run.sh"
du -h "$out/bundle.tar.xz"
echo "carry $out (and models/efficientnet-lite0) to the GPU box; run: bash $(realpath --relative-to="$PWD" "$out")/run.sh"

#!/usr/bin/env bash
# Run on the lent GPU machine, from the repository root, with gpu-carry/ carried in
# (built by scripts/gpu-carry.sh): every test executable on the real GPU with
# LIT_DEVICE=cuda LIT_REQUIRE_GPU=1, then (with --bench) the bench executables. Logs go to $OUT.
#
#   scripts/gpu-run.sh [--bench] [test-name-filter passed to every test executable]
set -uo pipefail
cd "$(dirname "$0")/.."

run_benches=0
[[ ${1:-} == --bench ]] && { run_benches=1; shift; }
out=${OUT:-gpu-out}
mkdir -p "$out/logs"
carry=$PWD/gpu-carry
[[ -f $carry/executables.tar.xz ]] || { echo "gpu-run: no $carry/executables.tar.xz (run scripts/gpu-carry.sh and carry it)" >&2; exit 2; }
exes=$(mktemp -d)
tar -C "$exes" -xJf "$carry/executables.tar.xz"

{
    cat "$carry/MANIFEST.txt"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    ls -d /usr/local/cuda*/ 2>/dev/null
} 2>&1 | tee "$out/machine.txt"

# NVRTC: the machine's CUDA toolkit. The engine also searches these folders itself; putting the
# folder on the loader path as well lets libnvrtc find its builtins library by name.
if [[ -z ${LIT_NVRTC_LIB:-} ]]; then
    for dir in /usr/local/cuda/lib64 $(ls -d /usr/local/cuda-*/lib64 2>/dev/null | sort -rV); do
        if compgen -G "$dir/libnvrtc.so*" >/dev/null; then
            export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
            break
        fi
    done
fi
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}; ldconfig: $(ldconfig -p | grep -c nvrtc) nvrtc entries" | tee -a "$out/machine.txt"

export LIT_DEVICE=cuda LIT_REQUIRE_GPU=1 LIT_REQUIRE_NVRTC=1
export LIT_CACHE_DIR=$exes/kernel-cache
export LIT_GOLDEN_DIR=${LIT_GOLDEN_DIR:-$carry/golden}
# What `cargo test` would set for tests that find files from the package root at run time.
export CARGO_MANIFEST_DIR=$PWD
export RUST_BACKTRACE=1

passed=0 failed=0
failed_names=()
for exe in "$exes"/tests/*; do
    name=$(basename "$exe")
    echo "=== tests/$name"
    start=$SECONDS
    if "$exe" "$@" >"$out/logs/$name.log" 2>&1; then
        passed=$((passed + 1)); verdict=ok
    else
        failed=$((failed + 1)); verdict=FAILED; failed_names+=("$name")
    fi
    grep -E "^test result:|passed, .* failed|^NVRTC compile|running on" "$out/logs/$name.log" || true
    echo "--- $name: $verdict in $((SECONDS - start)) s"
done

if ((run_benches)); then
    for exe in "$exes"/benches/*; do
        [[ -x $exe ]] || continue
        name=$(basename "$exe")
        echo "=== benches/$name"
        "$exe" --bench 2>&1 | tee "$out/logs/bench-$name.log"
    done
fi

echo "gpu-run: $passed passed, $failed failed (test executables)${failed_names:+: ${failed_names[*]}}"
((failed == 0))

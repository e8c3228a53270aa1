#!/usr/bin/env bash
# Run on the lent GPU machine, from the repository root, with gpu-carry/ carried in
# (built by scripts/gpu-carry.sh): every test executable on the real GPU with
# LIT_DEVICE=cuda LIT_REQUIRE_GPU=1 (golden cases on cuda alone: cpu and emu run in CI), then
# (with --bench) the quickstart training run on cuda and `lit-engine bench` against PyTorch on the
# same card (eager and torch.compile). Logs go to $OUT.
#
# With --experiment (needs gpu-carry.sh --with-cifar): the full-data CIFAR-10 ResNet-8
# LIT / KD / scratch comparison of configs/gpu/ (teacher first), one seed.
# With --epoch (needs --with-cifar too): one CIFAR-10 epoch of ResNet-20 in bf16
# (configs/gpu/cifar10_resnet20_epoch.yml), with step graphs and without.
# LIT_GPU_TESTS="cli logs ..." runs only those test executables; LIT_GPU_TESTS=none runs none.
#
#   scripts/gpu-run.sh [--bench] [--experiment] [--epoch] [test-name-filter passed to every test executable]
set -uo pipefail
cd "$(dirname "$0")/.."

run_benches=0 run_experiment=0 run_epoch=0
while [[ ${1:-} == --* ]]; do
    case $1 in
        --bench) run_benches=1 ;;
        --experiment) run_experiment=1 ;;
        --epoch) run_epoch=1 ;;
        *) echo "gpu-run: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
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
# Tests locate fixtures through env!("CARGO_MANIFEST_DIR"), the build machine's path: point it here.
built_in=$(sed -n 's/^manifest dir //p' "$carry/MANIFEST.txt")
if [[ -n $built_in && $built_in != "$PWD" && ! -e $built_in ]]; then
    mkdir -p "$(dirname "$built_in")" && ln -s "$PWD" "$built_in"
fi
# ... and the CLI through env!("CARGO_BIN_EXE_lit-engine"), the path cargo built it at.
cli_path=$(sed -n 's/^cli built at //p' "$carry/MANIFEST.txt")
if [[ -n $cli_path && ! -e $cli_path ]]; then
    mkdir -p "$(dirname "$cli_path")" && cp "$exes/bin/lit-engine" "$cli_path"
fi
export LIT_GOLDEN_DEVICES=${LIT_GOLDEN_DEVICES:-cuda}
# CPU-only executables that need data which does not travel (../shared/data, 65 MiB).
skip=" data "

passed=0 failed=0
failed_names=()
for exe in "$exes"/tests/*; do
    name=$(basename "$exe")
    if [[ -n ${LIT_GPU_TESTS:-} && " $LIT_GPU_TESTS " != *" $name "* ]]; then continue; fi
    [[ $skip == *" $name "* ]] && { echo "=== tests/$name: skipped (CPU-only, needs ../shared/data)"; continue; }
    echo "=== tests/$name"
    start=$SECONDS
    if timeout 150 "$exe" "$@" >"$out/logs/$name.log" 2>&1; then
        passed=$((passed + 1)); verdict=ok
    else
        failed=$((failed + 1)); verdict=FAILED; failed_names+=("$name")
    fi
    grep -E "^test result:|passed, .* failed|^NVRTC compile|running on" "$out/logs/$name.log" || true
    echo "--- $name: $verdict in $((SECONDS - start)) s"
done

if ((run_benches)); then
    lit=$exes/bin/lit-engine
    echo "=== quickstart on cuda"
    start=$SECONDS
    (cd "$(mktemp -d)" && cp -r "$OLDPWD/configs" "$OLDPWD/data" . &&
        timeout 120 "$lit" train configs/quickstart.yml --device cuda) >"$out/logs/quickstart.log" 2>&1
    echo "quickstart: exit $? in $((SECONDS - start)) s"; tail -n 4 "$out/logs/quickstart.log"
    echo "=== lit-engine bench on cuda"
    timeout 150 "$lit" bench all --device cuda --steps 20 --warmup 5 2>&1 | tee "$out/logs/bench-lit.log"
    for p in bf16 fp16; do
        timeout 90 "$lit" bench step --device cuda --precision $p --steps 20 --warmup 5 2>&1 |
            tee -a "$out/logs/bench-lit.log"
    done
    echo "=== the same steps as one CUDA graph each (--graph: captured once, one launch per step)"
    for p in fp32 bf16; do
        for kind in step kd; do
            timeout 90 "$lit" bench $kind --device cuda --precision $p --graph --steps 20 --warmup 5 2>&1 |
                tee -a "$out/logs/bench-lit.log"
        done
    done
    echo "=== kernel lab on cuda (resnet20 shapes; each case checked against cpu first)"
    timeout 120 "$lit" bench kernels resnet20 --device cuda --json 2>&1 |
        tee "$out/logs/kernel-lab.jsonl" | tail -n 5
    echo "=== where the GPU time goes (LIT_KERNEL_TIMES=1: an event pair per launch, so slower steps)"
    LIT_KERNEL_TIMES=1 timeout 60 "$lit" bench all --device cuda --steps 5 --warmup 2 2>&1 |
        tee "$out/logs/bench-kernel-times.log" | grep -v '^{' | head -n 60
    echo "=== PyTorch on the same card: eager in every layout and precision, then compiled and CUDA graphs"
    torch_bench() {
        local limit=$1
        shift
        PYTHONUNBUFFERED=1 timeout "$limit" python3 benches/pytorch_steps.py --device cuda --steps 20 \
            --warmup 5 "$@" 2>&1 | grep -v Warning | tee -a "$out/logs/bench-pytorch.log"
    }
    if [[ ${LIT_GPU_TORCH:-1} != 0 ]]; then # LIT_GPU_TORCH=0 leaves PyTorch out
        torch_bench 90 --modes eager
        # max-autotune compiles for minutes: run it on its own (--modes max-autotune) when time allows
        torch_bench 240 --modes compile,reduce-overhead --layouts channels_last
    fi
fi

if ((run_experiment)); then
    lit=$exes/bin/lit-engine
    echo "=== CIFAR-10 experiment on cuda (configs/gpu, seed 0)"
    data=$(mktemp -d)
    "$lit" data import --from "$carry/cifar10-jpeg.tar.xz" --to "$data" >/dev/null
    PYTHONUNBUFFERED=1 timeout 400 python3 scripts/short_experiments.py --data-root "$data" --configs configs/gpu \
        --device cuda --seeds 0 --workdir "$(mktemp -d)" --binary "$lit" \
        --results "$out/experiment.json" --log-dir "$out/logs/experiment" \
        --only cifar10_takd20_teacher cifar10_takd8_scratch cifar10_takd8_kd cifar10_takd8_lit
    grep -h "^epoch\|^==\|^student\|^teacher\|final test" "$out"/logs/experiment/*.log | tail -n 40
fi

if ((run_epoch)); then
    lit=$exes/bin/lit-engine
    echo "=== one CIFAR-10 epoch of ResNet-20, bf16, with and without step graphs"
    data=$(mktemp -d)
    "$lit" data import --from "$carry/cifar10-jpeg.tar.xz" --to "$data" >/dev/null
    for graph in true false; do
        work=$(mktemp -d)
        sed "s/step_graph: true/step_graph: $graph/" configs/gpu/cifar10_resnet20_epoch.yml >"$work/c.yml"
        (cd "$work" && timeout 120 "$lit" train c.yml --data-dir "$data" --device cuda) \
            >"$out/logs/epoch-graph-$graph.log" 2>&1
        echo "step_graph $graph: exit $?"
        grep -h "^epoch\|step graph" "$out/logs/epoch-graph-$graph.log"
    done
fi

for name in "${failed_names[@]}"; do
    echo "=== why tests/$name failed (first lines)"
    grep -E "panicked|FAILED|failed|error" "$out/logs/$name.log" | head -n 15
done
# At most 8 files come back from the machine: one archive of the logs.
tar -C "$out" -czf "$out/logs.tar.gz" logs && rm -rf "$out/logs"
echo "gpu-run: $passed passed, $failed failed (test executables)${failed_names:+: ${failed_names[*]}}"
((failed == 0))

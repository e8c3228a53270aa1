#!/bin/bash
# Interleaved speed comparison on a noisy machine: ROUNDS rounds, each running every given
# lit-engine binary (bench step, kd, forward; best of 5 steps) and then the PyTorch reference
# (benches/pytorch_steps.py, both layouts). Prints, per benchmark, each engine's best over all
# rounds and its ratio to PyTorch's best, with every round's value; and, paired round by round
# with PyTorch's better layout, the median ratio and the rounds it was at least as fast in.
#
#   scripts/bench_interleaved.sh 3 target/release/lit-engine [other-build/lit-engine ...]
set -euo pipefail
rounds=${1:?usage: $0 ROUNDS LIT_ENGINE_BINARY...}
shift
[ $# -ge 1 ] || { echo "usage: $0 ROUNDS LIT_ENGINE_BINARY..." >&2; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for _ in $(seq "$rounds"); do
  for b in "$@"; do
    for w in step kd forward; do
      ms=$("$b" bench "$w" --steps 5 2>/dev/null | grep -o '"best_ms":[0-9.]*' | cut -d: -f2)
      echo "$b $w $ms" >> "$out"
    done
  done
  python3 "$here/benches/pytorch_steps.py" --threads 2 --modes eager --precisions fp32 | python3 -c '
import sys, json
names = {"resnet20_step": "step", "kd_resnet56_to_resnet20_step": "kd", "resnet56_forward_eval": "forward"}
for line in sys.stdin:
    d = json.loads(line)
    print("pytorch", names[d["bench"]], d["ms"])' >> "$out"
done
python3 - "$out" <<'PY'
import collections, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    engine, bench, ms = line.split()
    runs[(engine, bench)].append(float(ms))
for bench in ["step", "kd", "forward"]:
    ref = min(runs[("pytorch", bench)])
    # PyTorch's best layout in each round, to pair with the engines' runs of that round.
    torch = runs[("pytorch", bench)]
    per_round = [min(torch[i:i + 2]) for i in range(0, len(torch), 2)]
    for (engine, b), values in sorted(runs.items()):
        if b == bench:
            print(f"{bench:8s} {engine:40s} best {min(values):7.1f} ms  ratio {min(values) / ref:5.2f}"
                  f"  all {[round(v) for v in values]}")
            if engine != "pytorch":
                paired = sorted(v / t for v, t in zip(values, per_round))
                wins = sum(r <= 1.0 for r in paired)
                print(f"{'':8s} {'':40s} per round: median ratio {paired[len(paired) // 2]:.2f},"
                      f" at least as fast in {wins} of {len(paired)}")
PY

#!/usr/bin/env bash
# Refactoring check: runs one tiny training run of every method and model family with a given
# binary and prints a digest of every weight file it saved and every metric it logged (timings
# left out). Run it with the binary before and after a change that must not change behaviour and
# diff the two outputs: they must be identical, line for line.
#
#   scripts/bit_identity.sh BINARY OUTDIR [DEVICE...]   (devices default: cpu emu)
#
# Data: LIT_DATA_DIR (the real sets of ../shared/data; the bundled MNIST subset alone covers only
# the MLP runs, the others are then reported as skipped).
set -euo pipefail
bin=$(realpath "$1"); out=$2; shift 2
devices=("${@:-cpu}"); [ $# -eq 0 ] && devices=(cpu emu)
data=${LIT_DATA_DIR:-$(dirname "$0")/../data}  # a data root as configs/README.md lays it out
data=$(realpath "$data")
mkdir -p "$out"; out=$(realpath "$out")

limits='batch_size: 32, momentum: 0.9, weight_decay: 0.0001, seed: 3, max_train_batches: 3, max_eval_batches: 2'
write() { # name dataset student teacher sequence [extra models keys] [extra hyperparameters]
  cat > "$out/$1.yml" <<YML
models: {dataset: $2, training_architecture: $3${4:+, base_architecture: $4, base_model_path: ./m/$1/teacher.safetensors}${6:+, $6}}
sequence: {$5}
params: {logdir: ./r/$1, save_directory: ./m/$1, save_model_name: $1.safetensors}
hyperparameters: {$limits${7:+, $7}}
YML
}
st='epochs: 2, lr: 0.05, milestones: [1]'
write mlp_scratch    mnist         mlp-784-32-10 ""                "train: {$st}"
write mlp_kd         mnist         mlp-784-16-10 mlp-784-64-10     "teacher: {$st}, kd: {$st, kd_variant: qd, temperature: 4, weight: 0.7}"
write mlp_qd         mnist         mlp-784-32-10 mlp-784-64-10     "teacher: {$st}, quantized_distillation: {$st, bits: 4, bucket_size: 256}"
write mlp_dq         mnist         mlp-784-32-10 mlp-784-64-10     "teacher: {$st}, differentiable_quantization: {$st, bits: 4, bucket_size: 256}"
write mlp_ptq        mnist         mlp-784-32-10 ""                "train: {$st}, post_training_quantization: {bits: [2, 4]}"
write resnet_lit     cifar10       takd-resnet8  takd-resnet20     "teacher: {$st}, lit: {$st}, full_model: {$st}" "" "alpha: 0.95, beta: 0.75, temperature: 6.0, augment: true"
write plane_takd     cifar10       plane2        plane10           "teacher: {$st}, takd: {$st, chain: [plane4]}" "" "temperature: 4.0, alpha: 0.7"
write cfn_lma        cifar10       cfn-spec2     ""                "train: {$st}" "student_activation: lma8" "augment: true"
write wrn_kd         cifar10       wrn-10-1      wrn-16-1          "teacher: {$st}, kd: {$st}" "" "temperature: 4.0, alpha: 0.9"
write vdcnn_lit      amazon_fine_foods vdcnn9-maxpool vdcnn17-maxpool "teacher: {$st}, lit: {$st}, full_model: {$st}" "" "alpha: 0.95, beta: 0.05, temperature: 6.0"

for dev in "${devices[@]}"; do
  for cfg in "$out"/*.yml; do
    name=$(basename "$cfg" .yml); dir="$out/$dev/$name"
    rm -rf "$dir"; mkdir -p "$dir"; cd "$dir"
    if ! "$bin" train "$cfg" --device "$dev" --data-dir "$data" > log.txt 2>&1; then
      if grep -q "not found\|no such file\|missing" log.txt; then echo "$dev $name SKIPPED (data)"; continue; fi
      echo "$dev $name FAILED: $(tail -1 log.txt)"; continue
    fi
    # Tensors only: names, dtypes, shapes and bytes (the metadata holds times and paths).
    find m -name '*.safetensors' -not -path '*-last.state*' | sort | while read -r f; do
      echo "$dev $name $f $(python3 -c '
import hashlib, json, struct, sys
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n]); header.pop("__metadata__", None)
h = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
h.update(raw[8 + n:])
print(h.hexdigest()[:16])' "$f")"
    done
    python3 - "$dir/r/$name/metrics.jsonl" "$dev $name" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    row = json.loads(line); row.pop("seconds", None)
    print(sys.argv[2], "metrics", json.dumps(row, sort_keys=True))
PY
  done
done

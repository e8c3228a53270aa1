#!/usr/bin/env bash
# Feed lit-engine the bad inputs and faults a careless or hostile user produces, and print a
# Markdown table: case | exit status | seconds | what it said. Every case must end with a one-line
# error (or a documented success), within the time limit, with no panic, abort or hang.
#   scripts/hostile_inputs.sh [path/to/lit-engine]   (default: target/release/lit-engine)
# Needs python3 (to write the crafted files). Works in a scratch folder under target/.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-target/release/lit-engine}")
data=$(realpath data)
work=$(realpath -m target/hostile)
rm -rf "$work" && mkdir -p "$work" && cd "$work" || exit 1
export LIT_DEVICE=cpu
unset LIT_FAULT LIT_DATA_DIR LIT_REQUIRE_GPU

bad=0
# row NAME COMMAND...: run it (60 s at most) and print one table row. The verdict is ok when it
# exits 0, or 1 with an `error:` line, or with the status in $expect (an injected kill: 134);
# HANG on the time limit; CRASH on a panic, an abort or any other status.
row() {
    local name=$1; shift
    local start=$SECONDS out code verdict said
    out=$(timeout 60 "$@" 2>&1); code=$?
    said=$(printf '%s\n' "$out" | grep -m1 -E '^error: |panicked|internal error|stopped by' || printf '%s\n' "$out" | tail -n1)
    said=${said//|/\\|}
    verdict=CRASH
    if [[ $code == 0 || " ${expect:-} " == *" $code "* ]]; then verdict=ok; fi
    if [[ $code == 1 ]] && printf '%s\n' "$out" | grep -q '^error: '; then verdict=ok; fi
    if [[ $code == 124 ]]; then verdict=HANG; fi
    if printf '%s' "$out" | grep -q -E 'panicked|internal error|memory allocation'; then verdict=CRASH; fi
    [[ $verdict == ok ]] || bad=$((bad + 1))
    printf '| %s | %s | %s | %s | %s |\n' "$name" "$code" "$((SECONDS - start))" "$verdict" "${said:0:150}"
}

cfg() { # name, models line(s), extra sequence/params/hyper
    cat >"$1" <<EOF
models: {dataset: mnist, training_architecture: ${2:-mlp-784-16-10}}
sequence:
  train: {epochs: 1, lr: 0.1}
params: {save_directory: $work/out-${1%.yml}, save_model_name: m.safetensors, logdir: $work/logs-${1%.yml}${3:-}}
hyperparameters: {batch_size: ${4:-64}, max_train_batches: 2, max_eval_batches: 1}
EOF
}
# `train` as a program (timeout runs programs, not shell functions).
printf '#!/bin/sh\nexec "%s" train "$@" --data-dir "%s"\n' "$bin" "$data" >train && chmod +x train
export PATH="$work:$PATH"

echo "| case | exit | s | verdict | what it said |"
echo "|---|---|---|---|---|"

# --- configs ---
: >empty.yml;                                row "empty config" train empty.yml
head -c 4096 /dev/urandom >garbage.yml;      row "random bytes as config" train garbage.yml
python3 - <<'EOF'
lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
for i in range(1, 12):
    lines.append(f'a{i}: &a{i} [' + ','.join([f'*a{i-1}'] * 9) + ']')
open('alias_bomb.yml', 'w').write('\n'.join(lines) + '\n')
open('deep.yml', 'w').write('models: ' + '[' * 200000 + ']' * 200000 + '\n')
open('huge.yml', 'w').write('# ' + 'x' * (64 << 20) + '\n')
EOF
row "YAML alias bomb (9^12 nodes)" train alias_bomb.yml
row "YAML nested 200000 deep" train deep.yml
row "64 MiB config" train huge.yml
cfg typo.yml; sed -i 's/epochs/epocs/' typo.yml;                 row "misspelt key" train typo.yml
cfg nan.yml; sed -i 's/lr: 0.1/lr: .nan/' nan.yml;               row "lr: .nan" train nan.yml
cfg neg.yml; sed -i 's/epochs: 1/epochs: -1/' neg.yml;           row "epochs: -1" train neg.yml
cfg b0.yml "" "" 0;                                               row "batch_size: 0" train b0.yml
cfg bhuge.yml "" "" 1000000000000;                                row "batch_size: 10^12" train bhuge.yml
cfg wide.yml mlp-784-4000000000-10;                               row "mlp-784-4000000000-10" train wide.yml
cfg wrn.yml wrn-16-100000;                                        row "wrn-16-100000" train wrn.yml
cfg deepres.yml resnet1000000001;                                 row "resnet1000000001" train deepres.yml
cfg esc.yml; sed -i 's/save_model_name: m.safetensors/save_model_name: ..\/..\/escape.safetensors/' esc.yml
row "save_model_name ../../escape" train esc.yml
cfg isfile.yml; : >"$work/out-isfile"; row "save_directory is a file" train isfile.yml

# --- teachers and checkpoints ---
kd() { # name, teacher path
    cat >"$1" <<EOF
models: {dataset: mnist, training_architecture: mlp-784-16-10, base_architecture: mlp-784-16-10, base_model_path: $2}
sequence:
  kd: {epochs: 1, lr: 0.1}
params: {save_directory: $work/out-${1%.yml}, save_model_name: m.safetensors}
hyperparameters: {batch_size: 64, max_train_batches: 2, max_eval_batches: 1}
EOF
}
head -c 100000 /dev/urandom >garbage.safetensors; kd t1.yml "$work/garbage.safetensors"; row "teacher = random bytes" train t1.yml
python3 - <<'EOF'
import struct, json
h = json.dumps({"fc1.weight": {"dtype": "F32", "shape": [1 << 40, 1 << 20], "data_offsets": [0, 1 << 62]}}).encode()
open('huge_header.safetensors', 'wb').write(struct.pack('<Q', len(h)) + h)
open('huge_len.safetensors', 'wb').write(struct.pack('<Q', 1 << 62) + b'{}')
EOF
kd t2.yml "$work/huge_header.safetensors"; row "teacher claims 2^62-byte tensor" train t2.yml
kd t3.yml "$work/huge_len.safetensors";    row "teacher header length 2^62" train t3.yml
cfg good.yml; train good.yml >/dev/null 2>&1
cp out-good/m.safetensors nan.safetensors
python3 -c "
import struct; b=bytearray(open('nan.safetensors','rb').read()); b[-4:]=struct.pack('<f', float('nan')); open('nan.safetensors','wb').write(b)"
kd t4.yml "$work/nan.safetensors";                    row "teacher with a NaN weight" train t4.yml
row "eval of a NaN checkpoint" "$bin" eval nan.safetensors --config good.yml --data-dir "$data"
head -c 1000 out-good/m.safetensors >trunc.safetensors
row "eval of a truncated checkpoint" "$bin" eval trunc.safetensors --config good.yml --data-dir "$data"

# --- resume ---
cfg r.yml; sed -i 's/epochs: 1/epochs: 3/' r.yml
row "--resume with no state" train r.yml --resume
train r.yml --epochs 1 >/dev/null 2>&1
echo '{"generation": 1, "files": {}}' >out-r/m-last.state/COMMIT; row "--resume, COMMIT lists no files" train r.yml --resume
rm -rf out-r; train r.yml --epochs 1 >/dev/null 2>&1
printf 'x' >>out-r/m-last.state/g1/optim.safetensors; row "--resume, optimizer file modified" train r.yml --resume
rm -rf out-r; train r.yml --epochs 1 >/dev/null 2>&1
sed 's/batch_size: 64/batch_size: 32/' r.yml >r2.yml; row "--resume with another batch size" train r2.yml --resume
row "--resume, lr changed (applied)" train <(sed 's/lr: 0.1/lr: 0.05/' r.yml) --resume
rm -rf out-r
expect=134 row "killed (abort) at its 12th checkpoint write" env LIT_FAULT=checkpoint-write:12 train r.yml
row "  then --resume" train r.yml --resume
rm -rf out-r
row "disk full at its 20th checkpoint write" env LIT_FAULT=checkpoint-fail:20 train r.yml
row "  then --resume" train r.yml --resume
cfg slow.yml mlp-784-2048-2048-10; sed -i 's/max_train_batches: 2/max_train_batches: 100000/; s/epochs: 1/epochs: 50/' slow.yml
train slow.yml >slow.out 2>&1 & sleep 2
row "second run on a locked save_directory" train slow.yml
kill -INT %1; wait %1; code=$?
echo "| Ctrl-C of the first run | $code | | $([[ $code == 130 ]] && echo ok || echo WRONG) | $(grep -m1 'stopped by' slow.out | cut -c1-150) |"
[[ $code == 130 ]] || bad=$((bad + 1))
row "  then --resume (--epochs 1 applied)" train slow.yml --resume --epochs 1

# --- data ---
mkdir -p idx/mnist
python3 - <<'EOF'
import gzip, struct
open('idx/mnist/train-images-idx3-ubyte', 'wb').write(struct.pack('>IIII', 2051, 1 << 31, 28, 28) + b'\0' * 100)
open('idx/mnist/train-labels-idx1-ubyte', 'wb').write(struct.pack('>II', 2049, 1 << 31))
open('idx/mnist/t10k-images-idx3-ubyte', 'wb').write(struct.pack('>IIII', 2051, 1, 65535, 65535))
open('idx/mnist/t10k-labels-idx1-ubyte', 'wb').write(struct.pack('>II', 2049, 1) + b'\1')
EOF
cfg idx.yml; row "idx header claims 2^31 images" "$bin" train idx.yml --data-dir idx
mkdir -p imgs/train/cat imgs/test/cat
python3 - <<'EOF'
import struct, zlib
def chunk(t, d): return struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))
png = (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 100000, 100000, 8, 2, 0, 0, 0))
       + chunk(b'IDAT', zlib.compress(b'\0' * 301)) + chunk(b'IEND', b''))
for i in range(3):
    open(f'imgs/train/cat/{i}.png', 'wb').write(png)
    open(f'imgs/test/cat/{i}.png', 'wb').write(png)
import tarfile, io
ti = tarfile.TarInfo('cifar/train/cat/0.png'); ti.size = 0
raw = bytearray(ti.tobuf(format=tarfile.USTAR_FORMAT))
raw[124:136] = b'\x80' + (1 << 62).to_bytes(11, 'big')  # base-256 size field: 2^62 bytes
chk = sum(raw[:148]) + 8 * 32 + sum(raw[156:512]); raw[148:156] = b'%06o\0 ' % chk
open('huge_entry.tar', 'wb').write(bytes(raw) + b'\0' * 1024)
EOF
row "PNG claiming 100000x100000" "$bin" data import --from imgs --to imported --format cifar10
row "tar entry claiming 2^62 bytes" "$bin" data import --from huge_entry.tar --to imported2 --format cifar10
mkdir -p few/train/a few/test/a; cp "$work/imgs/train/cat/0.png" /dev/null
python3 - <<'EOF'
import struct, zlib
def chunk(t, d): return struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))
raw = b''.join(b'\0' + b'\x80' * 96 for _ in range(32))
png = b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 32, 32, 8, 2, 0, 0, 0)) + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b'')
for i in range(5):
    open(f'few/train/a/{i}.png', 'wb').write(png)
open('few/test/a/0.png', 'wb').write(png)
EOF
row "data import of 5 training images" "$bin" data import --from few --to imported3 --format cifar10
mkdir -p same && cp "$data"/mnist/* same/
row "subset-idx onto its own source" "$bin" data subset-idx --from same --to same --train 5 --test 5

# --- flags ---
row "bench --threads 0" "$bin" bench step --threads 0 --steps 1 --warmup 0 --batch 2
row "bench --threads 10^9" "$bin" bench step --threads 1000000000 --steps 1 --warmup 0 --batch 2
row "info --num-classes 10^12" "$bin" info resnet20 --num-classes 1000000000000
row "info mlp-784-4000000000-10" "$bin" info mlp-784-4000000000-10

echo
echo "cases that crashed or hung: $bad"
[[ $bad == 0 ]]

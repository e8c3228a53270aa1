#!/usr/bin/env bash
# Assemble gpu-carry/ (git-ignored) for a lent GPU machine, which has no cargo: every test
# executable, the bench executables and the CLI, built here in release mode, stripped of debug
# info and packed into executables.tar.xz (the carry limit is 64 MiB), plus a copy of the golden
# cases. Run it from anywhere in the
# repository; then run scripts/gpu-run.sh there with carry=["gpu-carry"] (see docs/GPU.md).
#
#   scripts/gpu-carry.sh [--no-golden] [--with-cifar]
#
# --with-cifar also copies the CIFAR-10 JPEG archive (18.6 MB) for `gpu-run.sh --experiment`.
set -euo pipefail
cd "$(dirname "$0")/.."

with_golden=1 with_cifar=0
for arg in "$@"; do
    case $arg in
        --no-golden) with_golden=0 ;;
        --with-cifar) with_cifar=1 ;;
        *) echo "gpu-carry: unknown option $arg" >&2; exit 2 ;;
    esac
done

carry=gpu-carry
rm -rf "$carry"
mkdir -p "$carry/tests" "$carry/benches" "$carry/bin"

# One JSON line per built artifact; keep the executables: test harnesses (profile.test) go to
# tests/, bench harnesses to benches/, the CLI to bin/.
artifacts=$(mktemp)
trap 'rm -f "$artifacts"' EXIT
# Tests find fixtures through env!("CARGO_MANIFEST_DIR"). Cargo reuses artifacts that another
# checkout sharing CARGO_TARGET_DIR built, with that checkout's path baked in; touching the crate's
# sources makes it rebuild them here, so the path gpu-run.sh links is the one they carry.
touch src/lib.rs src/main.rs tests/*.rs
cargo test --release --no-run --message-format=json >"$artifacts"
if compgen -G "benches/*.rs" >/dev/null; then
    cargo bench --no-run --message-format=json >>"$artifacts"
fi
python3 - "$artifacts" "$carry" <<'PY'
import json, shutil, subprocess, sys, os
artifacts, carry = sys.argv[1], sys.argv[2]
copied = set()
for line in open(artifacts):
    if not line.startswith("{"):
        continue
    msg = json.loads(line)
    exe = msg.get("executable")
    if msg.get("reason") != "compiler-artifact" or not exe or exe in copied:
        continue
    copied.add(exe)
    kinds = msg["target"]["kind"]
    if "bench" in kinds:
        folder = "benches"
    elif msg["profile"]["test"]:
        folder = "tests"
    else:
        folder = "bin"
    dest = os.path.join(carry, folder, msg["target"]["name"])
    if folder == "bin" and msg["target"]["name"] == "lit-engine":
        # Tests run the CLI from the path cargo built it at (env!("CARGO_BIN_EXE_...")).
        with open(os.path.join(carry, "MANIFEST.txt"), "a") as m:
            m.write(f"cli built at {exe}\n")
    shutil.copy2(exe, dest)
    subprocess.run(["strip", "--strip-debug", dest], check=True)
    print(f"{folder}/{msg['target']['name']}  <- {exe}")
PY

if [[ $with_golden == 1 ]]; then
    golden=${LIT_GOLDEN_DIR:-../shared/golden}
    if [[ -d $golden ]]; then
        cp -r "$golden" "$carry/golden"
        chmod -R u+w "$carry/golden" # shared/ is read-only; keep the folder deletable
    else
        echo "gpu-carry: no golden folder at $golden; golden tests will fail on the GPU" >&2
    fi
fi

if [[ $with_cifar == 1 ]]; then
    cp "${LIT_SHARED_DATA:-../shared/data}/cifar10-jpeg/cifar10-jpeg.tar.xz" "$carry/"
fi

# Executables compress about 3x; the golden cases (mostly float tensors) hardly at all.
tar -C "$carry" -cf - tests benches bin | xz -T0 -6 >"$carry/executables.tar.xz"
rm -rf "$carry/tests" "$carry/benches" "$carry/bin"

{
    cat "$carry/MANIFEST.txt" 2>/dev/null
    echo "built from $(git rev-parse HEAD)$(git diff --quiet || echo ' + uncommitted changes')"
    echo "manifest dir $PWD"
    echo "on $(date -u +%Y-%m-%dT%H:%M:%SZ) with $(cargo --version)"
} >"$carry/MANIFEST.new" && mv "$carry/MANIFEST.new" "$carry/MANIFEST.txt"
du -sh "$carry"
size_mib=$(du -sm "$carry" | cut -f1)
if ((size_mib > 60)); then
    echo "gpu-carry: ${size_mib} MiB is close to the 64 MiB carry limit; try --no-golden" >&2
    exit 1
fi

#!/usr/bin/env python3
"""Read a log folder with TensorBoard's own reader and compare its scalars with the expected ones.

    scripts/check_tensorboard.py LOGDIR TAG:STEP:VALUE [TAG:STEP:VALUE ...]

Exit 0 when TensorBoard's EventAccumulator reads every expected (tag, step, value) — values
compared as float32 — and no other scalar; 1 with the differences otherwise; 2 when the
`tensorboard` Python package is not installed (the caller reports that as a skip).
"""

import struct
import sys


def as_f32(x):
    return struct.unpack("<f", struct.pack("<f", float(x)))[0]


def main(argv):
    if len(argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 1
    try:
        from tensorboard.backend.event_processing import event_accumulator
    except ImportError as e:
        print(f"skip: tensorboard is not importable ({e})")
        return 2

    logdir, specs = argv[0], argv[1:]
    expected = {}
    for spec in specs:
        tag, step, value = spec.rsplit(":", 2)
        expected.setdefault(tag, {})[int(step)] = as_f32(value)

    # size_guidance 0: keep every scalar event instead of TensorBoard's reservoir sample.
    acc = event_accumulator.EventAccumulator(
        logdir, size_guidance={event_accumulator.SCALARS: 0}
    )
    acc.Reload()
    found = {
        tag: {e.step: as_f32(e.value) for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]
    }
    print(f"TensorBoard read tags {sorted(found)} from {logdir}")
    if found != expected:
        print(f"mismatch:\n  expected {expected}\n  found    {found}")
        return 1
    count = sum(len(v) for v in found.values())
    print(f"ok: {count} scalars match")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

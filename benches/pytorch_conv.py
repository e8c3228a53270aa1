"""PyTorch CPU reference for benches/conv.rs: conv2d forward, input gradient, weight gradient and
both gradients on ResNet-20's layer shapes (batch 128, 3x3, padding 1), best of NCHW and
channels_last, 2 threads. Prints wall-clock GFLOP/s and, because the bench machine is shared,
GFLOP/s per core of process CPU time.

    python3 benches/pytorch_conv.py [reps] [threads]

With `threads` = 1 the CPU-time figure is the robust one on a busy machine (no spinning workers);
compare it with `RAYON_NUM_THREADS=1 cargo bench --bench conv`.
"""
import sys
import time

import torch

REPS = int(sys.argv[1]) if len(sys.argv) > 1 else 10
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)

# (name, x shape, out channels, stride)
SHAPES = [
    ("16ch 32x32", (128, 16, 32, 32), 16, 1),
    ("32ch 16x16", (128, 32, 16, 16), 32, 1),
    ("64ch 8x8", (128, 64, 8, 8), 64, 1),
    ("16->32 s2", (128, 16, 32, 32), 32, 2),
    ("32->64 s2", (128, 32, 16, 16), 64, 2),
    ("stem 3->16", (128, 3, 32, 32), 16, 1),
]


def best(fn):
    fn()
    wall, cpu = float("inf"), float("inf")
    for _ in range(REPS):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - w0)
        cpu = min(cpu, time.process_time() - c0)
    return wall, cpu


def passes(x, w, dy, stride):
    conv_bw = torch.ops.aten.convolution_backward
    args = (dy, x, w, None, [stride, stride], [1, 1], [1, 1], False, [0, 0], 1)
    return {
        "fwd": lambda: torch.nn.functional.conv2d(x, w, None, stride, 1),
        "data": lambda: conv_bw(*args, [True, False, False]),
        "weight": lambda: conv_bw(*args, [False, True, False]),
        "both": lambda: conv_bw(*args, [True, True, False]),
    }


def main():
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {REPS}")
    with torch.no_grad():
        for name, xs, o, s in SHAPES:
            n, c, h, w_ = xs
            oh = (h + 2 - 3) // s + 1
            gflop = 2 * n * o * c * 9 * oh * oh / 1e9
            results = {}
            for fmt in (torch.contiguous_format, torch.channels_last):
                x = torch.randn(xs).contiguous(memory_format=fmt)
                w = torch.randn(o, c, 3, 3).contiguous(memory_format=fmt)
                dy = torch.randn(n, o, oh, oh).contiguous(memory_format=fmt)
                for p, fn in passes(x, w, dy, s).items():
                    wall, cpu = best(fn)
                    if p not in results or wall < results[p][0]:
                        fmt_name = "NCHW" if fmt == torch.contiguous_format else "NHWC"
                        results[p] = (wall, cpu, fmt_name)
            line = []
            for p in ("fwd", "data", "weight", "both"):
                wall, cpu, fmt_name = results[p]
                flops = gflop * (2 if p == "both" else 1)
                line.append(
                    f"{p} {wall * 1e3:.2f} ms {flops / wall:.0f} GF/s "
                    f"({flops / cpu:.0f}/core, {fmt_name})"
                )
            print(f"{name:11s} " + " | ".join(line))


if __name__ == "__main__":
    main()

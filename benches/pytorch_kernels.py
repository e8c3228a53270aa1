"""PyTorch reference for the kernel lab (`lit-engine bench kernels`): times the lab's cases with
PyTorch — cuDNN/cuBLAS on cuda, PyTorch's CPU kernels otherwise — on the same shapes, in the same
NCHW layout and precision, and prints one JSON line per case under the same case name.

The case list comes from lit-engine itself, so both engines time exactly the same shapes:

    lit-engine bench kernels [FILTER] --list > cases.jsonl
    python3 benches/pytorch_kernels.py --cases cases.jsonl --device cuda > torch.jsonl
    lit-engine bench kernels [FILTER] --device cuda --pytorch-results torch.jsonl

(`lit-engine bench kernels --compare-pytorch` does the three steps at once, passing the cases on
standard input: `--cases -`.) `--dry-run` reads and checks the cases without importing torch.

Precision: fp32 turns TF32 off for cuDNN and cuBLAS; tf32 turns it on; bf16 / fp16 cast the
conv and GEMM operands to that type (what autocast does for those ops); every other op stays fp32.
"""
import argparse
import json
import statistics
import sys
import time

CONV_PASSES = {"fwd": None, "dx": [True, False, False], "dw": [False, True, False]}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", required=True, help="JSON lines from `bench kernels --list`, or -")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--dry-run", action="store_true", help="check the cases, time nothing")
    return p.parse_args()


def read_cases(path):
    text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    cases = [json.loads(line) for line in text.splitlines() if line.strip()]
    for c in cases:
        if "case" not in c or "kernel" not in c:
            raise SystemExit(f"not a kernel-lab case (no `case`/`kernel`): {c}")
    return cases


def setup_precision(torch, precision):
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def make_case(torch, c, dev, low):
    """A closure that runs the case's pass once (inputs built here, outside the timing)."""
    F = torch.nn.functional
    k = c["kernel"]
    randn = lambda *shape, dtype=torch.float32: torch.randn(*shape, device=dev, dtype=dtype)
    if k.startswith("conv"):
        x, w = randn(*c["x"], dtype=low), randn(*c["w"], dtype=low)
        stride, padding = c["stride"], c["padding"]
        conv = F.conv1d if len(c["x"]) == 3 else F.conv2d
        y = conv(x, w, None, stride, padding)
        dy = randn(*y.shape, dtype=low)
        mask = CONV_PASSES[k.split("_")[1]]
        if mask is None:
            return lambda: conv(x, w, None, stride, padding)
        dims = len(stride)
        bw = torch.ops.aten.convolution_backward
        args = (dy, x, w, None, stride, padding, [1] * dims, False, [0] * dims, 1, mask)
        return lambda: bw(*args)
    if k.startswith("bn_train"):
        x = randn(*c["x"])
        ch = c["x"][1]
        gamma, beta = randn(ch), randn(ch)
        rm, rv = torch.zeros(ch, device=dev), torch.ones(ch, device=dev)
        if k == "bn_train_fwd":
            return lambda: F.batch_norm(x, rm, rv, gamma, beta, True, 0.1, 1e-5)
        _, mean, invstd = torch.ops.aten.native_batch_norm(x, gamma, beta, rm, rv, True, 0.1, 1e-5)
        dy = randn(*c["x"])
        bw = torch.ops.aten.native_batch_norm_backward
        return lambda: bw(dy, x, gamma, rm, rv, mean, invstd, True, 1e-5, [True, True, True])
    if k.startswith("linear"):
        rows, i, o = c["rows"], c["in"], c["out"]
        x, w, b, dy = randn(rows, i, dtype=low), randn(o, i, dtype=low), randn(o, dtype=low), randn(
            rows, o, dtype=low)
        return {"linear_fwd": lambda: F.linear(x, w, b), "linear_dx": lambda: dy @ w,
                "linear_dw": lambda: dy.t() @ x}[k]
    if k.startswith("lma"):
        x, bins = randn(*c["x"]), c["bins"]
        alphas, betas = randn(bins), randn(bins)
        init = torch.tensor([0.0 if j < bins // 2 else 1.0 for j in range(bins)], device=dev)

        def segments():
            m, s = x.mean(), x.std()
            t = ((x - m) + 3 * s) / (6 * s / bins)
            return t.clamp(0, bins - 1).to(torch.int64)

        if k == "lma_fwd":
            def fwd():
                idx = segments()
                return (alphas + init)[idx] * x + betas[idx], idx
            return fwd
        idx, dy = segments(), randn(*c["x"])

        def bwd():
            dx = dy * (alphas + init)[idx]
            flat = idx.flatten()
            da = torch.zeros(bins, device=dev).index_add_(0, flat, (dy * x).flatten())
            db = torch.zeros(bins, device=dev).index_add_(0, flat, dy.flatten())
            return dx, da, db
        return bwd
    if k in ("softmax", "kd_fwd", "kd_bwd"):
        rows, classes, t, alpha = c["rows"], c["classes"], c["temperature"], c["alpha"]
        s, teacher = randn(rows, classes), randn(rows, classes)
        labels = torch.randint(0, classes, (rows,), device=dev)
        if k == "softmax":
            return lambda: F.softmax(s / t, dim=1)

        def kd(student):
            soft = F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1),
                            reduction="batchmean")
            return alpha * t * t * soft + (1 - alpha) * F.cross_entropy(student, labels)
        if k == "kd_fwd":
            return lambda: kd(s)
        sg = s.clone().requires_grad_(True)
        return lambda: torch.autograd.grad(kd(sg), sg)
    if k == "quantize":
        v = randn(*c["shape"])
        bucket, steps = c["bucket"], float(2 ** c["bits"] - 1)
        n = v.numel()
        pad = (-n) % bucket

        def quantize():
            # Padding with a value of the last bucket leaves its min and max as they are.
            rows = F.pad(v.flatten(), (0, pad), value=float(v.flatten()[-1])).view(-1, bucket)
            lo, hi = rows.amin(1, keepdim=True), rows.amax(1, keepdim=True)
            alpha = torch.where(hi - lo < 1e-10, torch.ones_like(hi), hi - lo)
            levels = torch.round((rows - lo) / alpha * steps)
            return (levels / steps * alpha + lo).flatten()[:n].view(v.shape), levels
        return quantize
    if k == "sgd_step":
        params = [torch.nn.Parameter(randn(*s)) for s in c["params"]]
        for p in params:
            p.grad = torch.randn_like(p)
        opt = torch.optim.SGD(params, lr=c["lr"], momentum=c["momentum"],
                              weight_decay=c["weight_decay"])
        return opt.step
    raise SystemExit(f"unknown kernel `{k}` in case {c['case']}")


def time_case(torch, fn, needs_grad, dev, warmup, reps):
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    with torch.enable_grad() if needs_grad else torch.no_grad():
        for _ in range(warmup):
            fn()
        sync()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


def main():
    a = parse_args()
    cases = read_cases(a.cases)
    if a.dry_run:
        for c in cases:
            print(json.dumps({"case": c["case"], "kernel": c["kernel"], "precision": c.get("precision")}))
        return
    import torch

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(json.dumps({"kind": "kernel_lab", "engine": "pytorch", "torch": torch.__version__,
                      "device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu",
                      "threads": torch.get_num_threads(), "cases": len(cases)}))
    for c in cases:
        precision = c.get("precision", "fp32")
        low = setup_precision(torch, precision)
        fn = make_case(torch, c, a.device, low)
        needs_grad = c["kernel"] == "kd_bwd"
        median, best = time_case(torch, fn, needs_grad, a.device, a.warmup, a.reps)
        print(json.dumps({"case": c["case"], "engine": "pytorch", "device": a.device,
                          "precision": precision, "layout": "NCHW", "median_ms": median,
                          "best_ms": best}), flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The PyTorch reference for `lit-engine bench`: the same training steps, same shapes, same machine.

  python3 benches/pytorch_steps.py --threads 2 --batch 128 --steps 5
  python3 benches/pytorch_steps.py --device cuda --precisions bf16 --modes eager,compile

Times (best of `--steps` after `--warmup`):
  * step: one SGD step (forward, cross-entropy, backward, SGD momentum 0.9 wd 1e-4) of the LIT
    CIFAR ResNet-20 (option-A shortcut) on a [B, 3, 32, 32] batch;
  * kd:   ResNet-56 teacher forward (eval, no grad) + ResNet-20 student KD step (kd_lit, T=6, alpha=0.95);
  * forward: the ResNet-56 teacher forward alone (eval, no grad).

Each is timed in every configuration `layout x mode x precision` that the filters keep:
  * layout:    nchw | channels_last;
  * mode:      eager | compile (torch.compile, default mode) | max-autotune (torch.compile
               mode="max-autotune") | reduce-overhead (torch.compile mode="reduce-overhead": the
               step's kernels replayed as CUDA graphs);
  * precision: fp32 (TF32 off: plain fp32 convolutions and matmuls) | tf32 (PyTorch's defaults on
               an Ampere+ GPU: TF32 cuDNN convolutions) | bf16 (autocast bf16, fp32 weights) |
               fp16 (autocast fp16 with a GradScaler).
Configurations that cannot run on the device (CUDA graphs, fp16 with GradScaler, max-autotune and
TF32 on the CPU; TF32 before Ampere) are skipped with the reason on stderr.
Prints one JSON line per measurement: {"bench", "config", "layout", "mode", "precision", "ms", ...};
`config` names the configuration (`<mode>/<layout>/<precision>`), `lit-engine bench
--compare-pytorch` picks the fastest of the same precision.
"""
import argparse, contextlib, json, sys, time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if (stride != 1 or cin != planes) else None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        sc = x
        if self.pad is not None:
            sc = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + sc)


class ResNet(nn.Module):
    def __init__(self, depth, num_classes=10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for planes, stride in [(16, 1), (32, 2), (64, 2)]:
            blocks = []
            for i in range(n):
                blocks.append(Block(cin, planes, stride if i == 0 else 1))
                cin = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(x.mean(dim=(2, 3)))


def kd_lit(s, t, y, T=6.0, alpha=0.95):
    n = s.shape[0]
    soft = -(F.softmax(t / T, 1) * F.log_softmax(s / T, 1)).sum()
    return ((1 - alpha) * T * T * soft + alpha * F.cross_entropy(s, y, reduction="sum")) / n


LAYOUTS = ["nchw", "channels_last"]
MODES = ["eager", "compile", "max-autotune", "reduce-overhead"]
PRECISIONS = ["fp32", "tf32", "bf16", "fp16"]


def skip_reason(device, mode, precision, capability):
    """Why the configuration (mode, precision) cannot run on `device` (None: it can).
    `capability` is the GPU's (major, minor), None on the CPU."""
    if device == "cpu":
        if mode == "reduce-overhead":
            return "CUDA-only: reduce-overhead replays the step as CUDA graphs"
        if mode == "max-autotune":
            return "CUDA-only: max-autotune benchmarks GPU (Triton) kernel choices"
        if precision == "fp16":
            return "CUDA-only: fp16 autocast with a GradScaler is a GPU configuration"
        if precision == "tf32":
            return "CUDA-only: TF32 is a GPU tensor-core format (PyTorch's cpu default is fp32)"
    elif precision == "tf32" and capability < (8, 0):
        return f"TF32 needs an Ampere or newer GPU (compute capability {capability}): the default is fp32 here"
    elif precision == "bf16" and capability < (8, 0):
        return f"bf16 tensor cores need an Ampere or newer GPU (compute capability {capability})"
    return None


def timed(fn, warmup, steps, sync):
    for _ in range(warmup):
        fn()
    sync()
    best = float("inf")
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        sync()  # GPU work is asynchronous: wait for the step before reading the clock
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def set_precision(precision, defaults):
    """fp32 turns TF32 off everywhere; every other precision runs with PyTorch's defaults (TF32
    cuDNN convolutions on Ampere+, which is what `tf32` measures; autocast casts the rest)."""
    cudnn_tf32, matmul_tf32 = defaults
    plain = precision == "fp32"
    torch.backends.cudnn.allow_tf32 = cudnn_tf32 and not plain
    torch.backends.cuda.matmul.allow_tf32 = matmul_tf32 and not plain


def autocast_for(precision, device):
    """The autocast context of a step in `precision` (none for fp32 / tf32)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device, dtype=dtype)


def grad_scaler():
    if hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda")
    return torch.cuda.amp.GradScaler()


def wrapper(mode):
    """How a module is compiled in `mode` (identity in eager)."""
    if mode == "eager":
        return lambda m: m
    torch._dynamo.reset()  # each configuration compiles afresh (no recompile-limit fallbacks)
    kwargs = {} if mode == "compile" else {"mode": mode}
    return lambda m: torch.compile(m, **kwargs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2,
                    help="untimed steps first (at least 3 for compiled modes: compilation, graph recording)")
    ap.add_argument("--bench", choices=["step", "kd", "forward", "all"], default="all")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated subset of " + ",".join(LAYOUTS))
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES))
    ap.add_argument("--precisions", default=",".join(PRECISIONS),
                    help="comma-separated subset of " + ",".join(PRECISIONS))
    a = ap.parse_args()
    picked = {}
    for name, allowed in [("layouts", LAYOUTS), ("modes", MODES), ("precisions", PRECISIONS)]:
        picked[name] = [v for v in getattr(a, name).split(",") if v]
        unknown = [v for v in picked[name] if v not in allowed]
        if unknown:
            ap.error(f"--{name}: unknown {unknown}; expected a subset of {','.join(allowed)}")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    capability = torch.cuda.get_device_capability() if a.device == "cuda" else None
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    x0 = torch.randn(a.batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (a.batch,), device=dev)
    defaults = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    for mode in picked["modes"]:
        for precision in picked["precisions"]:
            why = skip_reason(a.device, mode, precision, capability)
            if why is not None:
                print(f"pytorch_steps.py: skipping {mode}/*/{precision}: {why}", file=sys.stderr)
                continue
            for layout in picked["layouts"]:
                run_config(a, dev, x0, y, sync, defaults, layout, mode, precision)


def run_config(a, dev, x0, y, sync, defaults, layout, mode, precision):
    """Times the requested benches in one configuration and prints a JSON line for each."""
    set_precision(precision, defaults)
    amp = autocast_for(precision, a.device)
    wrap = wrapper(mode)
    warmup = a.warmup if mode == "eager" else max(a.warmup, 3)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = x0.contiguous(memory_format=fmt)
    student_module = ResNet(20).to(dev, memory_format=fmt).train()
    opt = torch.optim.SGD(student_module.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    student = wrap(student_module)
    scaler = grad_scaler() if precision == "fp16" else None
    # reduce-overhead: tell the CUDA-graph trees where a step begins (outputs of the last may go).
    mark_step = getattr(getattr(torch, "compiler", None), "cudagraph_mark_step_begin", None)
    begin = mark_step if mode == "reduce-overhead" and mark_step is not None else (lambda: None)

    def train_on(loss_of_logits, teacher_logits=None):
        opt.zero_grad(set_to_none=True)
        with amp():
            loss = loss_of_logits(student(x), teacher_logits)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

    def teacher_forward(teacher):
        with torch.no_grad(), amp():
            return teacher(x)

    def emit(bench, fn):
        def one_step():
            begin()
            fn()

        ms = timed(one_step, warmup, a.steps, sync)
        print(json.dumps({"bench": bench, "config": f"{mode}/{layout}/{precision}", "layout": layout,
                          "mode": mode, "precision": precision, "batch": a.batch, "threads": a.threads,
                          "device": a.device, "ms": round(ms, 3), "torch": torch.__version__}), flush=True)

    if a.bench in ("step", "all"):
        emit("resnet20_step", lambda: train_on(lambda s, _t: F.cross_entropy(s, y)))
    if a.bench in ("kd", "all"):
        teacher = wrap(ResNet(56).to(dev, memory_format=fmt).eval())
        emit("kd_resnet56_to_resnet20_step",
             lambda: train_on(lambda s, t: kd_lit(s, t, y), teacher_forward(teacher)))
    if a.bench in ("forward", "all"):
        teacher = wrap(ResNet(56).to(dev, memory_format=fmt).eval())
        emit("resnet56_forward_eval", lambda: teacher_forward(teacher))


if __name__ == "__main__":
    main()

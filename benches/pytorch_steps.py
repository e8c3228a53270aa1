#!/usr/bin/env python3
"""The PyTorch reference for `lit-engine bench`: the same training steps, same shapes, same machine.

  python3 benches/pytorch_steps.py --threads 2 --batch 128 --steps 5

Times (best of NCHW and channels_last, best of `--steps` after `--warmup`):
  * step: one SGD step (forward, cross-entropy, backward, SGD momentum 0.9 wd 1e-4) of the LIT
    CIFAR ResNet-20 (option-A shortcut) on a [B, 3, 32, 32] batch;
  * kd:   ResNet-56 teacher forward (eval, no grad) + ResNet-20 student KD step (kd_lit, T=6, alpha=0.95);
  * forward: the ResNet-56 teacher forward alone (eval, no grad).
Prints one JSON line per measurement: {"bench": ..., "layout": ..., "ms": ...}.
"""
import argparse, json, time

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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--bench", choices=["step", "kd", "forward", "all"], default="all")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--variants", default="nchw,channels_last",
                    help="comma-separated layouts to time, each nchw or channels_last, optionally with "
                         "+compile (torch.compile) and/or +fp32 (cuDNN TF32 off: plain fp32 convolutions, "
                         "the precision lit-engine computes in)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    x0 = torch.randn(a.batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (a.batch,), device=dev)
    default_tf32 = torch.backends.cudnn.allow_tf32
    for layout in a.variants.split(","):
        compiled = "+compile" in layout
        torch.backends.cudnn.allow_tf32 = default_tf32 and "+fp32" not in layout
        fmt = torch.channels_last if layout.startswith("channels_last") else torch.contiguous_format
        wrap = torch.compile if compiled else (lambda m: m)
        x = x0.contiguous(memory_format=fmt)
        student_module = ResNet(20).to(dev, memory_format=fmt).train()
        opt = torch.optim.SGD(student_module.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        student = wrap(student_module)
        if a.bench in ("step", "all"):
            def step():
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(student(x), y).backward()
                opt.step()
            print(json.dumps({"bench": "resnet20_step", "layout": layout, "batch": a.batch, "threads": a.threads, "device": a.device,
                              "ms": round(timed(step, a.warmup, a.steps, sync), 2), "torch": torch.__version__}))
        if a.bench in ("kd", "all"):
            teacher = wrap(ResNet(56).to(dev, memory_format=fmt).eval())
            def kd_step():
                with torch.no_grad():
                    t = teacher(x)
                opt.zero_grad(set_to_none=True)
                kd_lit(student(x), t, y).backward()
                opt.step()
            print(json.dumps({"bench": "kd_resnet56_to_resnet20_step", "layout": layout, "batch": a.batch,
                              "threads": a.threads, "device": a.device, "ms": round(timed(kd_step, a.warmup, a.steps, sync), 2),
                              "torch": torch.__version__}))
        if a.bench in ("forward", "all"):
            teacher = wrap(ResNet(56).to(dev, memory_format=fmt).eval())
            def forward():
                with torch.no_grad():
                    teacher(x)
            print(json.dumps({"bench": "resnet56_forward_eval", "layout": layout, "batch": a.batch,
                              "threads": a.threads, "device": a.device, "ms": round(timed(forward, a.warmup, a.steps, sync), 2),
                              "torch": torch.__version__}))


if __name__ == "__main__":
    main()

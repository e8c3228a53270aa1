#!/usr/bin/env python3
"""Run the short-schedule experiments of configs/short/ with several seeds and write docs/RESULTS.md.

  python3 scripts/short_experiments.py --data-root DIR [--seeds 0 1 2] [--only fmnist_kd ...]
                                       [--workdir DIR] [--binary PATH] [--report]
                                       [--configs configs/gpu --device cuda --results FILE]

Each (config, seed) runs `lit-engine train` with `hyperparameters.seed` replaced; the accuracies are
read from the final report table the run prints (a run without one, e.g. a config that only trains a
teacher, gets one row for the model it trained: best = the highest per-epoch test accuracy as
printed, 1 decimal; last = the final test accuracy). Raw results go to docs/results/short.json
(appended/merged); `--report` prints the summary table used in docs/RESULTS.md. Numbers are exactly
as measured: nothing is filtered or re-run.

Working folder: by default every run gets a fresh temporary folder as its cwd, which is deleted
afterwards, so a config must be self-contained (train its own teacher). With `--workdir DIR` every
run uses DIR (created if needed) as its cwd instead: outputs (`./models/...`, `./runs/...`) persist
there and relative paths in a config resolve against DIR, so a config can load a teacher that an
earlier config saved (`base_model_path` without a `teacher` stage). Configs run in alphabetical
order, or in the order given to `--only`; a teacher config must run before the configs that load
its output, e.g.

  python3 scripts/short_experiments.py --data-root DIR --workdir /tmp/short-work \
      --only cifar10_takd20_teacher cifar10_takd8_scratch cifar10_takd8_kd cifar10_takd8_lit

If the teacher file is missing, the run fails with lit-engine's "models.base_model_path: … not
found" error, recorded as a failed run.
"""
import argparse, json, os, re, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^(teacher|assistant|student)\s+(.+?)\s{2,}\S+\s+\S+(?: \S+)?\s+([\d.]+)%\s+([\d.]+)%\s*$")


def run(config: Path, seed: int, data_root: str, binary: str, workdir=None, device=None, log_dir=None):
    text = config.read_text()
    text, n = re.subn(r"seed:\s*\d+", f"seed: {seed}", text)
    if n != 1:
        raise SystemExit(f"{config}: expected exactly one `seed:` key")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / config.name
        cfg.write_text(text)
        cwd = tmp
        if workdir is not None:
            Path(workdir).mkdir(parents=True, exist_ok=True)
            cwd = workdir
        t0 = time.time()
        cmd = [binary, "train", str(cfg), "--data-dir", data_root]
        if device:
            cmd += ["--device", device]
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        secs = time.time() - t0
    if log_dir:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        (Path(log_dir) / f"{config.stem}-seed{seed}.log").write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        return {"config": config.stem, "seed": seed, "ok": False, "error": p.stderr.strip().splitlines()[-1:], "secs": secs}
    rows = []
    for line in p.stdout.splitlines():
        m = ROW.match(line.rstrip())
        if m:
            rows.append({"role": m.group(1), "arch": m.group(2).strip(), "best": float(m.group(3)), "last": float(m.group(4))})
    if not rows:
        rows = trained_model_row(p.stdout)
    return {"config": config.stem, "seed": seed, "ok": True, "rows": rows, "secs": secs}


def trained_model_row(stdout: str):
    """The row of a run that prints no report table (e.g. only a `teacher` stage): the model of
    the last `== <stage>: <arch>` header, its best per-epoch and its final test accuracy."""
    stages = re.findall(r"^== (\w+): (\S+)", stdout, re.M)
    epochs = [float(a) for a in re.findall(r"^epoch \d+/\d+ .* test acc ([\d.]+)%", stdout, re.M)]
    final = re.findall(r"^final test accuracy ([\d.]+)%", stdout, re.M)
    if not stages or not epochs or not final:
        return []
    stage, arch = stages[-1]
    role = stage if stage in ("teacher", "assistant") else "student"
    return [{"role": role, "arch": arch, "best": max(epochs), "last": float(final[-1])}]


def summarise(results):
    """Mean ± std (over seeds) of the best test accuracy of every report row, per config."""
    by = {}
    for r in results:
        if not r["ok"]:
            continue
        for row in r["rows"]:
            by.setdefault((r["config"], row["role"], row["arch"]), []).append(row["best"])
    secs = {}
    for r in results:
        secs.setdefault(r["config"], []).append(r["secs"])
    lines = ["| config | role | model | seeds | best test acc (mean ± std) | wall s / run |", "|---|---|---|---|---|---|"]
    for (cfg, role, arch), v in sorted(by.items()):
        acc = f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f} %" if len(v) > 1 else f"{v[0]:.2f} % (one run)"
        lines.append(f"| `{cfg}` | {role} | {arch} | {len(v)} | {acc} | {statistics.mean(secs[cfg]):.0f} |")
    failed = [f"{r['config']} seed {r['seed']}: {r['error']}" for r in results if not r["ok"]]
    return "\n".join(lines), failed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--report", action="store_true", help="print the summary table of docs/results/short.json")
    ap.add_argument("--binary", default=str(ROOT / "target/release/lit-engine"))
    ap.add_argument("--workdir", help="run every config in this folder (kept) instead of a fresh temporary one")
    ap.add_argument("--configs", default=str(ROOT / "configs/short"),
                    help="folder of configs (configs/gpu holds the full-data versions for a GPU)")
    ap.add_argument("--device", help="passed to lit-engine train --device (cpu, cuda, ...)")
    ap.add_argument("--results", help="JSON file of raw results (default docs/results/<configs folder name>.json)")
    ap.add_argument("--log-dir", help="keep each run's output as <config>-seed<N>.log here")
    a = ap.parse_args()
    configs_dir = Path(a.configs)
    out = Path(a.results) if a.results else ROOT / "docs/results" / f"{configs_dir.resolve().name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(out.read_text()) if out.exists() else []
    configs = sorted(configs_dir.glob("*.yml"))
    if a.only:
        by_stem = {c.stem: c for c in configs}
        missing = [o for o in a.only if o not in by_stem]
        if missing:
            raise SystemExit(f"--only: no {configs_dir}/<name>.yml for {missing}")
        configs = [by_stem[o] for o in a.only]
    if a.report:
        table, failed = summarise(results)
        print(table)
        for f in failed:
            print("FAILED", f)
        return
    for c in configs:
        for s in a.seeds:
            r = run(c, s, a.data_root, a.binary, a.workdir, a.device, a.log_dir)
            results = [x for x in results if not (x["config"] == r["config"] and x["seed"] == s)] + [r]
            out.write_text(json.dumps(results, indent=1))
            print(json.dumps({k: r[k] for k in ("config", "seed", "ok", "secs")}), flush=True)


if __name__ == "__main__":
    main()

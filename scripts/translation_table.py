#!/usr/bin/env python3
"""Collect the translation results of configs/translation/cpu/ into docs/results/translation/.

  python3 scripts/translation_table.py --workdir DIR [--binary PATH] [--data-root DIR]

DIR is the folder the configs ran in (their outputs are under DIR/models/translation/cpu/<run>/).
For every run folder this copies `metrics.jsonl` to docs/results/translation/<run>.metrics.jsonl
and each stage's test hypotheses to <run>.<stem>.test-hyp.<tgt> (so every BLEU can be rescored),
reads each saved checkpoint's size from its safetensors header (f32 bytes; a quantization stage's
packed bytes come from its metrics line), scores the stage's test hypotheses against the first
reference alone with `lit-engine bleu` when the run's metrics line lacks it (runs made before that
line existed), writes docs/results/translation/summary.json and prints the markdown table used in
docs/RESULTS.md. Every number is read from those files; nothing is re-run or filtered.
"""
import argparse, json, shutil, struct, subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs/results/translation"
# (run folder, stage, the row's name in the table)
ROWS = [
    ("teacher", "teacher", "teacher (2-layer LSTM, E = H = 128)"),
    ("student", "train", "student from scratch (1 layer, E = 128, H = 64)"),
    ("word_kd", "word_kd", "student, word-level KD"),
    ("seq_kd", "seq_kd", "student, sequence-level KD"),
    ("qd4", "quantized_distillation", "student, quantized distillation 4 bits"),
    ("student", "post_training_quantization", "student from scratch, PTQ 4 bits"),
    ("qd2", "quantized_distillation", "student, quantized distillation 2 bits"),
    ("ptq2", "post_training_quantization", "student from scratch, PTQ 2 bits"),
    ("lma_relu", "train", "LMA Transformer student, ReLU (d 64)"),
    ("lma_lma", "train", "LMA Transformer student, LMA (d 64)"),
]


def tensor_bytes(path: Path) -> int:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__")


def bleu_first_ref(binary, hyp: Path, ref: Path):
    out = subprocess.run([binary, "bleu", str(hyp), str(ref)], capture_output=True, text=True, check=True)
    line, sacre = out.stdout.splitlines()[:2]
    return float(line.split(",")[0].split("=")[1]), line, float(sacre.split("=")[1].split()[0])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--binary", default=str(ROOT / "target/release/lit-engine"))
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared/data"))
    a = ap.parse_args()
    base = Path(a.workdir) / "models/translation/cpu"
    OUT.mkdir(parents=True, exist_ok=True)
    ref1 = Path(a.data_root) / "text/bible-es-en/test.en"
    summary = []
    for run, stage, name in ROWS:
        folder = base / run
        metrics = folder / "metrics.jsonl"
        if not metrics.exists():
            summary.append({"row": name, "run": run, "stage": stage, "status": "not run"})
            continue
        shutil.copyfile(metrics, OUT / f"{run}.metrics.jsonl")
        lines = [json.loads(l) for l in metrics.read_text().splitlines() if l.strip()]
        epochs = [l for l in lines if l.get("stage") == stage and "epoch" in l]
        test = next((l for l in lines if l.get("stage") == stage and "test_ppl" in l), None)
        row = {"row": name, "run": run, "stage": stage, "epochs": len(epochs),
               "train_seconds": round(sum(l["seconds"] for l in epochs), 1),
               "valid_ppl": [round(l["valid_ppl"], 2) for l in epochs]}
        if test is None:
            row["status"] = "unfinished"
            summary.append(row)
            continue
        row["status"] = "finished"
        hyp = folder / test["hypotheses"]
        shutil.copyfile(hyp, OUT / f"{run}.{hyp.name}")
        ckpt = hyp.parent / (hyp.name.split(".test-hyp.")[0] + ".safetensors")
        row.update({k: test.get(k) for k in ["test_ppl", "test_bleu", "test_sacrebleu", "multi_bleu",
                                             "packed_bytes", "f32_bytes", "bits"]})
        if "test_bleu_ref1" in test:
            row.update({"test_bleu_ref1": test["test_bleu_ref1"], "multi_bleu_ref1": test["multi_bleu_ref1"],
                        "test_sacrebleu_ref1": test["test_sacrebleu_ref1"], "ref1_from": "metrics.jsonl"})
        else:
            mb, line, sb = bleu_first_ref(a.binary, hyp, ref1)
            row.update({"test_bleu_ref1": mb, "multi_bleu_ref1": line, "test_sacrebleu_ref1": sb,
                        "ref1_from": f"lit-engine bleu {hyp.name} test.en"})
        row["checkpoint_bytes"] = tensor_bytes(ckpt)
        summary.append(row)
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print("| model / method | test BLEU, 1 ref (2 refs) | sacreBLEU, 1 ref (2 refs) | test ppl | size (bytes) | train time |")
    print("|---|---|---|---|---|---|")
    for r in summary:
        if r["status"] != "finished":
            print(f"| {r['row']} | {r['status']} | | | | |")
            continue
        size = f"{r['packed_bytes']:,} packed ({r['f32_bytes']:,} f32)" if r.get("packed_bytes") else f"{r['checkpoint_bytes']:,} f32"
        t = f"{r['train_seconds'] / 60:.0f} min, {r['epochs']} epochs" if r["epochs"] else "none"
        print(f"| {r['row']} | {r['test_bleu_ref1']:.2f} ({r['test_bleu']:.2f}) | {r['test_sacrebleu_ref1']:.2f} "
              f"({r['test_sacrebleu']:.2f}) | {r['test_ppl']:.1f} | {size} | {t} |")


if __name__ == "__main__":
    main()

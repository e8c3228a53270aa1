#!/usr/bin/env python3
"""Reference scores for src/nmt/bleu.rs (tests/bleu.rs), computed with sacreBLEU.

Writes tests/fixtures/bleu/: the hypothesis/reference text files of made-up cases (punctuation,
numbers, unicode, empty lines, hypotheses shorter than the references, several references, no
match at all), and sacrebleu.json with sacreBLEU's corpus scores of each case, the 13a
tokenisation of tricky and of random strings, and the scores of KJV-against-WEB slices of the
Bible corpus (used by the test only where /work/shared/data is present).

    python3 -m venv .venv-bleu && .venv-bleu/bin/pip install sacrebleu==2.4.3
    .venv-bleu/bin/python scripts/gen_bleu_fixtures.py            # writes the fixtures
    .venv-bleu/bin/python scripts/gen_bleu_fixtures.py --stdout   # scores of the committed files

With --stdout nothing is written: the scores of the text files already in the fixture folder are
printed as the same JSON, which is how tests/bleu.rs checks against a live sacreBLEU.
"""
import json
import os
import random
import sys

import sacrebleu
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "bleu")
SHARED = os.environ.get("LIT_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))
BIBLE = os.path.join(SHARED, "text", "bible-es-en")


def random_corpus(seed, n, refs):
    rng = random.Random(seed)
    words = "the a of and to in is was he she it said unto them , . ; : ? ! 's 3.5 1,000 10-20".split()
    def sentence():
        return " ".join(rng.choice(words) for _ in range(rng.randint(0, 14)))
    hyp = [sentence() for _ in range(n)]
    # references share most of their words with the hypothesis so that n-grams match
    out_refs = []
    for _ in range(refs):
        ref = []
        for h in hyp:
            toks = h.split()
            toks = [t if rng.random() < 0.7 else rng.choice(words) for t in toks]
            if rng.random() < 0.3:
                toks.append(rng.choice(words))
            ref.append(" ".join(toks))
        out_refs.append(ref)
    return hyp, out_refs


CASES = {
    "basic": (
        ["The cat sat on the mat.", "He said: \"Go home!\"", "It costs $3.50, not 4,00 euros."],
        [["The cat sat on the mat.", "He said, \"Go home now!\"", "It costs $3.50, not 4,00 euros."]],
    ),
    "multi_ref_short_hyp": (
        ["In the beginning God created", "And the earth was", "Let there be light"],
        [
            ["In the beginning, God created the heavens and the earth.",
             "The earth was formless and empty.",
             "God said, “Let there be light,” and there was light."],
            ["In the beginning God created the heaven and the earth.",
             "And the earth was without form, and void;",
             "And God said, Let there be light: and there was light."],
        ],
    ),
    "unicode_numbers": (
        ["¿Dónde está el niño? ¡Aquí!", "Él pagó 1.000,50 € — no 2-3 £.", "東京 は 大きい。",
         "A&amp;B &lt;tag&gt; &quot;q&quot; <skipped> x", "naïve café’s “quote” 10-20 3.14 1,5"],
        [["¿Dónde está el niño? ¡Aquí está!", "Él pagó 1.000,50 € y no 2-3 £.", "東京 は 大きい 。",
          "A & B <tag> \"q\" x", "naive café’s \"quote\" 10 - 20 3.14 1,5"]],
    ),
    "empty_lines": (
        ["", "a b c d e", "", "x y z", "same sentence here ."],
        [["something", "a b c d e f", "", "", "same sentence here ."],
         ["", "a b c", "also empty hyp", "x y z w", "same sentence here !"]],
    ),
    "zero_4gram": (
        ["one two three x four five six", "alpha beta gamma"],
        [["one two three y four five z six", "alpha beta delta gamma"]],
    ),
    "zero_3_4gram": (
        ["alpha beta gamma delta epsilon"],
        [["alpha beta q gamma delta r epsilon"]],
    ),
    "no_match": (
        ["foo bar", "baz"],
        [["completely different words", "nothing"]],
    ),
    "case_sensitive": (
        ["THE Lord Is My Shepherd .", "JEHOVÁ es mi pastor ; ÉL"],
        [["The LORD is my shepherd .", "Jehová es mi pastor ; él"]],
    ),
    "random_3refs": random_corpus(15, 60, 3),
    "random_1ref": random_corpus(16, 80, 1),
}
LOWERCASE_CASES = ["case_sensitive", "unicode_numbers"]

TRICKY_13A = [
    "", " ", "Hello, world.", "3.14 and 1,000 and 10-20 and -5 and 5- x", "a..b,,c", "end.", ".start",
    "U.S.A. e.g. i.e.", "$5.00/hr (approx.) [sic] {x} ~y^z_w `q` |p| \\ @ # % &", "&amp;&lt;&gt;&quot;&apos;",
    "&amp;amp; &", "line-\nbreak and\nnewline", "<skipped>gone<skipped>", "it's don't l'homme",
    "¿Qué? ¡Sí! «comillas» “curly” ‘single’ — – …", "tab\there\u00a0nbsp\u3000ideographic\u2028sep",
    "1.2.3 a.1 1.a 1,a a,1 1-a a-1 1--2", "x.,y ,.z 9.,8", "trailing space   ", "\u001fctl\u001cx",
]


def tokenize_samples():
    rng = random.Random(7)
    pool = list("aZ09.,-&;<>'\" \t{}[]$/€¿¡ñÉ\u00a0\u3000\n") + ["&amp;", "&lt;", "&quot;", "<skipped>", "-\n"]
    samples = ["".join(rng.choice(pool) for _ in range(rng.randint(0, 25))) for _ in range(300)]
    tok = Tokenizer13a()
    return [{"input": s, "output": tok(s)} for s in TRICKY_13A + samples]


def read_lines(path):
    with open(path, encoding="utf-8", newline="\n") as f:
        text = f.read()
    if text.endswith("\n"):
        text = text[:-1]
    return text.split("\n") if text or os.path.getsize(path) else []


def write_lines(path, lines):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(line + "\n" for line in lines))


def score(hyp, refs, lowercase):
    s = sacrebleu.corpus_bleu(hyp, refs, lowercase=lowercase)
    return {"score": s.score, "counts": s.counts, "totals": s.totals, "precisions": s.precisions,
            "bp": s.bp, "sys_len": s.sys_len, "ref_len": s.ref_len}


def case_scores():
    out = []
    for name in CASES:
        hyp_file = f"{name}.hyp"
        ref_files = sorted(f for f in os.listdir(OUT) if f.startswith(f"{name}.ref"))
        hyp = read_lines(os.path.join(OUT, hyp_file))
        refs = [read_lines(os.path.join(OUT, r)) for r in ref_files]
        for lowercase in [False, True] if name in LOWERCASE_CASES else [False]:
            out.append({"name": name, "hyp": hyp_file, "refs": ref_files, "lowercase": lowercase,
                        **score(hyp, refs, lowercase)})
    return out


def bible_scores():
    if not os.path.isdir(BIBLE):
        print(f"note: {BIBLE} not found, no Bible scores", file=sys.stderr)
        return []
    out = []
    for split, lines in [("test", 300), ("valid", None)]:
        hyp = read_lines(os.path.join(BIBLE, f"{split}.en-kjv"))[:lines]
        ref = read_lines(os.path.join(BIBLE, f"{split}.en"))[:lines]
        rev = list(reversed(ref))  # a second, poor reference: exercises the closest-length rule
        for refs, names in [([ref], [f"{split}.en"]), ([ref, rev], [f"{split}.en", f"{split}.en reversed"])]:
            out.append({"hyp": f"{split}.en-kjv", "refs": names, "lines": lines or len(hyp),
                        "lowercase": False, **score(hyp, refs, False)})
    return out


def main():
    if "--stdout" not in sys.argv:
        os.makedirs(OUT, exist_ok=True)
        for name, (hyp, refs) in CASES.items():
            write_lines(os.path.join(OUT, f"{name}.hyp"), hyp)
            for k, ref in enumerate(refs):
                write_lines(os.path.join(OUT, f"{name}.ref{k}"), ref)
    result = {"sacrebleu_version": sacrebleu.__version__, "cases": case_scores(),
              "tokenize_13a": tokenize_samples(), "bible": bible_scores()}
    text = json.dumps(result, ensure_ascii=False, indent=1)
    if "--stdout" in sys.argv:
        print(text)
    else:
        with open(os.path.join(OUT, "sacrebleu.json"), "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()

//! BLEU (src/nmt/bleu.rs) against the tools it reproduces: sacreBLEU 2.4.3's scores and 13a
//! tokenisation of made-up cases (tests/fixtures/bleu/, written by scripts/gen_bleu_fixtures.py;
//! also recomputed live when a Python with sacrebleu is found), Moses `multi-bleu.perl` on small
//! examples checked by hand and with the script, and the Bible corpus where ../shared/data is.

mod nmt_support;

use lit_engine::nmt::bleu::{
    multi_bleu, perplexity, sacrebleu, tokenize_13a, BleuScore, SacreBleuOptions,
};
use lit_engine::nmt::data::read_lines;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bleu")
}

fn lines(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Our score of one fixture entry (`hyp`, `refs`, `lowercase`) with the files under `dir`.
fn our_score(entry: &Value, dir: &Path, lines_limit: Option<usize>) -> BleuScore {
    let read = |name: &str| {
        let (file, reversed) = match name.strip_suffix(" reversed") {
            Some(f) => (f, true),
            None => (name, false),
        };
        let mut l = read_lines(&dir.join(file)).unwrap();
        l.truncate(lines_limit.unwrap_or(usize::MAX));
        if reversed {
            l.reverse();
        }
        l
    };
    let hyp = read(entry["hyp"].as_str().unwrap());
    let refs: Vec<Vec<String>> = entry["refs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| read(r.as_str().unwrap()))
        .collect();
    let lowercase = entry["lowercase"].as_bool().unwrap();
    sacrebleu(&hyp, &refs, SacreBleuOptions { lowercase }).unwrap()
}

/// Our score equals sacreBLEU's `entry`: printed with two decimals, to 1e-9, and every count.
fn assert_matches(what: &str, ours: &BleuScore, entry: &Value) {
    let want = entry["score"].as_f64().unwrap();
    assert_eq!(
        format!("{:.2}", ours.score),
        format!("{want:.2}"),
        "{what}: BLEU to two decimals"
    );
    assert!(
        (ours.score - want).abs() < 1e-9,
        "{what}: BLEU {} vs sacreBLEU {want}",
        ours.score
    );
    let ints = |k: &str| -> Vec<u64> {
        entry[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect()
    };
    assert_eq!(ours.correct.to_vec(), ints("counts"), "{what}: counts");
    assert_eq!(ours.total.to_vec(), ints("totals"), "{what}: totals");
    assert_eq!(ours.hyp_len, entry["sys_len"].as_u64().unwrap(), "{what}");
    assert_eq!(ours.ref_len, entry["ref_len"].as_u64().unwrap(), "{what}");
    assert!((ours.brevity_penalty - entry["bp"].as_f64().unwrap()).abs() < 1e-12);
    for (n, p) in entry["precisions"].as_array().unwrap().iter().enumerate() {
        assert!(
            (ours.precisions[n] - p.as_f64().unwrap()).abs() < 1e-9,
            "{what}: precision {n}"
        );
    }
}

/// Every case and 13a sample of a sacreBLEU result (the fixture or a live run) matches ours.
fn check_against(result: &Value, source: &str) {
    let cases = result["cases"].as_array().unwrap();
    assert!(cases.len() >= 10, "{source}: {} cases", cases.len());
    for case in cases {
        let what = format!(
            "{source} case {} lowercase={}",
            case["name"], case["lowercase"]
        );
        assert_matches(&what, &our_score(case, &fixture_dir(), None), case);
    }
    let samples = result["tokenize_13a"].as_array().unwrap();
    assert!(samples.len() > 300);
    for s in samples {
        let input = s["input"].as_str().unwrap();
        assert_eq!(
            tokenize_13a(input),
            s["output"].as_str().unwrap(),
            "{source}: 13a of {input:?}"
        );
    }
}

fn fixture() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("sacrebleu.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn sacrebleu_scores_and_13a_match_the_fixture() {
    let fixture = fixture();
    assert_eq!(fixture["sacrebleu_version"], "2.4.3");
    check_against(&fixture, "fixture");
}

/// The Python that has sacrebleu: `LIT_SACREBLEU_PYTHON`, the worktree's `.venv-bleu`, or
/// `python3`.
fn sacrebleu_python() -> Option<PathBuf> {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-bleu/bin/python");
    let candidates = std::env::var_os("LIT_SACREBLEU_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([venv, PathBuf::from("python3")]);
    candidates.into_iter().find(|py| {
        std::process::Command::new(py)
            .args(["-c", "import sacrebleu"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn sacrebleu_live_when_installed() {
    let Some(python) = sacrebleu_python() else {
        eprintln!(
            "NOTE: no Python with sacrebleu (set LIT_SACREBLEU_PYTHON); the committed fixture \
             is what sacrebleu_scores_and_13a_match_the_fixture compares with"
        );
        return;
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/gen_bleu_fixtures.py");
    let out = std::process::Command::new(&python)
        .arg(script)
        .arg("--stdout")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let live: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!(
        "live sacrebleu {} via {}",
        live["sacrebleu_version"],
        python.display()
    );
    check_against(&live, "live sacrebleu");
    // The committed fixture is what this sacreBLEU computes from the committed files.
    let fixture = fixture();
    for (a, b) in live["cases"]
        .as_array()
        .unwrap()
        .iter()
        .zip(fixture["cases"].as_array().unwrap())
    {
        assert_eq!(
            a["score"], b["score"],
            "fixture out of date for {}",
            a["name"]
        );
    }
}

/// KJV against WEB on the Bible corpus (skipped with a note when the data is not there).
#[test]
fn sacrebleu_on_the_bible_corpus() {
    let Some(bible) = nmt_support::bible_dir() else {
        return;
    };
    let entries = fixture()["bible"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 4);
    for entry in &entries {
        let limit = entry["lines"].as_u64().unwrap() as usize;
        let ours = our_score(entry, &bible, Some(limit));
        let what = format!("bible {} vs {}", entry["hyp"], entry["refs"]);
        eprintln!(
            "{what}: ours {:.4}, sacreBLEU {:.4}",
            ours.score,
            entry["score"].as_f64().unwrap()
        );
        assert_matches(&what, &ours, entry);
    }
}

// --- multi-bleu.perl. Each expected line is what the script printed on the same input. ---

fn moses_example() -> (Vec<String>, Vec<String>, Vec<String>) {
    (
        lines(&["The cat sat on the mat", "A Dog barks loudly today"]),
        lines(&["the cat is on the mat", "a dog barks loudly"]),
        lines(&["the cat sat on a mat", "my dog barks very loudly now"]),
    )
}

#[test]
fn multi_bleu_single_reference_by_hand() {
    let (hyp, ref0, _) = moses_example();
    // lowercased: 1-grams 9/11, 2-grams 6/9, 3-grams 3/7, 4-grams 1/5 (only "a dog barks
    // loudly"), 11 hypothesis words against 6 + 4 → BP 1, BLEU = (54/1155)^(1/4).
    let s = multi_bleu(&hyp, std::slice::from_ref(&ref0), true).unwrap();
    assert_eq!(s.correct, [9, 6, 3, 1]);
    assert_eq!(s.total, [11, 9, 7, 5]);
    assert!((s.score - 100.0 * (54.0f64 / 1155.0).powf(0.25)).abs() < 1e-9);
    assert_eq!(
        s.multi_bleu_line(),
        "BLEU = 46.50, 81.8/66.7/42.9/20.0 (BP=1.000, ratio=1.100, hyp_len=11, ref_len=10)"
    );
    // Cased: "The", "A", "Dog" no longer match and no 4-gram does, so BLEU is 0.
    let cased = multi_bleu(&hyp, &[ref0], false).unwrap();
    assert_eq!(
        cased.multi_bleu_line(),
        "BLEU = 0.00, 54.5/33.3/14.3/0.0 (BP=1.000, ratio=1.100, hyp_len=11, ref_len=10)"
    );
}

#[test]
fn multi_bleu_two_references_clip_and_closest_length() {
    let (hyp, ref0, ref1) = moses_example();
    // The second reference adds "cat sat", "sat on", "the cat sat", "cat sat on", "the cat sat
    // on". Sentence 2 is 5 words against references of 4 and 6: equally close, the shorter
    // counts, so ref_len = 6 + 4 (a first-or-longer rule gives 12 and BP < 1).
    let s = multi_bleu(&hyp, &[ref0.clone(), ref1.clone()], true).unwrap();
    // The longer reference first: still the shorter of the two counts (not the first).
    assert_eq!(multi_bleu(&hyp, &[ref1, ref0], true).unwrap(), s);
    assert_eq!(s.correct, [10, 8, 5, 2]);
    assert_eq!(s.ref_len, 10);
    assert!(
        (s.score - 100.0 * (10.0f64 / 11.0 * 8.0 / 9.0 * 5.0 / 7.0 * 2.0 / 5.0).powf(0.25)).abs()
            < 1e-9
    );
    assert_eq!(
        s.multi_bleu_line(),
        "BLEU = 69.32, 90.9/88.9/71.4/40.0 (BP=1.000, ratio=1.100, hyp_len=11, ref_len=10)"
    );
}

#[test]
fn multi_bleu_brevity_penalty_and_byte_lowercasing() {
    let s = multi_bleu(
        &lines(&["the cat"]),
        &[lines(&["the cat sat on the mat"])],
        true,
    )
    .unwrap();
    assert!((s.brevity_penalty - (-2.0f64).exp()).abs() < 1e-15);
    assert_eq!(
        s.multi_bleu_line(),
        "BLEU = 0.00, 100.0/100.0/0.0/0.0 (BP=0.135, ratio=0.333, hyp_len=2, ref_len=6)"
    );
    // The script reads bytes: -lc lowercases ASCII only, "ÉL" becomes "Él", not "él".
    let s = multi_bleu(&lines(&["ÉL dijo Él"]), &[lines(&["él dijo él"])], true).unwrap();
    assert_eq!(s.correct[0], 1);
    // and splits on ASCII white space only: a no-break space joins two words.
    let s = multi_bleu(&lines(&["a\u{a0}b c"]), &[lines(&["a b c"])], false).unwrap();
    assert_eq!((s.hyp_len, s.correct[0]), (2, 1));
}

#[test]
fn streams_of_other_lengths_are_errors() {
    let hyp = lines(&["a", "b"]);
    assert!(multi_bleu(&hyp, &[lines(&["a"])], true).is_err());
    assert!(sacrebleu(&hyp, &[], SacreBleuOptions::default()).is_err());
}

#[test]
fn perplexity_as_onmt_statistics() {
    assert!((perplexity(20.0, 10).unwrap() - 2.0f64.exp()).abs() < 1e-12);
    assert_eq!(perplexity(1e9, 1).unwrap(), 100.0f64.exp());
    assert!(perplexity(1.0, 0).is_err());
}

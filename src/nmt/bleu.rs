//! Corpus BLEU two ways, and perplexity (SPEC-TRANSLATION §4.4).
//!
//! * [`multi_bleu`]: Moses `multi-bleu.perl [-lc]`, what the seed reports: the text's own
//!   whitespace tokens (Perl's `split` on ASCII white space), `-lc` lowercasing ASCII letters only
//!   (the script reads bytes), BLEU-4 with clipped counts, the brevity penalty from the closest
//!   reference length (the shorter on a tie), `log 0` as −9999999999.
//! * [`sacrebleu`]: sacreBLEU 2.x `corpus_bleu` with its defaults: the `13a` tokenizer
//!   ([`tokenize_13a`]), mixed case (lowercasing optional), `exp` smoothing, no effective order.
//!
//! Both take the hypotheses and one or several reference streams, each with one line per
//! hypothesis. Scores are percentages as the tools print them.

use super::data::is_python_space;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The largest n-gram order (BLEU-4).
const MAX_ORDER: usize = 4;

/// A corpus BLEU score and the statistics it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct BleuScore {
    /// BLEU in percent (what the tools print with two decimals).
    pub score: f64,
    /// Clipped n-gram matches for n = 1..=4.
    pub correct: [u64; MAX_ORDER],
    /// Hypothesis n-grams for n = 1..=4.
    pub total: [u64; MAX_ORDER],
    /// n-gram precisions in percent (sacreBLEU's smoothed ones for [`sacrebleu`]).
    pub precisions: [f64; MAX_ORDER],
    /// The brevity penalty.
    pub brevity_penalty: f64,
    /// Hypothesis tokens.
    pub hyp_len: u64,
    /// Reference tokens (the closest reference of each sentence).
    pub ref_len: u64,
}

impl BleuScore {
    /// The line `multi-bleu.perl` prints for this score.
    pub fn multi_bleu_line(&self) -> String {
        let p = self.precisions;
        let ratio = if self.ref_len == 0 {
            0.0
        } else {
            self.hyp_len as f64 / self.ref_len as f64
        };
        format!(
            "BLEU = {:.2}, {:.1}/{:.1}/{:.1}/{:.1} (BP={:.3}, ratio={ratio:.3}, hyp_len={}, ref_len={})",
            self.score, p[0], p[1], p[2], p[3], self.brevity_penalty, self.hyp_len, self.ref_len
        )
    }
}

/// Corpus counts summed over sentences.
#[derive(Default)]
struct Counts {
    correct: [u64; MAX_ORDER],
    total: [u64; MAX_ORDER],
    hyp_len: u64,
    ref_len: u64,
}

/// How the two tools pick the reference length of a sentence: the closest to the hypothesis, the
/// shorter of two equally close. Moses starts from a distance and length of 9999 (so a reference
/// 9999 or more tokens away is never picked), sacreBLEU from the first reference.
#[derive(Clone, Copy)]
enum ClosestRule {
    Moses,
    Sacre,
}

fn closest_ref_len(hyp_len: usize, ref_lens: &[usize], rule: ClosestRule) -> usize {
    let mut best: Option<(usize, usize)> = match rule {
        ClosestRule::Moses => Some((9999, 9999)),
        ClosestRule::Sacre => None,
    };
    for &len in ref_lens {
        let diff = hyp_len.abs_diff(len);
        best = match best {
            Some((d, l)) if diff > d || (diff == d && len >= l) => Some((d, l)),
            _ => Some((diff, len)),
        };
    }
    best.map_or(0, |(_, l)| l)
}

/// Each n-gram of `words` (n = 1..=4) with its count.
fn ngram_counts<'a>(words: &'a [&'a str]) -> HashMap<&'a [&'a str], u64> {
    let mut counts = HashMap::new();
    for n in 1..=MAX_ORDER {
        for gram in words.windows(n) {
            *counts.entry(gram).or_default() += 1;
        }
    }
    counts
}

impl Counts {
    /// Add one sentence: `hyp` against the references `refs`, clipping each n-gram's matches at
    /// its largest count in any one reference.
    fn add(&mut self, hyp: &[&str], refs: &[Vec<&str>], rule: ClosestRule) {
        let mut ref_max: HashMap<&[&str], u64> = HashMap::new();
        for r in refs {
            for (gram, count) in ngram_counts(r) {
                let slot = ref_max.entry(gram).or_default();
                *slot = (*slot).max(count);
            }
        }
        for (gram, count) in ngram_counts(hyp) {
            let n = gram.len() - 1;
            self.total[n] += count;
            self.correct[n] += count.min(ref_max.get(gram).copied().unwrap_or(0));
        }
        let ref_lens: Vec<usize> = refs.iter().map(Vec::len).collect();
        self.hyp_len += hyp.len() as u64;
        self.ref_len += closest_ref_len(hyp.len(), &ref_lens, rule) as u64;
    }
}

/// `hyps` and `refs` (reference streams) checked to have the same number of lines.
fn check_streams(what: &str, hyps: &[String], refs: &[Vec<String>]) -> Result<()> {
    if refs.is_empty() {
        return Err(Error::op_arg(what, "no reference stream"));
    }
    for (k, r) in refs.iter().enumerate() {
        if r.len() != hyps.len() {
            return Err(Error::op_arg(
                what,
                format!(
                    "reference stream {k} has {} lines for {} hypotheses",
                    r.len(),
                    hyps.len()
                ),
            ));
        }
    }
    Ok(())
}

/// Counts of the corpus once each line is turned into tokens by `tokens`.
fn corpus_counts(
    hyps: &[String],
    refs: &[Vec<String>],
    tokens: impl Fn(&str) -> Vec<String>,
    rule: ClosestRule,
) -> Counts {
    let mut counts = Counts::default();
    for (i, hyp) in hyps.iter().enumerate() {
        let hyp_tokens = tokens(hyp);
        let ref_tokens: Vec<Vec<String>> = refs.iter().map(|r| tokens(&r[i])).collect();
        let hyp_words: Vec<&str> = hyp_tokens.iter().map(String::as_str).collect();
        let ref_words: Vec<Vec<&str>> = ref_tokens
            .iter()
            .map(|r| r.iter().map(String::as_str).collect())
            .collect();
        counts.add(&hyp_words, &ref_words, rule);
    }
    counts
}

/// `log(x)`, or −9999999999 for 0, as both tools floor it.
fn floored_log(x: f64) -> f64 {
    if x == 0.0 {
        -9_999_999_999.0
    } else {
        x.ln()
    }
}

/// Corpus BLEU as Moses `multi-bleu.perl` computes it (with `-lc` when `lowercase`), over the
/// hypotheses `hyps` and the reference streams `refs` (each line as the script's `chop` leaves it,
/// that is without its line end). Where the script stops without a score (no reference token:
/// it prints `BLEU = 0`; no hypothesis token: it dies dividing by zero) the score is 0.
pub fn multi_bleu(hyps: &[String], refs: &[Vec<String>], lowercase: bool) -> Result<BleuScore> {
    check_streams("multi_bleu", hyps, refs)?;
    let tokens = |line: &str| {
        let line = if lowercase {
            line.to_ascii_lowercase()
        } else {
            line.to_string()
        };
        line.split([' ', '\t', '\n', '\u{b}', '\u{c}', '\r'])
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect()
    };
    let c = corpus_counts(hyps, refs, tokens, ClosestRule::Moses);
    let precisions: [f64; MAX_ORDER] = std::array::from_fn(|n| match c.total[n] {
        0 => 0.0,
        total => c.correct[n] as f64 / total as f64,
    });
    let (score, brevity_penalty) = if c.ref_len == 0 || c.hyp_len == 0 {
        (0.0, 0.0)
    } else {
        let bp = if c.hyp_len < c.ref_len {
            (1.0 - c.ref_len as f64 / c.hyp_len as f64).exp()
        } else {
            1.0
        };
        let log_sum: f64 = precisions.iter().map(|&p| floored_log(p)).sum();
        (100.0 * bp * (log_sum / MAX_ORDER as f64).exp(), bp)
    };
    Ok(BleuScore {
        score,
        correct: c.correct,
        total: c.total,
        precisions: precisions.map(|p| 100.0 * p),
        brevity_penalty,
        hyp_len: c.hyp_len,
        ref_len: c.ref_len,
    })
}

/// Whether sacreBLEU's first `13a` rule puts spaces around `c`: the ASCII punctuation and symbols
/// `{|}~ [\]^_` space !"#$%& ()*+ :;<=>?@ /` (not `'`, `-`, `.`, `,`).
fn is_13a_symbol(c: char) -> bool {
    matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/')
}

/// Python's `re.sub` of a two-character pattern `(a)(b)` over `chars`, left to right without
/// overlaps: each match `a b` becomes `replace(a, b)`.
fn sub_pairs(
    chars: &[char],
    matches: impl Fn(char, char) -> bool,
    replace: impl Fn(char, char, &mut Vec<char>),
) -> Vec<char> {
    let mut out = Vec::with_capacity(chars.len() + chars.len() / 2);
    let mut i = 0;
    while i < chars.len() {
        if i + 1 < chars.len() && matches(chars[i], chars[i + 1]) {
            replace(chars[i], chars[i + 1], &mut out);
            i += 2;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// sacreBLEU's `13a` tokenizer (mteval-v13a): `<skipped>` removed, `-\n` joined, `\n` a space,
/// the entities `&quot; &amp; &lt; &gt;` decoded, spaces around ASCII symbols, around `.` and
/// `,` except between digits, after `-` that follows a digit; white space collapsed.
pub fn tokenize_13a(line: &str) -> String {
    let mut line = line
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let mut chars = Vec::with_capacity(line.len() + 2);
    chars.push(' ');
    for c in line.chars() {
        if is_13a_symbol(c) {
            chars.extend([' ', c, ' ']);
        } else {
            chars.push(c);
        }
    }
    chars.push(' ');
    let is_digit = |c: char| c.is_ascii_digit();
    let is_point = |c: char| c == '.' || c == ',';
    let chars = sub_pairs(
        &chars,
        |a, b| !is_digit(a) && is_point(b),
        |a, b, out| out.extend([a, ' ', b, ' ']),
    );
    let chars = sub_pairs(
        &chars,
        |a, b| is_point(a) && !is_digit(b),
        |a, b, out| out.extend([' ', a, ' ', b]),
    );
    let chars = sub_pairs(
        &chars,
        |a, b| is_digit(a) && b == '-',
        |a, b, out| out.extend([a, ' ', b, ' ']),
    );
    let text: String = chars.into_iter().collect();
    let words: Vec<&str> = text
        .split(is_python_space)
        .filter(|w| !w.is_empty())
        .collect();
    words.join(" ")
}

/// Options of [`sacrebleu`]; the default is sacreBLEU's (`-tok 13a -s exp`, mixed case).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SacreBleuOptions {
    /// Lowercase hypotheses and references first (`-lc`; Unicode rules, as Python's `lower`).
    pub lowercase: bool,
}

/// Corpus BLEU as sacreBLEU 2.x `corpus_bleu(hyps, refs)` computes it with `options` (each
/// segment lowercased if asked, right-stripped, `13a`-tokenised; exponential smoothing of zero
/// precisions; score 0 when nothing matches).
pub fn sacrebleu(
    hyps: &[String],
    refs: &[Vec<String>],
    options: SacreBleuOptions,
) -> Result<BleuScore> {
    check_streams("sacrebleu", hyps, refs)?;
    let tokens = |line: &str| {
        let line = if options.lowercase {
            line.to_lowercase()
        } else {
            line.to_string()
        };
        tokenize_13a(line.trim_end_matches(is_python_space))
            .split(' ')
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect()
    };
    let c = corpus_counts(hyps, refs, tokens, ClosestRule::Sacre);
    let brevity_penalty = if c.hyp_len >= c.ref_len {
        1.0
    } else if c.hyp_len > 0 {
        (1.0 - c.ref_len as f64 / c.hyp_len as f64).exp()
    } else {
        0.0
    };
    let mut precisions = [0.0; MAX_ORDER];
    let mut score = 0.0;
    if c.correct.iter().any(|&m| m > 0) {
        let mut smooth = 1.0;
        // sacreBLEU stops at the first order without any hypothesis n-gram (its precision
        // and the later ones stay 0).
        for (n, precision) in precisions.iter_mut().enumerate() {
            let (correct, total) = (c.correct[n], c.total[n]);
            if total == 0 {
                break;
            }
            *precision = if correct == 0 {
                smooth *= 2.0;
                100.0 / (smooth * total as f64)
            } else {
                100.0 * correct as f64 / total as f64
            };
        }
        let log_sum: f64 = precisions.iter().map(|&p| floored_log(p)).sum();
        score = brevity_penalty * (log_sum / MAX_ORDER as f64).exp();
    }
    Ok(BleuScore {
        score,
        correct: c.correct,
        total: c.total,
        precisions,
        brevity_penalty,
        hyp_len: c.hyp_len,
        ref_len: c.ref_len,
    })
}

/// Score the file `hypotheses` against the line-aligned `references` files (each read at most
/// a corpus file's size): `multi-bleu.perl -lc` and sacreBLEU with its defaults.
pub fn score_files(hypotheses: &Path, references: &[PathBuf]) -> Result<(BleuScore, BleuScore)> {
    let hyps = crate::nmt::data::read_lines(hypotheses)?;
    let mut refs = Vec::with_capacity(references.len());
    for path in references {
        let lines = crate::nmt::data::read_lines(path)?;
        if lines.len() != hyps.len() {
            return Err(Error::data(
                path,
                format!(
                    "{} reference lines for {} hypotheses in {}",
                    lines.len(),
                    hyps.len(),
                    hypotheses.display()
                ),
            ));
        }
        refs.push(lines);
    }
    let mb = multi_bleu(&hyps, &refs, true)?;
    let sb = sacrebleu(&hyps, &refs, SacreBleuOptions::default())?;
    Ok((mb, sb))
}

/// Perplexity from the summed negative log-likelihood (natural log) of `tokens` target tokens,
/// as the seed's `Statistics.ppl()`: `exp(min(nll / tokens, 100))`. No token is an argument error.
pub fn perplexity(nll_sum: f64, tokens: u64) -> Result<f64> {
    if tokens == 0 {
        return Err(Error::op_arg(
            "perplexity",
            "no target token: perplexity is undefined",
        ));
    }
    Ok((nll_sum / tokens as f64).min(100.0).exp())
}

//! Corpus BLEU and chrF as sacreBLEU computes them (its defaults: BLEU with the `13a`
//! tokenizer, or `zh` for Chinese targets, exponential smoothing, up to 4-grams; chrF with
//! character n-grams up to 6, β = 2, whitespace ignored), on 0–100, one reference per
//! hypothesis.

use regex::Regex;
use std::collections::HashMap;
use std::sync::OnceLock;

/// How sentences are split into words before n-grams are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BleuTokenize {
    /// sacreBLEU's default (mteval-v13a): punctuation split off, except `.`/`,` between
    /// digits and `-` not after a digit.
    Mteval13a,
    /// sacreBLEU's `zh`: every Chinese character a word, the rest as `13a`'s regular
    /// expressions split it.
    Zh,
}

impl BleuTokenize {
    /// `zh` when most references' characters are CJK, else `13a` (what sacreBLEU users pick
    /// for Chinese targets).
    pub fn for_refs(refs: &[String]) -> Self {
        let (mut cjk, mut all) = (0usize, 0usize);
        for r in refs {
            for c in r.chars().filter(|c| !c.is_whitespace()) {
                all += 1;
                cjk += usize::from(is_chinese_char(c));
            }
        }
        if all > 0 && cjk * 2 > all {
            BleuTokenize::Zh
        } else {
            BleuTokenize::Mteval13a
        }
    }

    /// The words of one sentence.
    pub fn tokenize(self, s: &str) -> String {
        match self {
            BleuTokenize::Mteval13a => {
                let mut line = s
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
                regexp_tokenize(&format!(" {line} "))
            }
            BleuTokenize::Zh => {
                let mut spaced = String::with_capacity(s.len() * 2);
                for c in s.trim_matches(is_py_space).chars() {
                    if is_chinese_char(c) {
                        spaced.push(' ');
                        spaced.push(c);
                        spaced.push(' ');
                    } else {
                        spaced.push(c);
                    }
                }
                regexp_tokenize(&spaced)
            }
        }
    }
}

/// mteval-v13a's regular expressions (sacreBLEU's `TokenizerRegexp`), applied in order.
fn regexp_tokenize(line: &str) -> String {
    static RULES: OnceLock<Vec<(Regex, &'static str)>> = OnceLock::new();
    let rules = RULES.get_or_init(|| {
        [
            // ASCII punctuation except ' , - . (and the digits and letters between)
            (r"([\{-\~\[-` -\&\(-\+:-@/])", " $1 "),
            // period and comma unless preceded by a digit
            (r"([^0-9])([\.,])", "$1 $2 "),
            // period and comma unless followed by a digit
            (r"([\.,])([^0-9])", " $1 $2"),
            // dash when preceded by a digit
            (r"([0-9])(-)", "$1 $2 "),
        ]
        .into_iter()
        // Fixed patterns: a failure is a bug in this file, caught by its tests.
        .map(|(re, rep)| (Regex::new(re).expect("13a pattern compiles"), rep))
        .collect()
    });
    let mut s = line.to_string();
    for (re, rep) in rules {
        s = re.replace_all(&s, *rep).into_owned();
    }
    py_split(&s).collect::<Vec<_>>().join(" ")
}

/// Python's whitespace (`str.split()`, `strip()`): Unicode whitespace and U+001C..U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.split()`.
fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|w| !w.is_empty())
}

/// sacreBLEU's `zh` test for a Chinese character. Its table writes two ranges as `'\u20000'`
/// and `'\u2f800'`, which Python reads as two-character strings; compared with one character
/// they act as U+2001..=U+2A6D and U+2F81..=U+2FA1 — kept here, since scores must agree.
pub fn is_chinese_char(c: char) -> bool {
    const RANGES: &[(u32, u32)] = &[
        (0x3400, 0x4db5),
        (0x4e00, 0x9fa5),
        (0x9fa6, 0x9fbb),
        (0xf900, 0xfa2d),
        (0xfa30, 0xfa6a),
        (0xfa70, 0xfad9),
        (0x2001, 0x2a6d),
        (0x2f81, 0x2fa1),
        (0xff00, 0xffef),
        (0x2e80, 0x2eff),
        (0x3000, 0x303f),
        (0x31c0, 0x31ef),
        (0x2f00, 0x2fdf),
        (0x2ff0, 0x2fff),
        (0x3100, 0x312f),
        (0x31a0, 0x31bf),
        (0xfe10, 0xfe1f),
        (0xfe30, 0xfe4f),
        (0x2600, 0x26ff),
        (0x2700, 0x27bf),
        (0x3200, 0x32ff),
        (0x3300, 0x33ff),
    ];
    let u = c as u32;
    RANGES.iter().any(|&(a, b)| a <= u && u <= b)
}

fn ngrams<'a>(words: &'a [&'a str], n: usize) -> HashMap<&'a [&'a str], usize> {
    let mut m = HashMap::new();
    if words.len() >= n {
        for i in 0..=words.len() - n {
            *m.entry(&words[i..i + n]).or_insert(0) += 1;
        }
    }
    m
}

/// Corpus BLEU with its statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct Bleu {
    /// The score, 0–100.
    pub score: f64,
    /// Matching n-grams, n = 1..4.
    pub correct: [usize; 4],
    /// Hypothesis n-grams, n = 1..4.
    pub total: [usize; 4],
    /// n-gram precisions (after smoothing), 0–100.
    pub precisions: [f64; 4],
    /// Brevity penalty.
    pub bp: f64,
    /// Hypothesis words.
    pub sys_len: usize,
    /// Reference words.
    pub ref_len: usize,
}

/// Corpus BLEU of `hyps` against one reference each (sacreBLEU `corpus_bleu`, exponential
/// smoothing).
pub fn corpus_bleu(hyps: &[String], refs: &[String], tok: BleuTokenize) -> Bleu {
    let mut correct = [0usize; 4];
    let mut total = [0usize; 4];
    let (mut sys_len, mut ref_len) = (0usize, 0usize);
    for (h, r) in hyps.iter().zip(refs) {
        // sacreBLEU tokenizes each segment with trailing whitespace removed.
        let (ht, rt) = (
            tok.tokenize(h.trim_end_matches(is_py_space)),
            tok.tokenize(r.trim_end_matches(is_py_space)),
        );
        let hw: Vec<&str> = py_split(&ht).collect();
        let rw: Vec<&str> = py_split(&rt).collect();
        sys_len += hw.len();
        ref_len += rw.len();
        for n in 1..=4 {
            let hn = ngrams(&hw, n);
            let rn = ngrams(&rw, n);
            total[n - 1] += hw.len().saturating_sub(n - 1);
            for (g, c) in hn {
                correct[n - 1] += c.min(rn.get(g).copied().unwrap_or(0));
            }
        }
    }
    let mut precisions = [0.0f64; 4];
    let bp = if sys_len < ref_len {
        if sys_len > 0 {
            (1.0 - ref_len as f64 / sys_len as f64).exp()
        } else {
            0.0
        }
    } else {
        1.0
    };
    if correct.iter().all(|&c| c == 0) {
        return Bleu {
            score: 0.0,
            correct,
            total,
            precisions,
            bp,
            sys_len,
            ref_len,
        };
    }
    let mut smooth = 1.0f64;
    for n in 0..4 {
        if total[n] == 0 {
            break;
        }
        precisions[n] = if correct[n] == 0 {
            smooth *= 2.0;
            100.0 / (smooth * total[n] as f64)
        } else {
            100.0 * correct[n] as f64 / total[n] as f64
        };
    }
    // sacreBLEU's log(0) is -9999999999: a missing order drives the score to 0.
    let log = |p: f64| if p == 0.0 { -9_999_999_999.0 } else { p.ln() };
    let score = bp * (precisions.iter().map(|&p| log(p)).sum::<f64>() / 4.0).exp();
    Bleu {
        score,
        correct,
        total,
        precisions,
        bp,
        sys_len,
        ref_len,
    }
}

fn char_ngrams(s: &str, n: usize) -> HashMap<&str, usize> {
    let idx: Vec<usize> = s.char_indices().map(|(i, _)| i).chain([s.len()]).collect();
    let mut m = HashMap::new();
    let chars = idx.len() - 1;
    if chars >= n {
        for i in 0..=chars - n {
            *m.entry(&s[idx[i]..idx[i + n]]).or_insert(0) += 1;
        }
    }
    m
}

/// Corpus chrF (sacreBLEU `corpus_chrf` defaults: character n-grams 1..6, β = 2, whitespace
/// removed): n-gram statistics summed over the corpus, precision and recall averaged over the
/// orders that have n-grams on both sides, then F-β; 0–100.
pub fn corpus_chrf(hyps: &[String], refs: &[String]) -> f64 {
    const ORDER: usize = 6;
    let beta2 = 4.0f64;
    // (hypothesis n-grams, reference n-grams, matches) per order
    let mut stats = [(0usize, 0usize, 0usize); ORDER];
    for (h, r) in hyps.iter().zip(refs) {
        let h: String = py_split(h).collect();
        let r: String = py_split(r).collect();
        for (n, st) in stats.iter_mut().enumerate() {
            let hn = char_ngrams(&h, n + 1);
            let rn = char_ngrams(&r, n + 1);
            // sacreBLEU counts a sentence's hypothesis n-grams only when its reference has
            // n-grams of that order.
            if !rn.is_empty() {
                st.0 += hn.values().sum::<usize>();
            }
            st.1 += rn.values().sum::<usize>();
            st.2 += hn
                .iter()
                .map(|(g, c)| (*c).min(rn.get(g).copied().unwrap_or(0)))
                .sum::<usize>();
        }
    }
    let (mut p, mut r, mut k) = (0.0f64, 0.0f64, 0usize);
    for &(nh, nr, nm) in &stats {
        if nh > 0 && nr > 0 {
            p += nm as f64 / nh as f64;
            r += nm as f64 / nr as f64;
            k += 1;
        }
    }
    if k == 0 {
        return 0.0;
    }
    let (p, r) = (p / k as f64, r / k as f64);
    if p + r == 0.0 {
        return 0.0;
    }
    100.0 * (1.0 + beta2) * p * r / (beta2 * p + r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn tokenizers_split_as_mteval() {
        let t = BleuTokenize::Mteval13a;
        assert_eq!(t.tokenize("Hello, world."), "Hello , world .");
        assert_eq!(
            t.tokenize("It costs 1,000.50 (approx)."),
            "It costs 1,000.50 ( approx ) ."
        );
        assert_eq!(
            t.tokenize("state-of-the-art 1990-1995"),
            "state-of-the-art 1990 - 1995"
        );
        assert_eq!(t.tokenize("don't &quot;x&quot;"), "don't \" x \"");
        assert_eq!(
            BleuTokenize::Zh.tokenize("我有3个iPhone。"),
            "我 有 3 个 iPhone 。"
        );
    }

    #[test]
    fn identical_is_100_and_disjoint_is_0() {
        let a = v(&["the cat sat on the mat ."]);
        let b = corpus_bleu(&a, &a, BleuTokenize::Mteval13a);
        assert!((b.score - 100.0).abs() < 1e-9);
        assert!((corpus_chrf(&a, &a) - 100.0).abs() < 1e-9);
        let c = corpus_bleu(&v(&["dogs run"]), &a, BleuTokenize::Mteval13a);
        assert!(c.score < 1e-6);
    }
}

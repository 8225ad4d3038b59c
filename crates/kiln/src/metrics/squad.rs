//! SQuAD exact match and F1 as the official evaluation scripts (v1.1 and v2.0) compute them:
//! answers normalized (lower case, ASCII punctuation removed, the articles a/an/the removed,
//! whitespace collapsed), token-overlap F1 over whitespace tokens, the best over the gold
//! answers, averaged and reported on 0–100. An empty gold list means "no answer": only an empty
//! prediction scores.

use std::collections::HashMap;

/// The official answer normalization: lower case, ASCII punctuation removed, the words a/an/the
/// removed (as the regex `\b(a|an|the)\b` does: runs of word characters), whitespace collapsed.
pub fn normalize(s: &str) -> String {
    let text: String = s
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(c) = rest.chars().next() {
        if word(c) {
            let end = rest.find(|c: char| !word(c)).unwrap_or(rest.len());
            let run = &rest[..end];
            out.push_str(if matches!(run, "a" | "an" | "the") {
                " "
            } else {
                run
            });
            rest = &rest[end..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Exact match of one prediction against one gold answer (0 or 1).
pub fn exact(pred: &str, gold: &str) -> f64 {
    f64::from(u8::from(normalize(pred) == normalize(gold)))
}

/// Token-overlap F1 of one prediction against one gold answer (0–1).
pub fn f1(pred: &str, gold: &str) -> f64 {
    let p = normalize(pred);
    let g = normalize(gold);
    let pt: Vec<&str> = p.split_whitespace().collect();
    let gt: Vec<&str> = g.split_whitespace().collect();
    if pt.is_empty() || gt.is_empty() {
        // v2.0: F1 is 1 when both are empty (no answer), else 0.
        return f64::from(u8::from(pt == gt));
    }
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for t in &gt {
        *counts.entry(t).or_default() += 1;
    }
    let mut common = 0i64;
    for t in &pt {
        if let Some(c) = counts.get_mut(t) {
            if *c > 0 {
                *c -= 1;
                common += 1;
            }
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / pt.len() as f64;
    let recall = common as f64 / gt.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// (exact match, F1) of a prediction against its gold answers: the best over them; with no gold
/// answers, the question is unanswerable and only `""` is right.
pub fn score(pred: &str, golds: &[String]) -> (f64, f64) {
    if golds.is_empty() {
        let right = f64::from(u8::from(normalize(pred).is_empty()));
        return (right, right);
    }
    golds.iter().fold((0.0f64, 0.0f64), |(e, f), g| {
        (e.max(exact(pred, g)), f.max(f1(pred, g)))
    })
}

/// Corpus exact match and F1 (0–100) of `(prediction, gold answers)` pairs.
pub fn corpus_scores<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [String])>) -> (f64, f64) {
    let (mut e, mut f, mut n) = (0.0, 0.0, 0usize);
    for (pred, golds) in pairs {
        let (a, b) = score(pred, golds);
        e += a;
        f += b;
        n += 1;
    }
    if n == 0 {
        return (0.0, 0.0);
    }
    (100.0 * e / n as f64, 100.0 * f / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_follows_the_official_script() {
        assert_eq!(normalize("The  Eiffel Tower!"), "eiffel tower");
        assert_eq!(normalize("an apple, a pear"), "apple pear");
        assert_eq!(normalize("Theory"), "theory");
        assert_eq!(normalize("1,000"), "1000");
        // Articles go wherever a word boundary marks them, as with the regex.
        assert_eq!(normalize("the—x"), "—x");
    }

    #[test]
    fn f1_counts_shared_tokens_once() {
        // pred "the cat the cat" -> [cat, cat]; gold "cat sat" -> [cat, sat]: 1 common.
        let v = f1("the cat the cat", "cat sat");
        assert!((v - 0.5).abs() < 1e-12, "{v}");
        assert_eq!(f1("Paris", "paris."), 1.0);
        assert_eq!(f1("", "Paris"), 0.0);
        assert_eq!(f1("", ""), 1.0);
    }

    #[test]
    fn best_over_golds_and_no_answer() {
        let golds = vec!["Denver Broncos".to_string(), "the Broncos".to_string()];
        let (e, f) = score("Broncos", &golds);
        assert_eq!(e, 1.0);
        assert_eq!(f, 1.0);
        assert_eq!(score("", &[]), (1.0, 1.0));
        assert_eq!(score("x", &[]), (0.0, 0.0));
        let golds2 = ["x".to_string()];
        let (em, f1v) = corpus_scores([("Broncos", &golds[..]), ("y", &golds2[..])]);
        assert_eq!(em, 50.0);
        assert_eq!(f1v, 50.0);
    }
}

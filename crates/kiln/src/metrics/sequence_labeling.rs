//! Entity-level precision, recall and F1 for BIO / IOB2 (and IOBES) tag sequences with the
//! semantics of seqeval's default mode (the conlleval rules): an `I-` after `O` or after
//! another type starts an entity; sentences never share an entity. Also token accuracy.

use std::collections::HashSet;

/// An entity: (type, first token, last token), token indices over the concatenated sentences.
pub type Entity = (String, usize, usize);

fn split(tag: &str) -> (char, &str) {
    if tag == "O" || tag.is_empty() {
        return ('O', "");
    }
    match tag.split_once(['-', '_']) {
        Some((p, t)) if p.len() == 1 => (p.chars().next().unwrap_or('O'), t),
        _ => ('I', tag),
    }
}

fn ends(prev: char, tag: char, prev_type: &str, ty: &str) -> bool {
    matches!(
        (prev, tag),
        ('E', _)
            | ('S', _)
            | ('B', 'B')
            | ('B', 'S')
            | ('B', 'O')
            | ('I', 'B')
            | ('I', 'S')
            | ('I', 'O')
    ) || (prev != 'O' && prev_type != ty)
}

fn starts(prev: char, tag: char, prev_type: &str, ty: &str) -> bool {
    matches!(
        (prev, tag),
        (_, 'B')
            | (_, 'S')
            | ('E', 'E')
            | ('E', 'I')
            | ('S', 'E')
            | ('S', 'I')
            | ('O', 'E')
            | ('O', 'I')
    ) || (tag != 'O' && prev_type != ty)
}

/// The entities of a list of sentences' tags.
pub fn entities<S: AsRef<str>>(sentences: &[Vec<S>]) -> Vec<Entity> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    for sent in sentences {
        let (mut prev, mut prev_type) = ('O', String::new());
        let mut begin = 0usize;
        // A trailing "O" closes the last entity of each sentence.
        let n = sent.len();
        let closed = sent.iter().map(|t| split(t.as_ref())).chain([('O', "")]);
        for (i, (tag, ty)) in closed.enumerate() {
            if ends(prev, tag, &prev_type, ty) && prev != 'O' {
                out.push((prev_type.clone(), pos + begin, pos + i - 1));
            }
            if starts(prev, tag, &prev_type, ty) {
                begin = i;
            }
            prev = tag;
            prev_type = ty.to_string();
        }
        pos += n + 1;
    }
    out
}

/// Micro-averaged entity precision, recall and F1 (each 0–1; 0 when undefined), seqeval's
/// `classification_report` "micro avg" row.
pub fn entity_prf<S: AsRef<str>>(gold: &[Vec<S>], pred: &[Vec<S>]) -> (f64, f64, f64) {
    let g: HashSet<Entity> = entities(gold).into_iter().collect();
    let p: HashSet<Entity> = entities(pred).into_iter().collect();
    let tp = g.intersection(&p).count() as f64;
    let precision = if p.is_empty() {
        0.0
    } else {
        tp / p.len() as f64
    };
    let recall = if g.is_empty() {
        0.0
    } else {
        tp / g.len() as f64
    };
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    (precision, recall, f1)
}

/// Fraction of tags predicted exactly.
pub fn token_accuracy<S: AsRef<str>>(gold: &[Vec<S>], pred: &[Vec<S>]) -> f64 {
    let (mut right, mut all) = (0usize, 0usize);
    for (g, p) in gold.iter().zip(pred) {
        for (a, b) in g.iter().zip(p) {
            all += 1;
            right += (a.as_ref() == b.as_ref()) as usize;
        }
    }
    if all == 0 {
        0.0
    } else {
        right as f64 / all as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn matches_seqeval_examples() {
        // seqeval README: y_true / y_pred
        let gold = vec![v("O O O B-MISC I-MISC I-MISC O"), v("B-PER I-PER O")];
        let pred = vec![v("O O B-MISC I-MISC I-MISC I-MISC O"), v("B-PER I-PER O")];
        // seqeval: f1_score = 0.5, precision 0.5, recall 0.5
        let (p, r, f) = entity_prf(&gold, &pred);
        assert!((p - 0.5).abs() < 1e-12 && (r - 0.5).abs() < 1e-12 && (f - 0.5).abs() < 1e-12);
        // get_entities(['B-PER', 'I-PER', 'O', 'B-LOC']) = [('PER', 0, 1), ('LOC', 3, 3)]
        assert_eq!(
            entities(&[v("B-PER I-PER O B-LOC")]),
            vec![("PER".into(), 0, 1), ("LOC".into(), 3, 3)]
        );
        // Default mode: I- without B- starts an entity; a type change splits one.
        assert_eq!(
            entities(&[v("I-PER I-PER I-LOC O I-ORG")]),
            vec![
                ("PER".into(), 0, 1),
                ("LOC".into(), 2, 2),
                ("ORG".into(), 4, 4)
            ]
        );
        // Entities never run across sentences.
        assert_eq!(
            entities(&[v("O B-PER"), v("I-PER O")]),
            vec![("PER".into(), 1, 1), ("PER".into(), 3, 3)]
        );
        // seqeval accuracy_score: 8 of 10 tags
        assert!((token_accuracy(&gold, &pred) - 0.8).abs() < 1e-12);
    }
}

//! Contextual word similarity: one word in many sentences, the contextual vector of each
//! occurrence (mean over its word pieces), their cosine-similarity matrix, and a labelled heatmap.

use crate::checkpoint::Pretrained;
use crate::error::{Error, Result};
use crate::infer::embed::{cosine, Layer};
use crate::model::Batch;
use plotters::prelude::*;
use std::path::Path;

/// The word's vector in one sentence.
#[derive(Clone, Debug)]
pub struct Occurrence {
    /// Line (0-based) of the sentence.
    pub index: usize,
    /// The sentence.
    pub sentence: String,
    /// Mean of the hidden states of the word's pieces.
    pub vector: Vec<f32>,
}

/// Finds `word` in `text`: case-insensitive, at word boundaries for alphabetic words; a CJK
/// word matches anywhere (Chinese has no spaces). Returns the byte span.
pub fn find_word(text: &str, word: &str) -> Option<(usize, usize)> {
    let lower = text.to_lowercase();
    let w = word.to_lowercase();
    if lower.len() != text.len() || w.is_empty() {
        // Lower-casing changed byte lengths; fall back to an exact search.
        return text.find(word).map(|s| (s, s + word.len()));
    }
    let cjk = w.chars().any(is_cjk);
    let mut from = 0;
    while let Some(pos) = lower[from..].find(&w) {
        let s = from + pos;
        let e = s + w.len();
        let before = lower[..s].chars().next_back();
        let after = lower[e..].chars().next();
        let boundary = |c: Option<char>| c.is_none_or(|c| !c.is_alphanumeric());
        if cjk || (boundary(before) && boundary(after)) {
            return Some((s, e));
        }
        from = s + w.chars().next().map_or(1, |c| c.len_utf8());
    }
    None
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0xF900..=0xFAFF)
}

/// The contextual vector of `word` in each sentence (first occurrence), from `layer`'s states.
pub fn word_vectors(
    p: &Pretrained,
    word: &str,
    sentences: &[String],
    max_length: usize,
    layer: Layer,
) -> Result<Vec<Occurrence>> {
    let mut tok = p.tokenizer()?.clone();
    tok.set_truncation(
        Some(max_length.min(p.config().max_positions)),
        Default::default(),
    )?;
    let mut out = Vec::with_capacity(sentences.len());
    for (i, s) in sentences.iter().enumerate() {
        let (ws, we) = find_word(s, word).ok_or_else(|| {
            Error::Input(format!(
                "line {}: the word \"{word}\" does not occur in {s:?}",
                i + 1
            ))
        })?;
        let enc = tok.encode(s, None)?;
        let pieces: Vec<usize> = (0..enc.ids.len())
            .filter(|&k| !enc.special[k] && enc.offsets[k].0 < we && enc.offsets[k].1 > ws)
            .collect();
        if pieces.is_empty() {
            return Err(Error::Input(format!(
                "line {}: \"{word}\" falls beyond the {max_length}-token limit",
                i + 1
            )));
        }
        let batch = Batch::packed(&[(&enc.ids, Some(&enc.type_ids))])?;
        let hidden = layer.states(&p.model, &batch, p.model.default_mask())?;
        let mut v = vec![0.0f32; hidden.cols()];
        for &k in &pieces {
            v.iter_mut().zip(hidden.row(k)).for_each(|(a, b)| *a += b);
        }
        v.iter_mut().for_each(|a| *a /= pieces.len() as f32);
        out.push(Occurrence {
            index: i,
            sentence: s.clone(),
            vector: v,
        });
    }
    Ok(out)
}

/// Pairwise cosine similarities, `[n, n]` row-major.
pub fn similarity_matrix(occ: &[Occurrence]) -> Vec<f32> {
    let n = occ.len();
    let mut m = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            m[i * n + j] = cosine(&occ[i].vector, &occ[j].vector);
        }
    }
    m
}

/// Writes the matrix as CSV with the sentences as row and column headers.
pub fn write_csv(path: &Path, occ: &[Occurrence], m: &[f32]) -> Result<()> {
    let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let mut text = String::from("sentence");
    for o in occ {
        text.push(',');
        text.push_str(&q(&o.sentence));
    }
    text.push('\n');
    let n = occ.len();
    for (i, o) in occ.iter().enumerate() {
        text.push_str(&q(&o.sentence));
        for j in 0..n {
            text.push_str(&format!(",{:.6}", m[i * n + j]));
        }
        text.push('\n');
    }
    crate::checkpoint::atomic_write(path, text.as_bytes())
}

fn short(s: &str, n: usize) -> String {
    let mut out: String = s.chars().take(n).collect();
    if s.chars().count() > n {
        out.push('…');
    }
    out
}

/// Draws the labelled heatmap PNG (rows labelled with the sentences, columns with their numbers).
pub fn write_heatmap(path: &Path, word: &str, occ: &[Occurrence], m: &[f32]) -> Result<()> {
    let perr = |e: &dyn std::fmt::Display| Error::Plot {
        path: path.to_path_buf(),
        msg: e.to_string(),
    };
    crate::plot::register_font();
    let n = occ.len().max(1);
    let cell = 44u32;
    let label_w = 380u32;
    let (w, h) = (label_w + cell * n as u32 + 140, 90 + cell * n as u32 + 60);
    let tmp = path.with_extension("tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| perr(&e))?;
        let title = format!("Contextual similarity of \"{word}\" (cosine)");
        root.draw(&Text::new(title, (20, 20), ("sans-serif", 24).into_font()))
            .map_err(|e| perr(&e))?;
        let (x0, y0) = (label_w as i32, 80i32);
        let c = cell as i32;
        let (lo, hi) = m
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        let color = |v: f32| {
            let t = if hi > lo {
                ((v - lo) / (hi - lo)).clamp(0.0, 1.0)
            } else {
                1.0
            };
            // white -> dark red
            RGBColor(
                255 - (t * 75.0) as u8,
                255 - (t * 225.0) as u8,
                255 - (t * 215.0) as u8,
            )
        };
        for i in 0..occ.len() {
            for j in 0..occ.len() {
                let v = m[i * occ.len() + j];
                let (x, y) = (x0 + j as i32 * c, y0 + i as i32 * c);
                root.draw(&Rectangle::new([(x, y), (x + c, y + c)], color(v).filled()))
                    .map_err(|e| perr(&e))?;
                let txt_color = if v > lo + 0.6 * (hi - lo) {
                    WHITE
                } else {
                    BLACK
                };
                root.draw(&Text::new(
                    format!("{v:.2}"),
                    (x + 7, y + c / 2 - 7),
                    ("sans-serif", 13).into_font().color(&txt_color),
                ))
                .map_err(|e| perr(&e))?;
            }
            let label = format!("{}: {}", i + 1, short(&occ[i].sentence, 44));
            root.draw(&Text::new(
                label,
                (10, y0 + i as i32 * c + c / 2 - 8),
                ("sans-serif", 14).into_font(),
            ))
            .map_err(|e| perr(&e))?;
            root.draw(&Text::new(
                format!("{}", i + 1),
                (x0 + i as i32 * c + c / 2 - 6, y0 - 22),
                ("sans-serif", 14).into_font(),
            ))
            .map_err(|e| perr(&e))?;
        }
        // Colour scale.
        let sx = x0 + occ.len() as i32 * c + 30;
        for k in 0..100 {
            let v = hi - (hi - lo) * k as f32 / 99.0;
            let y = y0 + k * (c * occ.len() as i32) / 100;
            root.draw(&Rectangle::new(
                [(sx, y), (sx + 24, y + (c * occ.len() as i32) / 100 + 1)],
                color(v).filled(),
            ))
            .map_err(|e| perr(&e))?;
        }
        root.draw(&Text::new(
            format!("{hi:.2}"),
            (sx + 30, y0),
            ("sans-serif", 13).into_font(),
        ))
        .map_err(|e| perr(&e))?;
        root.draw(&Text::new(
            format!("{lo:.2}"),
            (sx + 30, y0 + c * occ.len() as i32 - 14),
            ("sans-serif", 13).into_font(),
        ))
        .map_err(|e| perr(&e))?;
        root.present().map_err(|e| perr(&e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io("rename", path, e))
}

//! Sentence embeddings: encode, run the encoder over a packed (padding-free) batch, pool the
//! token vectors of each sentence, optionally L2-normalize.

use crate::checkpoint::sentence::Pooling;
use crate::checkpoint::Pretrained;
use crate::error::{Error, Result};
use crate::model::Batch;
use crate::tokenize::{Tokenizer, Truncation};

/// Embedding settings; defaults come from a sentence-transformers directory when there is one.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbedOptions {
    /// How token vectors are pooled.
    pub pooling: Pooling,
    /// L2-normalize the result.
    pub normalize: bool,
    /// Truncate inputs to this many tokens (special tokens included).
    pub max_length: usize,
    /// Sentences per forward pass.
    pub batch_size: usize,
}

impl EmbedOptions {
    /// The model's own defaults: sentence-transformers' pooling, `Normalize` module and
    /// `max_seq_length` (not the tokenizer.json truncation, which sentence-transformers ignores);
    /// otherwise mean pooling, no normalization, the model's position limit.
    pub fn defaults_for(p: &Pretrained) -> Self {
        let max_pos = p.config().max_positions;
        match &p.sentence {
            Some(s) => EmbedOptions {
                pooling: s.pooling,
                normalize: s.normalize,
                max_length: s.max_seq_length.unwrap_or(max_pos).min(max_pos),
                batch_size: 32,
            },
            None => EmbedOptions {
                pooling: Pooling::Mean,
                normalize: false,
                max_length: max_pos,
                batch_size: 32,
            },
        }
    }
}

/// Embeds sentences with one model.
pub struct Embedder<'a> {
    model: &'a Pretrained,
    tokenizer: Tokenizer,
    opts: EmbedOptions,
}

impl<'a> Embedder<'a> {
    /// Prepares a tokenizer truncating at `opts.max_length`.
    pub fn new(model: &'a Pretrained, opts: EmbedOptions) -> Result<Self> {
        if opts.max_length == 0 || opts.batch_size == 0 {
            return Err(Error::Input(
                "--max-length and --batch-size must be positive".into(),
            ));
        }
        if opts.max_length > model.config().max_positions {
            return Err(Error::Input(format!(
                "--max-length {} exceeds the model's {} positions",
                opts.max_length,
                model.config().max_positions
            )));
        }
        let mut tokenizer = model.tokenizer()?.clone();
        tokenizer.set_truncation(Some(opts.max_length), Truncation::LongestFirst)?;
        Ok(Embedder {
            model,
            tokenizer,
            opts,
        })
    }

    /// Width of the embeddings.
    pub fn dim(&self) -> usize {
        self.model.config().hidden_size
    }

    /// One embedding per text, in input order.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(self.opts.batch_size) {
            let encs = self.tokenizer.encode_batch(chunk)?;
            let seqs: Vec<(&[u32], Option<&[u32]>)> = encs
                .iter()
                .map(|e| (&e.ids[..], Some(&e.type_ids[..])))
                .collect();
            let batch = Batch::packed(&seqs)?;
            let hidden = self
                .model
                .model
                .forward(&batch, self.model.model.default_mask(), None)?;
            out.extend(pool(
                hidden.data(),
                self.dim(),
                &batch.seq_lens,
                self.opts.pooling,
                self.opts.normalize,
            ));
        }
        Ok(out)
    }
}

/// Pools each sequence of a packed `[tokens, hidden]` matrix.
pub fn pool(
    hidden: &[f32],
    h: usize,
    seq_lens: &[usize],
    pooling: Pooling,
    normalize: bool,
) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(seq_lens.len());
    let mut row = 0;
    for &len in seq_lens {
        let rows = &hidden[row * h..(row + len) * h];
        let mut v = match pooling {
            Pooling::Cls => rows[..h].to_vec(),
            Pooling::Mean => {
                let mut acc = vec![0.0f32; h];
                for r in rows.chunks(h) {
                    acc.iter_mut().zip(r).for_each(|(a, b)| *a += b);
                }
                let inv = 1.0 / len.max(1) as f32;
                acc.iter_mut().for_each(|a| *a *= inv);
                acc
            }
            Pooling::Max => {
                let mut acc = vec![f32::NEG_INFINITY; h];
                for r in rows.chunks(h) {
                    acc.iter_mut().zip(r).for_each(|(a, b)| *a = a.max(*b));
                }
                acc
            }
        };
        if normalize {
            l2_normalize(&mut v);
        }
        out.push(v);
        row += len;
    }
    out
}

/// Scales `v` to unit length (as `torch.nn.functional.normalize`, eps 1e-12).
pub fn l2_normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(1e-12)
}

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
    /// The layer whose token states are pooled.
    pub layer: Layer,
}

/// Which layer's token states a contextual vector comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Layer {
    /// The model's output (after a final norm).
    #[default]
    Last,
    /// Layer `n`: 0 is the embeddings, `n` the output of the `n`-th layer (transformers'
    /// `hidden_states[n]`; an LSTM's `[forward; backward]` states of layer `n`).
    Index(usize),
    /// The mean of every layer's states, the embeddings included (ELMo's unweighted mix).
    Mean,
}

impl std::str::FromStr for Layer {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "last" => Ok(Layer::Last),
            "mean" => Ok(Layer::Mean),
            n => n.parse().map(Layer::Index).map_err(|_| {
                Error::Input(format!(
                    "--layer {n:?}: a layer number (0 = the embeddings), \"last\" or \"mean\""
                ))
            }),
        }
    }
}

impl Layer {
    /// The chosen states of `batch`, `[tokens, width]`.
    pub fn states(
        self,
        model: &crate::model::Transformer,
        batch: &Batch,
        mask: crate::engine::MaskKind,
    ) -> Result<crate::engine::Tensor> {
        if self == Layer::Last {
            return model.forward(batch, mask, None);
        }
        let mut all = model.hidden_states(batch, mask)?;
        let n = all.len();
        match self {
            Layer::Index(i) if i < n => Ok(all.swap_remove(i)),
            Layer::Index(i) => Err(Error::Input(format!(
                "--layer {i}: the model has layers 0 (the embeddings) to {}",
                n - 1
            ))),
            _ => {
                if all.iter().any(|t| t.shape() != all[0].shape()) {
                    return Err(Error::Input(
                        "--layer mean: the model's layers differ in width".into(),
                    ));
                }
                let mut sum = all.swap_remove(0);
                for t in &all {
                    sum.data_mut()
                        .iter_mut()
                        .zip(t.data())
                        .for_each(|(a, b)| *a += b);
                }
                let inv = 1.0 / n as f32;
                sum.data_mut().iter_mut().for_each(|a| *a *= inv);
                Ok(sum)
            }
        }
    }
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
                layer: Layer::Last,
            },
            None => EmbedOptions {
                pooling: Pooling::Mean,
                normalize: false,
                max_length: max_pos,
                batch_size: 32,
                layer: Layer::Last,
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
            let hidden = self.opts.layer.states(
                &self.model.model,
                &batch,
                self.model.model.default_mask(),
            )?;
            out.extend(pool(
                hidden.data(),
                hidden.cols(),
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

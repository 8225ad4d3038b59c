//! Text generation with a causal LM: greedy, sampling (temperature, top-k, top-p) and beam
//! search, all incremental over a KV cache.

use crate::checkpoint::Pretrained;
use crate::engine::softmax::{log_softmax_rows, softmax_rows};
use crate::engine::topk::top_k;
use crate::engine::MaskKind;
use crate::error::{Error, Result};
use crate::heads::{LmHead, MlmHead};
use crate::model::{Batch, KvCache};
use rand::{Rng, SeedableRng};

/// How the next token is chosen.
#[derive(Clone, Debug, PartialEq)]
pub enum Strategy {
    /// The most likely token.
    Greedy,
    /// A random draw from the (filtered) distribution.
    Sample {
        /// Divides the logits; < 1 sharpens, > 1 flattens.
        temperature: f32,
        /// Keep only the k most likely tokens (0 = off).
        top_k: usize,
        /// Keep the smallest set of tokens whose probability reaches p (1.0 = off).
        top_p: f32,
    },
    /// Beam search.
    Beam {
        /// Beams kept per step.
        num_beams: usize,
        /// Exponent of the length normalization (`score / len^penalty`).
        length_penalty: f32,
    },
}

/// Generation settings.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    /// Most new tokens to produce.
    pub max_new_tokens: usize,
    /// Decoding strategy.
    pub strategy: Strategy,
    /// Seed of the sampling RNG.
    pub seed: u64,
}

/// Why a continuation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// The model produced its end-of-sequence token (the last token).
    Eos,
    /// It used `max_new_tokens` or the model's positions.
    Length,
    /// The model's output turned NaN or infinite (finite weights that overflow on this
    /// input); no token follows. Other continuations batched with it go on.
    NonFinite,
}

/// One greedy or sampled continuation in progress ([`Generator::start`]), carried on step by
/// step ([`Generator::advance`]), alone or in a batch with others: a server's continuous
/// batching.
#[derive(Clone, Debug)]
pub struct Decoding {
    cache: KvCache,
    rng: rand::rngs::StdRng,
    strategy: Strategy,
    /// Next-token logits.
    logits: Vec<f32>,
    /// The logits before sampling rescaled them (sampled continuations only).
    raw: Vec<f32>,
    /// New tokens allowed.
    room: usize,
    /// The new tokens so far.
    pub tokens: Vec<u32>,
    /// Why it ended, once it has.
    pub finished: Option<Finish>,
}

/// What an overflowing output is called.
const NON_FINITE: &str =
    "the model's output is not finite (NaN or infinity); its weights overflow on this input";

/// The head that turns the last hidden state into next-token logits.
enum NextToken<'a> {
    /// A causal LM's head (GPT-2).
    Lm(&'a LmHead),
    /// An encoder's masked-LM head, used left to right under the prefix mask (UniLM).
    Mlm(&'a MlmHead),
}

/// Generates continuations with one model.
pub struct Generator<'a> {
    p: &'a Pretrained,
    head: NextToken<'a>,
    eos: Option<u32>,
    /// Prefix mode: the prompt is a source seen bidirectionally (segment 0), the continuation
    /// a target generated causally after it (segment 1).
    prefix: bool,
}

impl<'a> Generator<'a> {
    /// Needs a model with a causal-LM head.
    pub fn new(p: &'a Pretrained) -> Result<Self> {
        let head = p.lm_head.as_ref().ok_or_else(|| {
            Error::Input(format!(
                "{} has no causal-LM head; generate needs a GPT-2 style model (GPT2LMHeadModel)",
                p.dir.display()
            ))
        })?;
        let eos = p
            .config()
            .eos_token_id
            .or_else(|| p.tokenizer.as_ref().and_then(|t| t.eos_id()));
        Ok(Generator {
            p,
            head: NextToken::Lm(head),
            eos,
            prefix: false,
        })
    }

    /// An encoder (BERT with its masked-LM head) generating after a source: the prompt
    /// (`[CLS] source [SEP]`) is attended bidirectionally, each new token causally, and the
    /// token after position i is predicted at position i; `eos` ends the target.
    pub fn prefix_lm(p: &'a Pretrained, eos: u32) -> Result<Self> {
        let head = p.mlm_head.as_ref().ok_or_else(|| {
            Error::Input(format!(
                "{} has no masked-LM head to generate with",
                p.dir.display()
            ))
        })?;
        Ok(Generator {
            p,
            head: NextToken::Mlm(head),
            eos: Some(eos),
            prefix: true,
        })
    }

    /// Runs `ids` after the cached tokens; returns the logits of the last position. In prefix
    /// mode the first call is the source (bidirectional, segment 0) and later calls the target.
    fn step(&self, cache: &mut KvCache, ids: &[u32]) -> Result<Vec<f32>> {
        let mut batch = Batch::continuation(&[ids], &[cache.len])?;
        let mask = if self.prefix {
            if cache.len > 0 {
                batch.type_ids.fill(1);
            }
            // Cached source keys stay valid: the source never attends to the target.
            MaskKind::Prefix(if cache.len == 0 { ids.len() } else { 0 })
        } else {
            self.p.model.decoding_mask()
        };
        let hidden = self
            .p
            .model
            .forward(&batch, mask, Some(std::slice::from_mut(cache)))?;
        let last = hidden.row(hidden.rows() - 1);
        // A NaN would be picked as a token like any other: the overflow is named instead.
        if !last.iter().all(|v| v.is_finite()) {
            return Err(crate::error::Error::NonFinite(
                "the model's output is not finite (NaN or infinity); its weights overflow on this input".into(),
            ));
        }
        let word = &self.p.model.embeddings.word;
        match self.head {
            NextToken::Lm(h) => h.forward(last, 1, word),
            NextToken::Mlm(h) => h.forward(last, 1, word),
        }
    }

    fn room(&self, prompt_len: usize, max_new: usize) -> Result<usize> {
        let max_pos = self.p.config().max_positions;
        if prompt_len == 0 {
            return Err(Error::Input(
                "the prompt is empty; give at least one token".into(),
            ));
        }
        if prompt_len >= max_pos {
            return Err(Error::Input(format!(
                "the prompt has {prompt_len} tokens, the model's limit is {max_pos} positions"
            )));
        }
        Ok(max_new.min(max_pos - prompt_len))
    }

    /// Greedy or sampled continuation of `prompt`; `on_token` sees each new id as it is
    /// produced. Returns the new ids (ending with EOS when it was produced).
    pub fn generate(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        mut on_token: impl FnMut(u32),
    ) -> Result<Vec<u32>> {
        if let Strategy::Beam {
            num_beams,
            length_penalty,
        } = opts.strategy
        {
            let out = self.beam_search(prompt, opts.max_new_tokens, num_beams, length_penalty)?;
            out.iter().for_each(|&t| on_token(t));
            return Ok(out);
        }
        let mut d = self.start(prompt, opts)?;
        while d.finished.is_none() {
            if let [Some((t, _))] = self.advance(&mut [&mut d])?[..] {
                on_token(t);
            }
        }
        if d.finished == Some(Finish::NonFinite) {
            return Err(Error::NonFinite(NON_FINITE.into()));
        }
        Ok(d.tokens)
    }

    /// Starts a greedy or sampled continuation of `prompt` (its prompt run through the model),
    /// to be carried on by [`Generator::advance`], alone or batched with others.
    pub fn start(&self, prompt: &[u32], opts: &GenerateOptions) -> Result<Decoding> {
        match opts.strategy {
            Strategy::Beam { .. } => {
                return Err(Error::Input(
                    "beam search keeps several hypotheses; run it whole with Generator::generate"
                        .into(),
                ))
            }
            Strategy::Sample {
                temperature, top_p, ..
            } => check_sampling(temperature, top_p)?,
            Strategy::Greedy => {}
        }
        let room = self.room(prompt.len(), opts.max_new_tokens)?;
        let mut cache = self.p.model.new_cache();
        let logits = self.step(&mut cache, prompt)?;
        Ok(Decoding {
            cache,
            rng: rand::rngs::StdRng::seed_from_u64(opts.seed),
            strategy: opts.strategy.clone(),
            logits,
            raw: Vec::new(),
            room,
            tokens: Vec::new(),
            finished: (room == 0).then_some(Finish::Length),
        })
    }

    /// Chooses the next token of every unfinished decoding (ending those that produced EOS
    /// or used their room), then runs the new tokens of the others through the model in one
    /// batched pass. Returns, per decoding, the token chosen and its log-probability under
    /// the model (`None` for one already finished). Each decoding's tokens are the same as
    /// when it runs alone.
    pub fn advance(&self, decs: &mut [&mut Decoding]) -> Result<Vec<Option<(u32, f32)>>> {
        let mut chosen = Vec::with_capacity(decs.len());
        let mut running = Vec::new();
        for (i, d) in decs.iter_mut().enumerate() {
            if d.finished.is_some() {
                chosen.push(None);
                continue;
            }
            let lse = log_sum_exp(&d.logits);
            let (next, logit) = match &d.strategy {
                Strategy::Sample {
                    temperature,
                    top_k,
                    top_p,
                } => {
                    // Sampling rescales the logits in place; the model's own values stay in a
                    // buffer reused step after step.
                    d.raw.clone_from(&d.logits);
                    let t = sample(&mut d.logits, *temperature, *top_k, *top_p, &mut d.rng)?;
                    (t, d.raw[t as usize])
                }
                _ => {
                    let t = argmax(&d.logits);
                    (t, d.logits[t as usize])
                }
            };
            d.tokens.push(next);
            if Some(next) == self.eos {
                d.finished = Some(Finish::Eos);
            } else if d.tokens.len() >= d.room {
                d.finished = Some(Finish::Length);
            } else {
                running.push(i);
            }
            chosen.push(Some((next, logit - lse)));
        }
        if running.is_empty() {
            return Ok(chosen);
        }
        let last: Vec<[u32; 1]> = running
            .iter()
            .map(|&i| [decs[i].tokens.last().copied().unwrap_or(0)])
            .collect();
        let seqs: Vec<&[u32]> = last.iter().map(|t| &t[..]).collect();
        let past: Vec<usize> = running.iter().map(|&i| decs[i].cache.len).collect();
        let mut batch = Batch::continuation(&seqs, &past)?;
        let mask = if self.prefix {
            // Every continued token is target (segment 1), attending causally.
            batch.type_ids.fill(1);
            MaskKind::Prefix(0)
        } else {
            self.p.model.decoding_mask()
        };
        // The caches move into one slice for the pass and back after it.
        let mut caches: Vec<KvCache> = running
            .iter()
            .map(|&i| std::mem::replace(&mut decs[i].cache, KvCache::new(Vec::new())))
            .collect();
        let hidden = self.p.model.forward(&batch, mask, Some(&mut caches));
        for (&i, c) in running.iter().zip(caches) {
            decs[i].cache = c;
        }
        let hidden = hidden?;
        // A continuation whose output overflowed ends there; the rows of the others are
        // their own (attention never mixes sequences), so they go on.
        for (k, &i) in running.iter().enumerate() {
            if !hidden.row(k).iter().all(|v| v.is_finite()) {
                decs[i].finished = Some(Finish::NonFinite);
            }
        }
        let word = &self.p.model.embeddings.word;
        let logits = match self.head {
            NextToken::Lm(h) => h.forward(hidden.data(), running.len(), word)?,
            NextToken::Mlm(h) => h.forward(hidden.data(), running.len(), word)?,
        };
        let v = logits.len() / running.len();
        for (k, &i) in running.iter().enumerate() {
            if decs[i].finished.is_some() {
                continue;
            }
            decs[i].logits.clear();
            decs[i]
                .logits
                .extend_from_slice(&logits[k * v..(k + 1) * v]);
        }
        Ok(chosen)
    }

    /// Beam search as transformers does it: 2·B candidates per step, an EOS candidate ranked
    /// within the top B finishes a hypothesis scored `sum_logprobs / new_len^length_penalty`,
    /// and the search stops once B hypotheses are finished (`early_stopping=True`).
    /// (transformers `generation/utils.py` `_beam_search`.)
    pub fn beam_search(
        &self,
        prompt: &[u32],
        max_new: usize,
        num_beams: usize,
        length_penalty: f32,
    ) -> Result<Vec<u32>> {
        if num_beams == 0 {
            return Err(Error::Input("--num-beams must be at least 1".into()));
        }
        let n = self.room(prompt.len(), max_new)?;
        let v = self.p.config().vocab_size;
        struct Beam {
            tokens: Vec<u32>,
            score: f32,
            cache: KvCache,
            logits: Vec<f32>,
        }
        let mut cache = self.p.model.new_cache();
        let logits = self.step(&mut cache, prompt)?;
        let mut beams = vec![Beam {
            tokens: Vec::new(),
            score: 0.0,
            cache,
            logits,
        }];
        let mut finished: Vec<(Vec<u32>, f32)> = Vec::new();
        let norm = |sum: f32, len: usize| sum / (len as f32).powf(length_penalty);
        for step in 0..n {
            // (beam, token, total log-prob) candidates
            let mut cands: Vec<(usize, u32, f32)> = Vec::new();
            for (b, beam) in beams.iter_mut().enumerate() {
                log_softmax_rows(&mut beam.logits, v);
                for (t, lp) in top_k(&beam.logits, 2 * num_beams) {
                    cands.push((b, t as u32, beam.score + lp));
                }
            }
            cands.sort_by(|a, b| {
                b.2.partial_cmp(&a.2)
                    .unwrap_or(std::cmp::Ordering::Equal)
                    .then(a.0.cmp(&b.0))
            });
            cands.truncate(2 * num_beams);
            let mut next: Vec<(usize, u32, f32)> = Vec::new();
            for (rank, &(b, t, s)) in cands.iter().enumerate() {
                if Some(t) == self.eos {
                    if rank < num_beams {
                        let mut toks = beams[b].tokens.clone();
                        toks.push(t);
                        finished.push((toks, norm(s, step + 1)));
                    }
                } else {
                    next.push((b, t, s));
                }
                if next.len() == num_beams {
                    break;
                }
            }
            if finished.len() >= num_beams || next.is_empty() {
                break;
            }
            let last = step + 1 == n;
            let mut new_beams = Vec::with_capacity(next.len());
            for (b, t, s) in next {
                let mut tokens = beams[b].tokens.clone();
                tokens.push(t);
                if last {
                    new_beams.push(Beam {
                        tokens,
                        score: s,
                        cache: self.p.model.new_cache(),
                        logits: Vec::new(),
                    });
                    continue;
                }
                let mut cache = beams[b].cache.clone();
                let logits = self.step(&mut cache, &[t])?;
                new_beams.push(Beam {
                    tokens,
                    score: s,
                    cache,
                    logits,
                });
            }
            beams = new_beams;
            if last {
                for b in &beams {
                    finished.push((b.tokens.clone(), norm(b.score, b.tokens.len())));
                }
            }
        }
        if finished.is_empty() {
            for b in &beams {
                finished.push((b.tokens.clone(), norm(b.score, b.tokens.len().max(1))));
            }
        }
        finished.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
        Ok(finished.into_iter().next().map(|f| f.0).unwrap_or_default())
    }
}

fn argmax(x: &[f32]) -> u32 {
    top_k(x, 1).first().map_or(0, |t| t.0 as u32)
}

/// Temperature, then top-k, then top-p filtering (transformers' order), then a draw.
fn sample(
    logits: &mut [f32],
    temperature: f32,
    k: usize,
    p: f32,
    rng: &mut impl Rng,
) -> Result<u32> {
    check_sampling(temperature, p)?;
    logits.iter_mut().for_each(|l| *l /= temperature);
    let v = logits.len();
    softmax_rows(logits, v);
    let mut kept = top_k(logits, if k == 0 { v } else { k });
    if p < 1.0 {
        let mut acc = 0.0;
        let mut cut = kept.len();
        for (i, (_, q)) in kept.iter().enumerate() {
            acc += q;
            if acc >= p {
                cut = i + 1;
                break;
            }
        }
        kept.truncate(cut);
    }
    let total: f32 = kept.iter().map(|k| k.1).sum();
    let mut r = rng.gen::<f32>() * total;
    for (id, q) in &kept {
        if r < *q {
            return Ok(*id as u32);
        }
        r -= q;
    }
    Ok(kept.last().map_or(0, |k| k.0 as u32))
}

/// The sampling settings' ranges.
fn check_sampling(temperature: f32, top_p: f32) -> Result<()> {
    if temperature.is_nan() || temperature <= 0.0 {
        return Err(Error::Input(format!(
            "--temperature must be positive, got {temperature}"
        )));
    }
    if top_p.is_nan() || top_p <= 0.0 || top_p > 1.0 {
        return Err(Error::Input(format!(
            "--top-p must be in (0, 1], got {top_p}"
        )));
    }
    Ok(())
}

/// `log Σ exp(x)`, computed stably.
fn log_sum_exp(x: &[f32]) -> f32 {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    m + x.iter().map(|v| (v - m).exp()).sum::<f32>().ln()
}

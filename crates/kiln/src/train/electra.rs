//! ELECTRA pre-training (Clark et al., 2020, "ELECTRA: Pre-training Text Encoders as
//! Discriminators Rather Than Generators"): a small masked-LM *generator* fills the masked
//! positions of each sequence with tokens sampled from its predictions, and the model being
//! pre-trained, the *discriminator*, judges every token of the result: original or replaced.
//! Both train together on `gen_loss + disc_weight · disc_loss`; no gradient flows through the
//! sampling. As in the paper, the two share their embedding tables (word, position, segment and
//! their LayerNorm, all `embedding_size` wide): the generator reads the discriminator's tables
//! and sends its gradients into theirs, so one set is trained. Everything else of the
//! generator (its projection to its own width, blocks and masked-LM head) is an auxiliary model
//! of the run ([`Auxiliary::with_model`]): stepped with the discriminator, checkpointed in the
//! optimizer state, so `--resume` is exact, and written to `OUT/generator/` beside
//! `OUT/discriminator/`.

use super::auxiliary::{AuxModel, Auxiliary};
use super::backprop::{mlm_loss_with, rtd_loss, zeros_like};
use crate::checkpoint::{self, Pretrained, SaveDtype};
use crate::engine::dropout::mix;
use crate::engine::grad::cross_entropy_in_place;
use crate::engine::Tensor;
use crate::error::{Error, Result};
use crate::heads::RtdHead;
use crate::model::config::ModelConfig;
use crate::model::{Arch, Batch, Embeddings};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Where the discriminator is written in the output directory.
pub const DISCRIMINATOR_DIR: &str = "discriminator";
/// Where the generator is written in the output directory.
pub const GENERATOR_DIR: &str = "generator";

/// The generator's config for a discriminator of `disc` and `scale`: the same depth, tables and
/// head size, `scale` × the heads (at least one), so hidden and feed-forward widths scale with
/// them (ELECTRA-Base's generator: 4 of 12 heads, 256 wide).
pub fn generator_config(disc: &ModelConfig, scale: f32) -> Result<ModelConfig> {
    if disc.arch != Arch::Electra {
        return Err(Error::Input(format!(
            "--objective electra pre-trains an ELECTRA discriminator, not a {} model; create one with `kiln init --arch electra`",
            disc.arch.model_type()
        )));
    }
    if disc.is_pruned() {
        return Err(Error::Input(
            "--objective electra needs a model with the same width in every layer (this one was pruned)".into(),
        ));
    }
    let heads = ((disc.num_heads as f32 * scale).round() as usize).max(1);
    let hidden = heads * disc.head_dim();
    let inter = ((disc.intermediate_size * hidden) as f64 / disc.hidden_size as f64)
        .round()
        .max(1.0) as usize;
    let mut raw = disc.to_json();
    raw["hidden_size"] = hidden.into();
    raw["num_attention_heads"] = heads.into();
    raw["intermediate_size"] = inter.into();
    raw["architectures"] = serde_json::json!(["ElectraForMaskedLM"]);
    for k in ["id2label", "label2id", "num_labels", "problem_type"] {
        if let Some(o) = raw.as_object_mut() {
            o.remove(k);
        }
    }
    ModelConfig::from_value(raw, Path::new("<the ELECTRA generator>"))
}

/// Gives `p` a new replaced-token-detection head (normal(0, initializer_range) weights, zero
/// biases, as transformers initializes it) in place of its masked-LM head.
pub fn add_discriminator_head(p: &mut Pretrained, seed: u64) {
    let cfg = p.config();
    let (h, std) = (cfg.hidden_size, cfg.initializer_range as f32);
    let mut init = crate::model::init::Init::new(seed, std);
    p.rtd_head = Some(RtdHead {
        dense: init.linear(h, h, std),
        activation: cfg.activation,
        prediction: init.linear(1, h, std),
    });
    p.mlm_head = None;
}

/// Copies the shared tables (word, position, segment embeddings and their norm).
fn copy_tables(from: &Embeddings, to: &mut Embeddings) {
    to.word = from.word.clone();
    to.position = from.position.clone();
    to.token_type = from.token_type.clone();
    to.norm = from.norm.clone();
}

/// Exchanges the shared tables of two embeddings (gradient buffers).
fn swap_tables(a: &mut Embeddings, b: &mut Embeddings) {
    std::mem::swap(&mut a.word, &mut b.word);
    std::mem::swap(&mut a.position, &mut b.position);
    std::mem::swap(&mut a.token_type, &mut b.token_type);
    std::mem::swap(&mut a.norm, &mut b.norm);
}

/// One masked micro-batch as the ELECTRA loss reads it.
pub(crate) struct Masked<'a> {
    /// The packed sequences with their masked positions already replaced ([MASK] etc.).
    pub batch: &'a Batch,
    /// Masked rows of the batch.
    pub positions: &'a [usize],
    /// Their original tokens.
    pub targets: &'a [i64],
    /// Seeds the generator's samples.
    pub sample_seed: u64,
}

/// Sums behind the metrics: weighted means of a step's micro-batches, or counts of an
/// evaluation.
#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    gen_loss: f64,
    gen_accuracy: f64,
    disc_loss: f64,
    disc_accuracy: f64,
    replaced_fraction: f64,
}

impl Stats {
    fn add(&mut self, o: &Stats, w: f64) {
        self.gen_loss += w * o.gen_loss;
        self.gen_accuracy += w * o.gen_accuracy;
        self.disc_loss += w * o.disc_loss;
        self.disc_accuracy += w * o.disc_accuracy;
        self.replaced_fraction += w * o.replaced_fraction;
    }

    fn json(&self, prefix: &str) -> serde_json::Value {
        serde_json::json!({
            format!("{prefix}gen_loss"): self.gen_loss,
            format!("{prefix}gen_accuracy"): 100.0 * self.gen_accuracy,
            format!("{prefix}disc_loss"): self.disc_loss,
            format!("{prefix}disc_accuracy"): 100.0 * self.disc_accuracy,
            format!("{prefix}replaced_fraction"): self.replaced_fraction,
        })
    }
}

/// The ELECTRA objective of a pre-training run: the generator and the loss settings.
pub(crate) struct Electra {
    aux: Auxiliary,
    disc_weight: f32,
    step: Mutex<Stats>,
}

/// A token drawn from each row's softmax (one uniform number per row, from a stream seeded by
/// `seed` and the row, so the draw is the same whatever the thread count).
fn sample_rows(logits: &[f32], v: usize, seed: u64) -> Vec<u32> {
    logits
        .par_chunks(v)
        .enumerate()
        .map(|(r, row)| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(mix(seed ^ mix(r as u64)));
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let total: f64 = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
            let mut left = rng.gen::<f64>() * total;
            for (i, &x) in row.iter().enumerate() {
                left -= ((x - max) as f64).exp();
                if left <= 0.0 {
                    return i as u32;
                }
            }
            (v - 1) as u32
        })
        .collect()
}

/// Rows whose highest logit is the target.
fn correct_rows(logits: &[f32], v: usize, targets: &[i64]) -> usize {
    logits
        .chunks(v)
        .zip(targets)
        .filter(|(row, &t)| crate::engine::topk::top_k(row, 1)[0].0 as i64 == t)
        .count()
}

/// The discriminator's input: the original tokens, with the generator's samples at the masked
/// positions; and the labels (1 where a sample differs from the original token).
fn replaced(m: &Masked, samples: &[u32]) -> (Batch, Vec<f32>) {
    let mut batch = m.batch.clone();
    let mut labels = vec![0.0f32; batch.tokens()];
    for ((&pos, &orig), &s) in m.positions.iter().zip(m.targets).zip(samples) {
        batch.ids[pos] = s;
        labels[pos] = if s as i64 == orig { 0.0 } else { 1.0 };
    }
    (batch, labels)
}

/// Tokens the discriminator judges right (a positive logit for a replaced one).
fn judged_right(logits: &[f32], labels: &[f32]) -> usize {
    logits
        .iter()
        .zip(labels)
        .filter(|(&x, &y)| (x > 0.0) == (y > 0.5))
        .count()
}

impl Electra {
    /// The objective for the discriminator `disc`: a new generator (seeded), whose shared
    /// tables are the discriminator's. The discriminator must have its head already.
    pub(crate) fn new(disc: &Pretrained, scale: f32, disc_weight: f32, seed: u64) -> Result<Self> {
        if disc.rtd_head.is_none() {
            return Err(Error::Input(
                "--objective electra needs a discriminator head (added for a new run)".into(),
            ));
        }
        let cfg = generator_config(disc.config(), scale)?;
        let tok = disc.tokenizer()?.clone();
        let mut p = crate::model::init::random_model(cfg, tok, disc.dir.clone(), seed)?;
        copy_tables(&disc.model.embeddings, &mut p.model.embeddings);
        let mut grads = zeros_like(&p);
        // The shared tables' gradients go to the discriminator's buffers (swapped in for the
        // generator's backward pass); the generator's own step skips them.
        let e = &mut grads.model.embeddings;
        e.word.weight = Tensor::zeros(&[0]);
        e.position = Tensor::zeros(&[0]);
        if let Some(t) = &mut e.token_type {
            *t = Tensor::zeros(&[0]);
        }
        if let Some(n) = &mut e.norm {
            n.weight = Tensor::zeros(&[0]);
            n.bias = Tensor::zeros(&[0]);
        }
        Ok(Electra {
            aux: Auxiliary::with_model(AuxModel {
                name: "generator".into(),
                p,
                grads,
            }),
            disc_weight,
            step: Mutex::default(),
        })
    }

    /// The generator and its gradients (trained beside the discriminator).
    pub(crate) fn auxiliary(&self) -> &Auxiliary {
        &self.aux
    }

    /// The joint loss of one micro-batch, `gen_loss + disc_weight · disc_loss`; gradients
    /// (times `grad_scale`) go into the generator's buffers and `grads` (the discriminator's,
    /// shared tables included). `dropout_seed` seeds both models' dropout (different streams).
    pub(crate) fn loss(
        &self,
        disc: &Pretrained,
        m: &Masked,
        grads: &mut Pretrained,
        grad_scale: f32,
        dropout_seed: Option<u64>,
    ) -> Result<f32> {
        let v = disc.config().vocab_size;
        let samples = RefCell::new(Vec::new());
        let correct = Cell::new(0usize);
        let gen_seed = dropout_seed.map(|s| mix(s ^ 0x6E4E_7A70_5EED));
        let gen_loss = self
            .aux
            .model(|g| {
                copy_tables(&disc.model.embeddings, &mut g.p.model.embeddings);
                swap_tables(&mut grads.model.embeddings, &mut g.grads.model.embeddings);
                let r = mlm_loss_with(
                    &g.p,
                    m.batch,
                    m.positions,
                    &mut g.grads,
                    grad_scale,
                    gen_seed,
                    &|logits, scale| {
                        // Sampled (and scored) before the logits turn into their gradient.
                        *samples.borrow_mut() = sample_rows(logits, v, m.sample_seed);
                        correct.set(correct_rows(logits, v, m.targets));
                        let n = m.targets.len().max(1);
                        let (sum, _) = cross_entropy_in_place(
                            logits,
                            v,
                            m.targets,
                            super::backprop::IGNORE,
                            scale / n as f32,
                        )?;
                        Ok((sum / n as f64) as f32)
                    },
                    None,
                );
                swap_tables(&mut grads.model.embeddings, &mut g.grads.model.embeddings);
                r
            })
            .ok_or_else(|| Error::Input("the ELECTRA run has no generator".into()))??;
        let samples = samples.into_inner();
        let (batch, labels) = replaced(m, &samples);
        let (disc_loss, logits) = rtd_loss(
            disc,
            &batch,
            &labels,
            grads,
            grad_scale * self.disc_weight,
            dropout_seed,
        )?;
        let right = judged_right(&logits, &labels);
        let n = labels.len().max(1) as f64;
        let s = Stats {
            gen_loss: gen_loss as f64,
            gen_accuracy: correct.get() as f64 / m.targets.len().max(1) as f64,
            disc_loss: disc_loss as f64,
            disc_accuracy: right as f64 / n,
            replaced_fraction: labels.iter().sum::<f32>() as f64 / n,
        };
        self.step
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(&s, grad_scale as f64);
        Ok(gen_loss + self.disc_weight * disc_loss)
    }

    /// This step's `gen_loss`, `gen_accuracy` (% of masked tokens the generator's top guess
    /// gets right), `disc_loss`, `disc_accuracy` (% of tokens the discriminator judges right)
    /// and `replaced_fraction` (of all tokens, the share the generator's samples changed),
    /// averaged over the micro-batches by their weight; taking them resets them.
    pub(crate) fn take_step_metrics(&self) -> serde_json::Value {
        let s = std::mem::take(&mut *self.step.lock().unwrap_or_else(|e| e.into_inner()));
        s.json("")
    }

    /// Held-out figures without dropout: `valid_loss` (the joint loss), and the step metrics'
    /// figures as `valid_gen_loss`, ... over the whole set (the generator's samples drawn from
    /// each micro-batch's fixed seed, so every evaluation judges the same kind of draw).
    pub(crate) fn evaluate(&self, disc: &Pretrained, set: &[Masked]) -> Result<serde_json::Value> {
        let v = disc.config().vocab_size;
        let (mut gen_sum, mut gen_right, mut masked) = (0.0f64, 0usize, 0usize);
        let (mut disc_sum, mut disc_right, mut tokens, mut replaced_n) =
            (0.0f64, 0usize, 0usize, 0.0f64);
        let head = disc
            .rtd_head
            .as_ref()
            .ok_or_else(|| Error::Input("the discriminator has no head".into()))?;
        for m in set {
            let (logits, samples) = self
                .aux
                .model(|g| -> Result<(Vec<f32>, Vec<u32>)> {
                    copy_tables(&disc.model.embeddings, &mut g.p.model.embeddings);
                    let hidden = g.p.model.forward(m.batch, g.p.model.default_mask(), None)?;
                    let rows: Vec<f32> = m
                        .positions
                        .iter()
                        .flat_map(|&r| hidden.row(r).to_vec())
                        .collect();
                    let mlm = g.p.mlm_head.as_ref().ok_or_else(|| {
                        Error::Input("the generator has no masked-LM head".into())
                    })?;
                    let logits =
                        mlm.forward(&rows, m.positions.len(), &g.p.model.embeddings.word)?;
                    let samples = sample_rows(&logits, v, m.sample_seed);
                    Ok((logits, samples))
                })
                .ok_or_else(|| Error::Input("the ELECTRA run has no generator".into()))??;
            let (mean, n) = crate::engine::grad::cross_entropy(
                &logits,
                v,
                m.targets,
                super::backprop::IGNORE,
                None,
            )?;
            gen_sum += mean as f64 * n as f64;
            gen_right += correct_rows(&logits, v, m.targets);
            masked += m.targets.len();
            let (batch, labels) = replaced(m, &samples);
            let hidden = disc
                .model
                .forward(&batch, disc.model.default_mask(), None)?;
            let dl = head.forward(hidden.data(), batch.tokens())?;
            disc_sum += super::backprop::bce_sum(&dl, &labels);
            disc_right += judged_right(&dl, &labels);
            tokens += labels.len();
            replaced_n += labels.iter().sum::<f32>() as f64;
        }
        let (masked, tokens) = (masked.max(1) as f64, tokens.max(1) as f64);
        let s = Stats {
            gen_loss: gen_sum / masked,
            gen_accuracy: gen_right as f64 / masked,
            disc_loss: disc_sum / tokens,
            disc_accuracy: disc_right as f64 / tokens,
            replaced_fraction: replaced_n / tokens,
        };
        let mut out = s.json("valid_");
        out["valid_loss"] = (s.gen_loss + self.disc_weight as f64 * s.disc_loss).into();
        Ok(out)
    }

    /// Where the discriminator goes in the output directory.
    pub(crate) fn model_dir(out: &Path) -> PathBuf {
        out.join(DISCRIMINATOR_DIR)
    }

    /// Writes `OUT/discriminator/` (`ElectraForPreTraining`) and `OUT/generator/`
    /// (`ElectraForMaskedLM`, with the shared tables), each a complete model directory.
    pub(crate) fn save(&self, disc: &Pretrained, out: &Path) -> Result<()> {
        checkpoint::save(disc, &Self::model_dir(out), SaveDtype::F32)?;
        self.aux
            .model(|g| {
                copy_tables(&disc.model.embeddings, &mut g.p.model.embeddings);
                checkpoint::save(&g.p, &out.join(GENERATOR_DIR), SaveDtype::F32)
            })
            .unwrap_or(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The joint loss's gradients against finite differences, for the shared tables (which
    /// get the generator's and the discriminator's parts) and for the generator's own weights
    /// (trained through the auxiliary model).
    #[test]
    fn joint_gradients_match_finite_differences() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut disc = crate::checkpoint::load(&dir.join("tiny-electra-disc")).unwrap();
        let e = Electra::new(&disc, 0.5, 1.0, 3).unwrap();
        let ids: Vec<u32> = vec![2, 40, 41, 42, 43, 44, 45, 3, 2, 50, 51, 52, 53, 3];
        let batch = Batch::packed(&[(&ids[..8], None), (&ids[8..], None)]).unwrap();
        let positions = [2usize, 5, 10, 12];
        let targets: Vec<i64> = positions.iter().map(|&p| ids[p] as i64).collect();
        let mut masked = batch.clone();
        for &p in &positions {
            masked.ids[p] = 4; // [MASK]
        }
        let m = Masked {
            batch: &masked,
            positions: &positions,
            targets: &targets,
            sample_seed: 9,
        };
        let loss_at = |disc: &Pretrained| {
            let mut g = zeros_like(disc);
            e.aux.zero_grad();
            e.loss(disc, &m, &mut g, 1.0, None).unwrap() as f64
        };
        let mut grads = zeros_like(&disc);
        e.aux.zero_grad();
        e.loss(&disc, &m, &mut grads, 1.0, None).unwrap();
        let gen_analytic = e
            .aux
            .model(|g| g.grads.model.blocks[0].ffn_in.weight.data()[7] as f64)
            .unwrap();
        // Shared tables: a masked word's row, a context word's row, a position row.
        let w = disc.config().embedding_size;
        let eps = 1e-2f32;
        for (row, col) in [(41usize, 3usize), (44, 7), (51, 0)] {
            let k = row * w + col;
            let analytic = grads.model.embeddings.word.weight.data()[k] as f64;
            let mut at = |d: f32| {
                disc.model.embeddings.word.weight.data_mut()[k] += d;
                disc.model.embeddings.word.weights_changed();
                let l = loss_at(&disc);
                disc.model.embeddings.word.weight.data_mut()[k] -= d;
                disc.model.embeddings.word.weights_changed();
                l
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
            assert!(
                (fd - analytic).abs() < 2e-3 + 0.05 * analytic.abs(),
                "word[{row}][{col}]: {fd} vs {analytic}"
            );
        }
        let k = 3 * w + 5;
        let analytic = grads.model.embeddings.position.data()[k] as f64;
        let mut at = |d: f32| {
            disc.model.embeddings.position.data_mut()[k] += d;
            let l = loss_at(&disc);
            disc.model.embeddings.position.data_mut()[k] -= d;
            l
        };
        let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
        assert!(
            (fd - analytic).abs() < 2e-3 + 0.05 * analytic.abs(),
            "position: {fd} vs {analytic}"
        );
        // The generator's own weights: its first block's feed-forward input layer.
        let analytic = gen_analytic;
        let at = |d: f32| {
            e.aux.model(|g| {
                g.p.model.blocks[0].ffn_in.weight.data_mut()[7] += d;
                g.p.model.blocks[0].ffn_in.weights_changed();
            });
            let l = loss_at(&disc);
            e.aux.model(|g| {
                g.p.model.blocks[0].ffn_in.weight.data_mut()[7] -= d;
                g.p.model.blocks[0].ffn_in.weights_changed();
            });
            l
        };
        let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
        assert!(
            analytic.abs() > 1e-5 && (fd - analytic).abs() < 2e-3 + 0.05 * analytic.abs(),
            "generator ffn_in: {fd} vs {analytic}"
        );
    }
}

//! The pre-training loop: stream packed sequences, mask (MLM) or shift (CLM), accumulate
//! micro-batches, clip, step AdamW on the schedule, evaluate, checkpoint, resume.

use super::backprop::{clm_loss, clm_targets, mlm_loss, parameters, zeros_like, IGNORE};
use super::config::{Objective, PretrainConfig};
use super::optim::{clip_grad_norm, AdamW, Param};
use super::schedule::Schedule;
use super::state::{checkpoints, load_checkpoint, save_checkpoint, TrainerState};
use crate::checkpoint::{self, Pretrained, SaveDtype};
use crate::data::mlm::{mask_tokens, mask_whole_words, MaskConfig};
use crate::data::{Corpus, Framing, Packer};
use crate::engine::dropout::mix;
use crate::engine::grad::cross_entropy;
use crate::error::{Error, Result};
use crate::model::Batch;
use rand::SeedableRng;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Steps completed.
    pub step: u64,
    /// Planned steps.
    pub total_steps: u64,
    /// Last training loss.
    pub loss: f32,
    /// Last held-out loss.
    pub valid_loss: Option<f32>,
    /// Whether the run stopped early on request (a checkpoint was written).
    pub interrupted: bool,
}

/// What the trainer reports after every optimizer step (for progress bars and logs).
#[derive(Clone, Copy, Debug)]
pub struct Progress<'a> {
    /// Steps completed.
    pub step: u64,
    /// Planned steps.
    pub total_steps: u64,
    /// Training loss of this step.
    pub loss: f32,
    /// Learning rate used in this step.
    pub lr: f32,
    /// Tokens processed in this step.
    pub tokens: usize,
    /// The line appended to `metrics.jsonl` at this step, if any (log or evaluation step).
    pub metrics: Option<&'a serde_json::Value>,
}

/// One micro-batch ready for the loss: packed sequences and, for MLM, the selected positions.
struct Micro {
    batch: Batch,
    positions: Vec<usize>,
    targets: Vec<i64>,
    count: usize,
}

/// A random stream for one (step, micro-batch): reproducible without saving RNG state, so a
/// resumed run draws exactly what the uninterrupted one did.
fn rng_for(seed: u64, step: u64, micro: u64) -> rand::rngs::StdRng {
    // splitmix64 of the three numbers
    let mut z =
        seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ micro.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    rand::rngs::StdRng::seed_from_u64(z ^ (z >> 31))
}

struct Objectives {
    objective: Objective,
    mask: Option<MaskConfig>,
    /// Whole-word masking: whether each vocabulary id continues the previous token's word.
    continuation: Option<Vec<bool>>,
    special: Vec<u32>,
    framing: Framing,
}

impl Objectives {
    fn new(p: &Pretrained, cfg: &PretrainConfig) -> Result<Self> {
        let tok = p.tokenizer()?;
        match cfg.objective {
            Objective::Mlm => {
                if p.mlm_head.is_none() {
                    return Err(Error::Input(format!(
                        "--objective mlm needs a masked-LM model; {} has no MLM head",
                        p.dir.display()
                    )));
                }
                let id = |t: &str| {
                    tok.token_to_id(t)
                        .ok_or_else(|| Error::Input(format!("the tokenizer has no {t} token")))
                };
                let (cls, sep, mask) = (
                    id("[CLS]")?,
                    id("[SEP]")?,
                    tok.mask_id()
                        .ok_or_else(|| Error::Input("the tokenizer has no [MASK] token".into()))?,
                );
                let mut special = vec![cls, sep, mask];
                special.extend(tok.pad_id());
                let continuation = cfg.whole_word_mask.then(|| {
                    (0..p.config().vocab_size as u32)
                        .map(|id| {
                            let t = tok.id_to_token(id).unwrap_or_default();
                            // WordPiece marks continuations with ##; byte-level BPE and
                            // SentencePiece mark word starts with Ġ / ▁ instead.
                            match tok.kind() {
                                crate::tokenize::TokenizerKind::WordPiece => t.starts_with("##"),
                                _ => !(t.starts_with('Ġ') || t.starts_with('▁')),
                            }
                        })
                        .collect()
                });
                Ok(Objectives {
                    objective: Objective::Mlm,
                    continuation,
                    mask: Some(MaskConfig {
                        mask_prob: cfg.mask_prob,
                        mask_id: mask,
                        vocab_size: p.config().vocab_size as u32,
                    }),
                    special,
                    framing: Framing::Bert { cls, sep },
                })
            }
            Objective::Clm => {
                if p.lm_head.is_none() {
                    return Err(Error::Input(format!(
                        "--objective clm needs a causal-LM model; {} has none",
                        p.dir.display()
                    )));
                }
                let eos = p
                    .config()
                    .eos_token_id
                    .or_else(|| tok.eos_id())
                    .ok_or_else(|| Error::Input("the tokenizer has no end-of-text token".into()))?;
                Ok(Objectives {
                    objective: Objective::Clm,
                    mask: None,
                    continuation: None,
                    special: vec![eos],
                    framing: Framing::Gpt { eos },
                })
            }
        }
    }

    fn micro(&self, seqs: Vec<Vec<u32>>, rng: &mut rand::rngs::StdRng) -> Result<Micro> {
        match &self.mask {
            Some(mc) => {
                let mut ids_all = Vec::new();
                let mut positions = Vec::new();
                let mut targets = Vec::new();
                let mut off = 0;
                for mut s in seqs {
                    let special: Vec<bool> = s.iter().map(|t| self.special.contains(t)).collect();
                    let (pos, tg) = match &self.continuation {
                        Some(cont) => {
                            let c: Vec<bool> = s
                                .iter()
                                .map(|&t| cont.get(t as usize).copied().unwrap_or(false))
                                .collect();
                            mask_whole_words(&mut s, &special, &c, mc, rng)
                        }
                        None => mask_tokens(&mut s, &special, mc, rng),
                    };
                    positions.extend(pos.iter().map(|p| p + off));
                    targets.extend(tg);
                    off += s.len();
                    ids_all.push(s);
                }
                let refs: Vec<(&[u32], Option<&[u32]>)> =
                    ids_all.iter().map(|s| (&s[..], None)).collect();
                let count = targets.len();
                Ok(Micro {
                    batch: Batch::packed(&refs)?,
                    positions,
                    targets,
                    count,
                })
            }
            None => {
                let refs: Vec<(&[u32], Option<&[u32]>)> =
                    seqs.iter().map(|s| (&s[..], None)).collect();
                let batch = Batch::packed(&refs)?;
                let count = clm_targets(&batch).iter().filter(|&&t| t != IGNORE).count();
                Ok(Micro {
                    batch,
                    positions: Vec::new(),
                    targets: Vec::new(),
                    count,
                })
            }
        }
    }
}

/// Held-out loss, perplexity and (MLM) accuracy over fixed, pre-masked sequences.
fn evaluate(p: &Pretrained, obj: &Objectives, set: &[Micro]) -> Result<serde_json::Value> {
    let (mut loss_sum, mut count, mut correct) = (0.0f64, 0usize, 0usize);
    let v = p.config().vocab_size;
    for m in set {
        let hidden = p.model.forward(&m.batch, p.model.default_mask(), None)?;
        let (logits, targets) = match obj.objective {
            Objective::Mlm => {
                let rows: Vec<f32> = m
                    .positions
                    .iter()
                    .flat_map(|&r| hidden.row(r).to_vec())
                    .collect();
                let head = p
                    .mlm_head
                    .as_ref()
                    .ok_or_else(|| Error::Input("no MLM head".into()))?;
                (
                    head.forward(&rows, m.positions.len(), &p.model.embeddings.word)?,
                    m.targets.clone(),
                )
            }
            Objective::Clm => {
                let head = p
                    .lm_head
                    .as_ref()
                    .ok_or_else(|| Error::Input("no LM head".into()))?;
                (
                    head.forward(hidden.data(), hidden.rows(), &p.model.embeddings.word)?,
                    clm_targets(&m.batch),
                )
            }
        };
        let (loss, n) = cross_entropy(&logits, v, &targets, IGNORE, None)?;
        loss_sum += loss as f64 * n as f64;
        count += n;
        for (row, &t) in logits.chunks(v).zip(&targets) {
            if t != IGNORE && crate::engine::topk::top_k(row, 1)[0].0 as i64 == t {
                correct += 1;
            }
        }
    }
    let loss = (loss_sum / count.max(1) as f64) as f32;
    let mut out = serde_json::json!({ "valid_loss": loss, "perplexity": (loss as f64).exp() });
    if obj.objective == Objective::Mlm {
        out["mlm_accuracy"] = (correct as f64 / count.max(1) as f64).into();
    }
    Ok(out)
}

/// Counts the training sequences of one pass over the corpus (for `--epochs`).
fn count_sequences(
    corpus: &Corpus,
    p: &Pretrained,
    framing: Framing,
    seq_len: usize,
) -> Result<u64> {
    let tok = p.tokenizer()?;
    let mut packer = Packer::new(corpus, tok, framing, seq_len);
    while packer.epoch == 0 {
        if packer.next_sequence()?.is_none() {
            break;
        }
    }
    Ok(packer.produced.saturating_sub(1).max(1))
}

fn append_metrics(path: &Path, line: &serde_json::Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io("open", path, e))?;
    writeln!(f, "{line}").map_err(|e| Error::io("write", path, e))
}

/// Keeps the metrics lines up to `step` (a resumed run rewrites what came after).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    checkpoint::atomic_write(path, kept.as_bytes())
}

/// Runs (or, with `resume`, continues) pre-training of the model in `model_dir`, writing
/// checkpoints, `metrics.jsonl` and the final model into `out`. `stop` requests a checkpoint
/// and a clean exit (Ctrl-C); `report` sees every step and every metrics line.
pub fn pretrain(
    model_dir: &Path,
    out: &Path,
    cfg: &PretrainConfig,
    resume: bool,
    stop: &AtomicBool,
    mut report: impl FnMut(&Progress),
) -> Result<Summary> {
    let kind = cfg.validate()?;
    std::fs::create_dir_all(out).map_err(|e| Error::io("create directory", out, e))?;
    let latest = checkpoints(out).pop();
    let (mut p, mut opt, mut state) = match (resume, latest) {
        (true, Some(dir)) => {
            let (p, opt, mut st) = load_checkpoint(&dir)?;
            if st.config.objective != cfg.objective
                || st.config.seq_len != cfg.seq_len
                || st.config.batch_size != cfg.batch_size
            {
                return Err(Error::Input(format!(
                    "{} was made with other settings (objective, --seq-len or --batch-size differ); resume with the same flags",
                    dir.display()
                )));
            }
            st.config = cfg.clone();
            (p, opt, st)
        }
        (true, None) => {
            return Err(Error::Input(format!(
                "--resume: no checkpoint-* directory in {}",
                out.display()
            )))
        }
        (false, _) => {
            let p = checkpoint::load(model_dir)?;
            let st = TrainerState {
                step: 0,
                sequences: 0,
                epoch: 0,
                total_steps: 0,
                valid_loss: None,
                config: cfg.clone(),
            };
            (p, AdamW::new(cfg.weight_decay), st)
        }
    };
    opt.weight_decay = cfg.weight_decay;
    // The output directory is the final model: keep its tokenizer files there from the start.
    checkpoint::save(&p, out, SaveDtype::F32)?;
    p.dir = out.to_path_buf();
    let obj = Objectives::new(&p, cfg)?;
    let tok = p.tokenizer()?.clone();
    let (corpus, held_out) = {
        let all = Corpus::new(cfg.corpus.clone(), &cfg.text_field)?;
        match cfg.valid_fraction {
            Some(f) => {
                let (train, valid) = all.split(f, cfg.seed)?;
                (train, Some(valid))
            }
            None if cfg.valid.is_empty() => (all, None),
            None => (all, Some(Corpus::new(cfg.valid.clone(), &cfg.text_field)?)),
        }
    };
    let total = match cfg.max_steps {
        Some(s) => s,
        None => {
            let n = count_sequences(&corpus, &p, obj.framing, cfg.seq_len)?;
            let per_step = (cfg.batch_size * cfg.grad_accum) as f64;
            ((cfg.epochs.unwrap_or(1.0) * n as f64) / per_step)
                .ceil()
                .max(1.0) as u64
        }
    };
    state.total_steps = total;
    let sched = Schedule {
        peak: cfg.lr,
        warmup_steps: cfg.warmup_steps,
        total_steps: total,
        kind,
        floor_ratio: cfg.min_lr_ratio,
    };

    let mut packer = Packer::new(&corpus, &tok, obj.framing, cfg.seq_len);
    packer.skip(state.sequences)?;
    let eval_set: Vec<Micro> = if let Some(vc) = held_out {
        let mut vp = Packer::new(&vc, &tok, obj.framing, cfg.seq_len);
        let mut set = Vec::new();
        let mut rng = rng_for(cfg.seed, u64::MAX, 0);
        let mut left = cfg.eval_sequences;
        while left > 0 && vp.epoch == 0 {
            let mut seqs = Vec::new();
            while seqs.len() < cfg.batch_size.min(left) {
                match vp.next_sequence()? {
                    Some(s) if vp.epoch == 0 => seqs.push(s),
                    _ => break,
                }
            }
            if seqs.is_empty() {
                break;
            }
            left -= seqs.len();
            set.push(obj.micro(seqs, &mut rng)?);
        }
        set
    } else {
        Vec::new()
    };
    let metrics = out.join("metrics.jsonl");
    if resume {
        truncate_metrics(&metrics, state.step)?;
    } else {
        let _ = std::fs::remove_file(&metrics);
    }

    let mut grads = zeros_like(&p);
    let mut last_loss = f32::NAN;
    let (mut tokens_since, mut since) = (0usize, Instant::now());
    let mut interrupted = false;
    while state.step < total {
        if stop.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
        let step = state.step;
        let lr = sched.lr(step);
        // Gather the micro-batches first: their target counts weight the accumulation, so N
        // micro-batches of b equal one batch of N·b.
        let mut micros = Vec::with_capacity(cfg.grad_accum);
        for k in 0..cfg.grad_accum {
            let mut seqs = Vec::with_capacity(cfg.batch_size);
            for _ in 0..cfg.batch_size {
                match packer.next_sequence()? {
                    Some(s) => seqs.push(s),
                    None => return Err(Error::Input("the corpus holds no text".into())),
                }
            }
            micros.push(obj.micro(seqs, &mut rng_for(cfg.seed, step, k as u64))?);
        }
        let total_targets: usize = micros.iter().map(|m| m.count).sum::<usize>().max(1);
        for (_, t, _) in parameters(&mut grads) {
            t.data_mut().fill(0.0);
        }
        let mut loss = 0.0f32;
        let step_tokens: usize = micros.iter().map(|m| m.batch.tokens()).sum();
        for (k, m) in micros.iter().enumerate() {
            let share = m.count as f32 / total_targets as f32;
            // Dropout masks are a function of (seed, step, micro-batch): exact on resume.
            let drop_seed = Some(mix(cfg.seed ^ mix(step * 1024 + k as u64)));
            let l = match obj.objective {
                Objective::Mlm => mlm_loss(
                    &p,
                    &m.batch,
                    &m.positions,
                    &m.targets,
                    &mut grads,
                    share,
                    drop_seed,
                )?,
                Objective::Clm => clm_loss(&p, &m.batch, &mut grads, share, drop_seed)?,
            };
            loss += l * share;
            tokens_since += m.batch.tokens();
        }
        // Checked before the update, so the weights (and every checkpoint on disk) stay those of
        // the last good step.
        if !loss.is_finite() {
            let last = checkpoints(out)
                .pop()
                .map_or("none saved yet".into(), |d| d.display().to_string());
            return Err(Error::Input(format!(
                "step {}: the loss is {loss}; stopped (last good checkpoint: {last}); lower --lr or raise --warmup-steps, then --resume",
                step + 1
            )));
        }
        let mut gparams = parameters(&mut grads);
        let grad_norm = {
            let mut slices: Vec<&mut [f32]> =
                gparams.iter_mut().map(|(_, t, _)| t.data_mut()).collect();
            if cfg.clip_norm > 0.0 {
                clip_grad_norm(&mut slices, cfg.clip_norm)
            } else {
                clip_grad_norm(&mut slices, f32::INFINITY)
            }
        };
        {
            let mut params: Vec<Param> = parameters(&mut p)
                .into_iter()
                .zip(gparams.iter())
                .map(|((_, t, decay), (_, g, _))| Param {
                    value: t.data_mut(),
                    grad: g.data(),
                    decay,
                })
                .collect();
            opt.update(&mut params, lr)?;
        }
        drop(gparams);
        last_loss = loss;
        state.step += 1;
        state.sequences = packer.produced;
        state.epoch = packer.epoch;
        let last = state.step == total;
        let mut line = None;
        if state.step % cfg.log_every.max(1) == 0 || last {
            let secs = since.elapsed().as_secs_f64().max(1e-9);
            line = Some(serde_json::json!({
                "step": state.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                "tokens_per_s": (tokens_since as f64 / secs).round(), "epoch": state.epoch,
            }));
            tokens_since = 0;
            since = Instant::now();
        }
        if !eval_set.is_empty()
            && ((cfg.eval_every > 0 && state.step % cfg.eval_every == 0) || last)
        {
            let ev = evaluate(&p, &obj, &eval_set)?;
            state.valid_loss = ev["valid_loss"].as_f64().map(|v| v as f32);
            let l = line.get_or_insert_with(
                || serde_json::json!({ "step": state.step, "loss": loss, "lr": lr }),
            );
            if let (Some(o), Some(e)) = (l.as_object_mut(), ev.as_object()) {
                o.extend(e.clone());
            }
        }
        if let Some(l) = &line {
            append_metrics(&metrics, l)?;
        }
        report(&Progress {
            step: state.step,
            total_steps: total,
            loss,
            lr,
            tokens: step_tokens,
            metrics: line.as_ref(),
        });
        if cfg.save_every > 0 && state.step % cfg.save_every == 0 && !last {
            save_checkpoint(out, &mut p, &opt, &state, cfg.keep_last)?;
        }
    }
    save_checkpoint(out, &mut p, &opt, &state, cfg.keep_last)?;
    if !interrupted {
        checkpoint::save(&p, out, SaveDtype::F32)?;
    }
    Ok(Summary {
        step: state.step,
        total_steps: total,
        loss: last_loss,
        valid_loss: state.valid_loss,
        interrupted,
    })
}

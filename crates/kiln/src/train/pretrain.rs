//! Pre-training as a [`Task`] of the shared loop: stream packed sequences from a corpus, mask
//! them (MLM) or shift them (CLM), and evaluate held-out loss, perplexity and MLM accuracy.

use super::backprop::{clm_loss, clm_targets, mlm_loss, IGNORE};
use super::config::{Objective, PretrainConfig};
use super::trainer::{rng_for, run, start, Progress, Started, Summary, Task};
use crate::checkpoint::Pretrained;
use crate::data::mlm::{mask_tokens, mask_whole_words, MaskConfig};
use crate::data::{Corpus, Framing, Packer, Shuffled};
use crate::engine::dropout::mix;
use crate::engine::grad::{cross_entropy, cross_entropy_in_place};
use crate::error::{Error, Result};
use crate::model::Batch;
use crate::tokenize::Tokenizer;
use crate::train::distributed::{self, World};
use std::path::Path;
use std::sync::atomic::AtomicBool;

/// One micro-batch ready for the loss: packed sequences and, for MLM, the selected positions.
struct Micro {
    batch: Batch,
    positions: Vec<usize>,
    targets: Vec<i64>,
    count: usize,
    /// Seeds the draws a loss makes beside the masking (ELECTRA's generator samples).
    sample_seed: u64,
}

impl Micro {
    fn masked(&self) -> crate::train::electra::Masked<'_> {
        crate::train::electra::Masked {
            batch: &self.batch,
            positions: &self.positions,
            targets: &self.targets,
            sample_seed: self.sample_seed,
        }
    }
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
            Objective::Mlm | Objective::Electra => {
                if cfg.objective == Objective::Mlm && p.mlm_head.is_none() {
                    return Err(Error::Input(format!(
                        "--objective mlm needs a masked-LM model; {} has no MLM head",
                        p.dir.display()
                    )));
                }
                let frame = tok.frame().ok_or_else(|| {
                    Error::Input(
                        "the tokenizer has neither [CLS] and [SEP] nor <s> and </s> to frame the windows".into(),
                    )
                })?;
                let (cls, sep, mask) = (
                    frame.cls,
                    frame.sep,
                    tok.mask_id().ok_or_else(|| {
                        Error::Input("the tokenizer has no [MASK] (or <mask>) token".into())
                    })?,
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
                    objective: cfg.objective,
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
            Objective::Clm | Objective::Bilm => {
                let bi = p.config().lstm.as_ref().map(|s| s.bidirectional);
                match (cfg.objective, bi) {
                    (Objective::Clm, Some(true)) => {
                        return Err(Error::Input(format!(
                            "{} is a bidirectional LSTM, whose backward stack would see the tokens it predicts under --objective clm; train it with --objective bilm",
                            p.dir.display()
                        )))
                    }
                    (Objective::Bilm, Some(false) | None) => {
                        return Err(Error::Input(format!(
                            "--objective bilm trains a bidirectional LSTM (`kiln init --arch lstm --bidirectional`); {} is {}",
                            p.dir.display(),
                            if bi.is_some() { "a one-directional LSTM (use --objective clm)" } else { "not an LSTM" }
                        )))
                    }
                    _ => {}
                }
                if p.lm_head.is_none() {
                    return Err(Error::Input(format!(
                        "--objective {} needs a language-model head; {} has none",
                        if cfg.objective == Objective::Bilm {
                            "bilm"
                        } else {
                            "clm"
                        },
                        p.dir.display()
                    )));
                }
                let eos = p
                    .config()
                    .eos_token_id
                    .or_else(|| tok.eos_id())
                    .ok_or_else(|| Error::Input("the tokenizer has no end-of-text token".into()))?;
                Ok(Objectives {
                    objective: cfg.objective,
                    mask: None,
                    continuation: None,
                    special: vec![eos],
                    framing: Framing::Gpt { eos },
                })
            }
        }
    }

    /// The micro-batch of `seqs[keep]`, with the draws of all `seqs` made in order.
    fn micro(
        &self,
        seqs: Vec<Vec<u32>>,
        keep: std::ops::Range<usize>,
        rng: &mut rand::rngs::StdRng,
    ) -> Result<Micro> {
        let mut m = self.micro_draws(seqs, keep, rng)?;
        if self.objective == Objective::Electra {
            m.sample_seed = rand::Rng::gen(rng);
        }
        Ok(m)
    }

    fn micro_draws(
        &self,
        seqs: Vec<Vec<u32>>,
        keep: std::ops::Range<usize>,
        rng: &mut rand::rngs::StdRng,
    ) -> Result<Micro> {
        match &self.mask {
            Some(mc) => {
                let mut ids_all = Vec::new();
                let mut positions = Vec::new();
                let mut targets = Vec::new();
                let mut off = 0;
                for (i, mut s) in seqs.into_iter().enumerate() {
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
                    if !keep.contains(&i) {
                        continue;
                    }
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
                    sample_seed: 0,
                })
            }
            None => {
                let refs: Vec<(&[u32], Option<&[u32]>)> = seqs
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| keep.contains(i))
                    .map(|(_, s)| (&s[..], None))
                    .collect();
                let batch = Batch::packed(&refs)?;
                let count = clm_targets(&batch).iter().filter(|&&t| t != IGNORE).count();
                Ok(Micro {
                    batch,
                    positions: Vec::new(),
                    targets: Vec::new(),
                    count,
                    sample_seed: 0,
                })
            }
        }
    }
}

/// Held-out loss, perplexity and (MLM) accuracy over fixed, pre-masked sequences. In a
/// distributed run every rank scores its share of the micro-batches and the sums are added.
fn evaluate(
    p: &Pretrained,
    obj: &Objectives,
    set: &[Micro],
    world: World,
) -> Result<serde_json::Value> {
    if obj.objective == Objective::Bilm {
        return evaluate_bilm(p, set, world);
    }
    let (mut loss_sum, mut count, mut correct) = (0.0f64, 0usize, 0usize);
    let v = p.config().vocab_size;
    for m in set.iter().skip(world.rank()).step_by(world.size()) {
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
            Objective::Electra => {
                return Err(Error::Input(
                    "an ELECTRA discriminator has no language-model loss of its own; evaluate its generator (OUT/generator) with --objective mlm".into(),
                ))
            }
            Objective::Bilm => unreachable!("evaluated by evaluate_bilm"),
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
    let mut sums = [loss_sum, count as f64, correct as f64];
    world.sum_f64(&mut sums);
    let [loss_sum, count, correct] = sums;
    let loss = (loss_sum / count.max(1.0)) as f32;
    let mut out = serde_json::json!({ "valid_loss": loss, "perplexity": (loss as f64).exp() });
    if obj.objective == Objective::Mlm {
        out["mlm_accuracy"] = (100.0 * correct / count.max(1.0)).into();
    }
    Ok(out)
}

/// The bidirectional LM's held-out losses: each direction's mean over its targets
/// (`valid_loss_forward`, `valid_loss_backward`) and their mean (`valid_loss`).
fn evaluate_bilm(p: &Pretrained, set: &[Micro], world: World) -> Result<serde_json::Value> {
    let (mut sums, mut counts) = ([0.0f64; 2], [0usize; 2]);
    for m in set.iter().skip(world.rank()).step_by(world.size()) {
        for (d, (sum, n)) in crate::train::backprop::bilm_eval(p, &m.batch)?
            .into_iter()
            .enumerate()
        {
            sums[d] += sum;
            counts[d] += n;
        }
    }
    let mut all = [sums[0], sums[1], counts[0] as f64, counts[1] as f64];
    world.sum_f64(&mut all);
    let [f, b] = [0, 1].map(|d| all[d] / all[d + 2].max(1.0));
    let loss = (f + b) / 2.0;
    Ok(serde_json::json!({
        "valid_loss": loss as f32,
        "perplexity": loss.exp(),
        "valid_loss_forward": f as f32,
        "valid_loss_backward": b as f32,
    }))
}

/// The held-out set: the first `eval_sequences` sequences of the held-out text, masked once
/// (fixed seed), so every evaluation scores the same targets.
fn held_out_set(
    obj: &Objectives,
    corpus: &Corpus,
    tok: &Tokenizer,
    cfg: &PretrainConfig,
) -> Result<Vec<Micro>> {
    let mut eval_set = Vec::new();
    let mut vp = Packer::new(corpus, tok, obj.framing, cfg.seq_len);
    let mut rng = rng_for(cfg.train.seed, u64::MAX, 0);
    let mut left = cfg.eval_sequences;
    while left > 0 && vp.epoch == 0 {
        let mut seqs = Vec::new();
        while seqs.len() < cfg.train.batch_size.min(left) {
            match vp.next_sequence()? {
                Some(s) if vp.epoch == 0 => seqs.push(s),
                _ => break,
            }
        }
        if seqs.is_empty() {
            break;
        }
        left -= seqs.len();
        let n = seqs.len();
        eval_set.push(obj.micro(seqs, 0..n, &mut rng)?);
    }
    Ok(eval_set)
}

/// Held-out loss and perplexity (and, for a masked LM, accuracy) of `p` on `cfg.valid`, as
/// pre-training evaluates it: the first `eval_sequences` sequences of `seq_len` tokens, masked
/// once with `seed`; the objective is `cfg.objective`. What `kiln eval --task lm` reports.
pub fn evaluate_corpus(p: &Pretrained, cfg: &PretrainConfig) -> Result<serde_json::Value> {
    let obj = Objectives::new(p, cfg)?;
    let corpus = Corpus::new(cfg.valid.clone(), &cfg.text_field)?;
    let set = held_out_set(&obj, &corpus, p.tokenizer()?, cfg)?;
    if set.is_empty() {
        return Err(Error::Input(format!(
            "{}: no text to evaluate on",
            cfg.valid
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut m = evaluate(p, &obj, &set, World::single())?;
    m["sequences"] = set
        .iter()
        .map(|s| s.batch.seq_lens.len())
        .sum::<usize>()
        .into();
    Ok(m)
}

/// A distillation run's teacher, its settings and its hidden-state term.
struct Teacher {
    model: std::sync::Arc<Pretrained>,
    cfg: crate::compress::distill::DistillConfig,
    hidden: Option<crate::train::distill::Hidden>,
}

/// The pre-training task over a corpus.
struct PretrainTask<'a> {
    obj: Objectives,
    /// Distillation: the teacher and the loss settings.
    teacher: Option<Teacher>,
    /// ELECTRA: the generator and the loss settings.
    electra: Option<crate::train::electra::Electra>,
    corpus: &'a Corpus,
    tok: &'a Tokenizer,
    stream: Shuffled<'a>,
    seq_len: usize,
    eval_set: Vec<Micro>,
    /// The bidirectional LM's forward and backward losses of this step, weighted by each
    /// micro-batch's share, and the weights' sum: the step's `loss_forward` / `loss_backward`.
    bilm_dirs: std::sync::Mutex<[f64; 3]>,
}

impl Task for PretrainTask<'_> {
    type Micro = Micro;

    fn examples_per_epoch(&mut self) -> Result<u64> {
        let mut packer = Packer::new(self.corpus, self.tok, self.obj.framing, self.seq_len);
        while packer.epoch == 0 {
            if packer.next_sequence()?.is_none() {
                break;
            }
        }
        Ok(packer.produced.saturating_sub(1).max(1))
    }

    fn seek(&mut self, consumed: u64) -> Result<()> {
        self.stream.skip(consumed)
    }

    fn next_micro(
        &mut self,
        n: usize,
        keep: std::ops::Range<usize>,
        rng: &mut rand::rngs::StdRng,
    ) -> Result<Micro> {
        let mut seqs = Vec::with_capacity(n);
        for _ in 0..n {
            match self.stream.next_sequence()? {
                Some(s) => seqs.push(s),
                None => return Err(Error::Input("the corpus holds no text".into())),
            }
        }
        self.obj.micro(seqs, keep, rng)
    }

    fn targets(&self, m: &Micro) -> usize {
        m.count
    }

    fn tokens(&self, m: &Micro) -> usize {
        m.batch.tokens()
    }

    fn loss(
        &self,
        p: &Pretrained,
        m: &Micro,
        grads: &mut Pretrained,
        grad_scale: f32,
        dropout_seed: Option<u64>,
    ) -> Result<f32> {
        if let Some(t) = &self.teacher {
            return distilled_mlm_loss(t, p, m, grads, grad_scale, dropout_seed);
        }
        if let Some(e) = &self.electra {
            return e.loss(p, &m.masked(), grads, grad_scale, dropout_seed);
        }
        match self.obj.objective {
            Objective::Mlm => mlm_loss(
                p,
                &m.batch,
                &m.positions,
                &m.targets,
                grads,
                grad_scale,
                dropout_seed,
            ),
            Objective::Clm => clm_loss(p, &m.batch, grads, grad_scale, dropout_seed),
            Objective::Bilm => {
                let (loss, dirs) = crate::train::backprop::bilm_loss(
                    p,
                    &m.batch,
                    grads,
                    grad_scale,
                    dropout_seed,
                )?;
                let mut acc = self.bilm_dirs.lock().unwrap_or_else(|e| e.into_inner());
                let w = grad_scale as f64;
                acc[0] += dirs[0] as f64 * w;
                acc[1] += dirs[1] as f64 * w;
                acc[2] += w;
                Ok(loss)
            }
            Objective::Electra => Err(Error::Input("the ELECTRA run has no generator".into())),
        }
    }

    fn position(&self) -> (u64, u64) {
        (self.stream.produced, self.stream.epoch())
    }

    fn evaluate(&mut self, p: &Pretrained) -> Result<Option<serde_json::Value>> {
        if self.eval_set.is_empty() {
            return Ok(None);
        }
        if let Some(e) = &self.electra {
            let set: Vec<_> = self.eval_set.iter().map(Micro::masked).collect();
            return e.evaluate(p, &set).map(Some);
        }
        evaluate(p, &self.obj, &self.eval_set, distributed::world()).map(Some)
    }

    fn evaluates_sharded(&self) -> bool {
        // ELECTRA's evaluation runs on rank 0.
        self.electra.is_none()
    }

    fn step_metrics(&self) -> Option<serde_json::Value> {
        let [f, b, w] =
            std::mem::take(&mut *self.bilm_dirs.lock().unwrap_or_else(|e| e.into_inner()));
        if w > 0.0 {
            return Some(serde_json::json!({ "loss_forward": f / w, "loss_backward": b / w }));
        }
        self.electra.as_ref().map(|e| e.take_step_metrics())
    }

    fn model_dir(&self, out: &Path) -> std::path::PathBuf {
        match &self.electra {
            Some(_) => crate::train::electra::Electra::model_dir(out),
            None => out.to_path_buf(),
        }
    }

    fn save_model(&self, p: &Pretrained, out: &Path) -> Result<()> {
        match &self.electra {
            Some(e) => e.save(p, out),
            None => crate::checkpoint::save(p, out, crate::checkpoint::SaveDtype::F32),
        }
    }

    fn auxiliary(&self) -> Option<&crate::train::auxiliary::Auxiliary> {
        if let Some(e) = &self.electra {
            return Some(e.auxiliary());
        }
        self.teacher
            .as_ref()?
            .hidden
            .as_ref()?
            .auxiliary()
            .map(|a| &**a)
    }
}

/// The teacher's masked-LM logits at `positions` of `batch` (no dropout): `[positions, vocab]`.
fn mlm_logits(p: &Pretrained, batch: &Batch, positions: &[usize]) -> Result<Vec<f32>> {
    let head = p
        .mlm_head
        .as_ref()
        .ok_or_else(|| Error::Input("the teacher has no masked-LM head".into()))?;
    let hidden = p.model.forward(batch, p.model.default_mask(), None)?;
    let rows: Vec<f32> = positions
        .iter()
        .flat_map(|&k| hidden.row(k).to_vec())
        .collect();
    head.forward(&rows, positions.len(), &p.model.embeddings.word)
}

/// Masked-LM distillation: at the masked positions the student learns the teacher's
/// vocabulary distributions (and, with `alpha_ce`, the original tokens), as DistilBERT was
/// trained.
fn distilled_mlm_loss(
    t: &Teacher,
    p: &Pretrained,
    m: &Micro,
    grads: &mut Pretrained,
    grad_scale: f32,
    dropout_seed: Option<u64>,
) -> Result<f32> {
    use crate::compress::distill::{distill_loss, Dist};
    let (teacher, d) = (&*t.model, &t.cfg);
    let soft = mlm_logits(teacher, &m.batch, &m.positions)?;
    let term = t.hidden.as_ref().map(|h| h.term(&m.batch)).transpose()?;
    let states = term
        .as_ref()
        .map(|f| f as crate::train::finetune::HiddenTerm);
    let v = p.config().vocab_size;
    let dists: Vec<Dist> = (0..m.positions.len()).map(|r| Dist::row(r, v)).collect();
    let targets = &m.targets;
    crate::train::backprop::mlm_loss_with(
        p,
        &m.batch,
        &m.positions,
        grads,
        grad_scale,
        dropout_seed,
        &|z, scale| {
            let gold = |zz: &[f32], gg: &mut [f32]| {
                gg.copy_from_slice(zz);
                let count = targets.iter().filter(|&&t| t != IGNORE).count().max(1);
                let (sum, _) = cross_entropy_in_place(gg, v, targets, IGNORE, 1.0 / count as f32)?;
                Ok((sum / count as f64) as f32)
            };
            let mut g = vec![0.0; z.len()];
            let loss = distill_loss(d, z, &soft, &dists, Some(&gold), &mut g)?;
            for (zi, gi) in z.iter_mut().zip(&g) {
                *zi = gi * scale;
            }
            Ok(loss)
        },
        states,
    )
}

/// Runs (or, with `resume`, continues) pre-training of the model in `model_dir`, writing
/// checkpoints, `metrics.jsonl` and the final model into `out`. `stop` requests a checkpoint
/// and a clean exit (Ctrl-C); `started` sees what is trained before the first step, `report`
/// every step and every metrics line.
pub fn pretrain(
    model_dir: &Path,
    out: &Path,
    cfg: &PretrainConfig,
    resume: bool,
    stop: &AtomicBool,
    started: impl FnOnce(&Started),
    report: impl FnMut(&Progress),
) -> Result<Summary> {
    cfg.validate()?;
    let mut cfg_seen = cfg.clone();
    if let Some(d) = cfg_seen.distill.as_mut() {
        d.validate()?;
        if cfg.objective != Objective::Mlm {
            return Err(Error::Input(
                "distillation on a corpus is masked-LM distillation (--task mlm)".into(),
            ));
        }
        // Another teacher is another run: its fingerprint is a compared setting.
        d.teacher_fingerprint = crate::checkpoint::fingerprint(&d.teacher)?;
    }
    let config = serde_json::to_value(&cfg_seen).map_err(|e| Error::Input(e.to_string()))?;
    // Held-out data only measures; it never changes the weights.
    let mut begun = start(
        model_dir,
        out,
        config,
        &["valid", "eval_sequences"],
        &cfg.train,
        resume,
    )?;
    crate::compress::refuse_training(&begun.p, "pre-training")?;
    let teacher = match &cfg.distill {
        Some(d) => {
            let t = crate::checkpoint::load(&d.teacher)?;
            crate::train::distill::check_teacher(&t, &begun.p, "mlm")?;
            if !resume && !d.student_layers.is_empty() {
                crate::train::distill::cut_layers(&mut begun.p, &d.student_layers)?;
            }
            let model = std::sync::Arc::new(t);
            let hidden = crate::train::distill::Hidden::new(&model, &begun.p, d, cfg.train.seed)?;
            Some(Teacher {
                model,
                cfg: d.clone(),
                hidden,
            })
        }
        None => None,
    };
    let electra = match cfg.objective {
        Objective::Electra => {
            crate::train::electra::generator_config(begun.p.config(), cfg.generator_scale)?;
            if begun.p.rtd_head.is_none() {
                crate::train::electra::add_discriminator_head(
                    &mut begun.p,
                    mix(cfg.train.seed ^ 0xD15C),
                );
            }
            Some(crate::train::electra::Electra::new(
                &begun.p,
                cfg.generator_scale,
                cfg.disc_weight,
                mix(cfg.train.seed ^ 0x6E4E),
            )?)
        }
        _ => None,
    };
    let p = &begun.p;
    let obj = Objectives::new(p, cfg)?;
    let tok = p.tokenizer()?.clone();
    let (corpus, held_out) = {
        let all = Corpus::new(cfg.corpus.clone(), &cfg.text_field)?;
        match cfg.valid_fraction {
            Some(f) => {
                let (train, valid) = all.split(f, cfg.train.seed)?;
                (train, Some(valid))
            }
            None if cfg.valid.is_empty() => (all, None),
            None => (all, Some(Corpus::new(cfg.valid.clone(), &cfg.text_field)?)),
        }
    };
    let eval_set = match held_out {
        Some(vc) => held_out_set(&obj, &vc, &tok, cfg)?,
        None => Vec::new(),
    };
    let mut task = PretrainTask {
        teacher,
        electra,
        stream: Shuffled::new(
            Packer::new(&corpus, &tok, obj.framing, cfg.seq_len),
            cfg.shuffle_buffer,
            mix(cfg.train.seed ^ 0x054A_FF1E),
        ),
        obj,
        corpus: &corpus,
        tok: &tok,
        seq_len: cfg.seq_len,
        eval_set,
        bilm_dirs: Default::default(),
    };
    let notes = std::mem::take(&mut begun.notes);
    started(&Started::full(&mut begun.p, notes));
    run(begun, &mut task, &cfg.train, None, stop, report)
}

//! Knowledge distillation as a fine-tuning run (`kiln distill`): the student is the teacher cut
//! to some of its blocks (or any model directory), the teacher's output distributions on every
//! training example are computed once (the teacher runs without dropout and the examples repeat
//! unchanged across epochs, so its outputs are cached), and each task's head trains on
//! `alpha_kd · T² · KL(teacher ‖ student) + alpha_ce · cross-entropy(gold)`.

use super::classify::{batch_of, encode_examples, Example, Fields};
use super::finetune::{ExampleTask, HiddenTerm, Order};
use super::qa::{qa_batch, span_ce, QaFeature};
use super::tag::{encode_tag_examples, tag_batch, LongSentences, TagExample};
use super::FinetuneConfig;
use crate::checkpoint::Pretrained;
use crate::compress::distill::{
    attention_loss, distill_loss, hidden_loss, layer_map, projected_hidden_loss, Dist,
    DistillConfig, GoldLoss, Projection,
};
use crate::data::records::Record;
use crate::engine::attention::attention_probs;
use crate::engine::grad::cross_entropy;
use crate::error::{Error, Result};
use crate::heads::HeadKind;
use crate::infer::classify::sequence_logits;
use crate::infer::qa::span_logits;
use crate::infer::tag::token_logits;
use crate::model::Batch;
use crate::train::auxiliary::Auxiliary;
use crate::train::backprop::IGNORE;
use crate::train::backprop::{Activations, LayerGrads};
use std::sync::Arc;

/// A training example with the teacher's logits for it (its head's rows, in order).
#[derive(Clone)]
pub(crate) struct Taught<E> {
    pub ex: E,
    /// Teacher logits; a row of NaN marks a position the soft-target loss skips.
    pub soft: Vec<f32>,
}

/// A micro-batch's gold targets (as the task makes them) and the teacher's logits for its rows.
pub(crate) type Soft<T> = (Vec<T>, Vec<f32>);

/// A task whose examples carry the teacher's logits.
pub(crate) type TaughtTask<E, T> = ExampleTask<Taught<E>, Soft<T>>;

/// A head's loss given its targets and the teacher's logits.
type TaughtLoss<T> = Box<
    dyn Fn(&Pretrained, &Batch, &[T], &[f32], &mut Pretrained, f32, Option<u64>) -> Result<f32>
        + Send
        + Sync,
>;

/// Cuts `p` to the blocks `layers` (0-based, increasing), keeping its embeddings and heads: the
/// student DistilBERT was initialised as.
pub fn cut_layers(p: &mut Pretrained, layers: &[usize]) -> Result<()> {
    if p.config().shares_layers() {
        return Err(Error::Input(
            "--student-layers: the model's layers share one set of weights (ALBERT); there is no layer to cut — give a student with its own blocks".into(),
        ));
    }
    let n = p.model.blocks.len();
    if layers.is_empty() {
        return Err(Error::Input("--student-layers: no layer given".into()));
    }
    if let Some(&bad) = layers.iter().find(|&&l| l >= n) {
        return Err(Error::Input(format!(
            "--student-layers: layer {bad} does not exist; the teacher has layers 0..{}",
            n - 1
        )));
    }
    if layers.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Error::Input(format!(
            "--student-layers {}: give each layer once, in increasing order",
            layers
                .iter()
                .map(|l| l.to_string())
                .collect::<Vec<_>>()
                .join(",")
        )));
    }
    let blocks = std::mem::take(&mut p.model.blocks);
    p.model.blocks = blocks
        .into_iter()
        .enumerate()
        .filter(|(i, _)| layers.contains(i))
        .map(|(_, b)| b)
        .collect();
    p.model.config.keep_layers(layers);
    Ok(())
}

/// Checks that teacher and student read the same token ids and that the teacher has the task's
/// head, so its logits line up with the student's.
pub fn check_teacher(teacher: &Pretrained, student: &Pretrained, task: &str) -> Result<()> {
    let kind = match task {
        "classify" => Some(HeadKind::Sequence),
        "tag" => Some(HeadKind::Token),
        "qa" => Some(HeadKind::Span),
        "mlm" => None,
        other => {
            return Err(Error::Input(format!(
                "--task {other}: kiln distill trains classify, tag, qa or mlm students"
            )))
        }
    };
    if kind.is_none() && (teacher.mlm_head.is_none() || student.mlm_head.is_none()) {
        let which = if teacher.mlm_head.is_none() {
            format!("--teacher {}", teacher.dir.display())
        } else {
            format!("the student {}", student.dir.display())
        };
        return Err(Error::Input(format!(
            "{which} has no masked-LM head; --task mlm distils a BertForMaskedLM teacher into a BertForMaskedLM student"
        )));
    }
    if kind.is_some() && teacher.task.as_ref().map(|t| t.kind) != kind {
        return Err(Error::Input(format!(
            "--teacher {} has {}; distilling --task {task} needs a teacher fine-tuned for it",
            teacher.dir.display(),
            teacher.head_description()
        )));
    }
    if teacher.task.as_ref().is_some_and(|t| t.labels.regression) {
        return Err(Error::Input(
            "the teacher is a regression model; distillation matches class distributions".into(),
        ));
    }
    let (tt, st) = (teacher.tokenizer()?, student.tokenizer()?);
    if tt.inner().get_vocab(true) != st.inner().get_vocab(true) {
        return Err(Error::Input(format!(
            "the student's tokenizer ({}, {} tokens) differs from the teacher's ({}, {} tokens); distillation needs both to read the same token ids",
            st.source().display(),
            st.vocab_size(),
            tt.source().display(),
            tt.vocab_size()
        )));
    }
    Ok(())
}

/// Checks that the student's head predicts the teacher's labels, in the same order.
fn same_labels(teacher: &Pretrained, student: &Pretrained) -> Result<()> {
    let names = |p: &Pretrained| p.task.as_ref().map(|t| t.labels.names.clone());
    if names(teacher) != names(student) {
        return Err(Error::Input(format!(
            "the teacher predicts the labels {:?}, the student's head {:?}; give --labels with the teacher's label names in its order",
            names(teacher).unwrap_or_default(),
            names(student).unwrap_or_default()
        )));
    }
    Ok(())
}

/// The teacher's logits for each of `examples`, computed in packed chunks; `rows(e)` is the
/// number of logit rows of an example (sequences: 1, tokens: its length).
fn teacher_logits<E>(
    teacher: &Pretrained,
    examples: &[E],
    batch: impl Fn(&[&E]) -> Result<Batch>,
    logits: impl Fn(&Pretrained, &Batch) -> Result<Vec<f32>>,
    width: usize,
    rows: impl Fn(&E) -> usize,
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(64) {
        let refs: Vec<&E> = chunk.iter().collect();
        let z = logits(teacher, &batch(&refs)?)?;
        let mut at = 0;
        for e in chunk {
            let n = rows(e) * width;
            out.push(z[at..at + n].to_vec());
            at += n;
        }
    }
    Ok(out)
}

/// The task with each training example carrying the teacher's logits, and `loss` in place of
/// the gold-label one; `count` weighs a micro-batch by its soft-target distributions.
fn taught<E: Clone + 'static, T: 'static>(
    inner: ExampleTask<E, T>,
    soft: Vec<Vec<f32>>,
    aux: Option<Arc<Auxiliary>>,
    count: impl Fn(&[T], &[f32]) -> usize + Send + Sync + 'static,
    loss: TaughtLoss<T>,
) -> ExampleTask<Taught<E>, Soft<T>> {
    let ExampleTask {
        train,
        valid,
        order,
        metric,
        micro,
        evaluate,
        sharded_eval,
        ..
    } = inner;
    let train = train
        .into_iter()
        .zip(soft)
        .map(|(ex, soft)| Taught { ex, soft })
        .collect();
    let valid = valid
        .into_iter()
        .map(|ex| Taught {
            ex,
            soft: Vec::new(),
        })
        .collect();
    ExampleTask {
        train,
        valid,
        order,
        metric,
        micro: Box::new(move |refs: &[&Taught<E>]| {
            let inner: Vec<&E> = refs.iter().map(|t| &t.ex).collect();
            let (batch, targets) = micro(&inner)?;
            let soft = refs.iter().flat_map(|t| t.soft.iter().copied()).collect();
            Ok((batch, vec![(targets, soft)]))
        }),
        count: Box::new(move |m: &[Soft<T>]| m.iter().map(|(t, s)| count(t, s)).sum()),
        loss: Box::new(move |p, batch, m: &[Soft<T>], grads, scale, seed| {
            let (targets, soft) = m
                .first()
                .ok_or_else(|| Error::shape("distill", "an empty micro-batch"))?;
            loss(p, batch, targets, soft, grads, scale, seed)
        }),
        evaluate: Box::new(move |p, v: &[Taught<E>]| {
            let inner: Vec<E> = v.iter().map(|t| t.ex.clone()).collect();
            evaluate(p, &inner)
        }),
        aux,
        sharded_eval,
    }
}

/// Distillation's terms on intermediate states: the teacher's block outputs and attention
/// probabilities on each micro-batch (run afresh: caching them would keep every layer's states
/// of every example) against the student's mapped blocks' — hidden states by cosine or MSE,
/// attention distributions by KL.
pub(crate) struct Hidden {
    teacher: Arc<Pretrained>,
    /// Per student block, the teacher block it learns from.
    map: Vec<usize>,
    alpha: f32,
    mse: bool,
    alpha_attn: f32,
    /// Per student block, its heads (the attention term compares head by head).
    heads: Vec<usize>,
    /// The student's head width (the teacher's may differ).
    head_dim: usize,
    /// The learned projection from the student's hidden width to the teacher's, when they
    /// differ (`distill.proj.weight` `[h_t, h_s]`, `distill.proj.bias`); trained with the
    /// student, never saved with it.
    proj: Option<Arc<Auxiliary>>,
}

const PROJ_W: &str = "distill.proj.weight";
const PROJ_B: &str = "distill.proj.bias";

impl Hidden {
    /// The terms of a run, or `None` when `alpha_hidden` and `alpha_attn` are 0.
    /// `seed` initialises the projection between widths, if one is needed.
    pub(crate) fn new(
        teacher: &Arc<Pretrained>,
        student: &Pretrained,
        d: &DistillConfig,
        seed: u64,
    ) -> Result<Option<Hidden>> {
        if d.alpha_hidden == 0.0 && d.alpha_attn == 0.0 {
            return Ok(None);
        }
        let (hs, ht) = (student.config().hidden_size, teacher.config().hidden_size);
        // nn.Linear's initialisation: uniform in ±1/√fan_in.
        let proj = (d.alpha_hidden > 0.0 && hs != ht).then(|| {
            use rand::{Rng, SeedableRng};
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5052_4f4a);
            let bound = 1.0 / (hs as f32).sqrt();
            let mut draw =
                |n: usize| -> Vec<f32> { (0..n).map(|_| rng.gen_range(-bound..bound)).collect() };
            let (w, b) = (draw(ht * hs), draw(ht));
            Arc::new(Auxiliary::new(vec![
                (PROJ_W.into(), w, true),
                (PROJ_B.into(), b, false),
            ]))
        });
        let map = layer_map(
            &d.student_layers,
            student.config().num_layers,
            teacher.config().num_layers,
        );
        let (sc, tc) = (student.config(), teacher.config());
        let heads: Vec<usize> = student.model.layers().map(|b| b.heads(sc)).collect();
        if d.alpha_attn > 0.0 {
            for (i, &tl) in map.iter().enumerate() {
                let th = teacher.model.layer(tl).heads(tc);
                if heads[i] != th {
                    return Err(Error::Input(format!(
                        "--alpha-attn: student block {i} has {} attention heads, the teacher block {tl} it learns from has {th}; attention maps are compared head by head",
                        heads[i]
                    )));
                }
            }
        }
        Ok(Some(Hidden {
            teacher: teacher.clone(),
            map,
            alpha: d.alpha_hidden,
            mse: d.hidden_loss == "mse",
            alpha_attn: d.alpha_attn,
            heads,
            head_dim: sc.head_dim(),
            proj,
        }))
    }

    /// The parameters the term trains beside the student (the projection), if any.
    pub(crate) fn auxiliary(&self) -> Option<&Arc<Auxiliary>> {
        self.proj.as_ref()
    }

    /// The terms on `batch`: `alpha_hidden ·` the mean over mapped blocks of the hidden loss
    /// `+ alpha_attn ·` the mean over mapped blocks of the attention loss; gradients scaled by
    /// the second argument.
    pub(crate) fn term<'a>(
        &'a self,
        batch: &'a Batch,
    ) -> Result<impl Fn(&Activations, f32) -> Result<(f32, LayerGrads)> + 'a> {
        let t = &self.teacher.model;
        let mask = t.default_mask();
        let (_, teacher_acts) = crate::train::backprop::forward(t, batch, mask, None)?;
        let tc = self.teacher.config();
        Ok(move |acts: &Activations, grad_scale: f32| {
            let ht = tc.hidden_size;
            let per_block = 1.0 / self.map.len().max(1) as f32;
            let mut grads = LayerGrads {
                outputs: vec![None; acts.layers()],
                scores: vec![None; acts.layers()],
            };
            let mut loss = 0.0;
            let probs = |qkv: &[f32], heads: usize, head_dim: usize| {
                attention_probs(
                    qkv,
                    &batch.seq_lens,
                    heads,
                    head_dim,
                    mask,
                    batch.key_mask.as_deref(),
                    batch.prefix_lens.as_deref(),
                )
            };
            for (i, &tl) in self.map.iter().enumerate() {
                if self.alpha > 0.0 {
                    let w = self.alpha * per_block;
                    let s = acts.block_output(i);
                    let target = teacher_acts.block_output(tl);
                    let mut g = vec![0.0; s.len()];
                    let gw = w * grad_scale;
                    let l = match &self.proj {
                        None => hidden_loss(s, target, ht, self.mse, gw, &mut g)?,
                        Some(aux) => aux.with(|ps| {
                            let hs = s.len() / batch.tokens().max(1);
                            let (mut pw, mut pb) = (None, None);
                            for (n, p) in ps.iter_mut() {
                                match n.as_str() {
                                    PROJ_W => pw = Some(p),
                                    PROJ_B => pb = Some(p),
                                    _ => {}
                                }
                            }
                            let (Some(pw), Some(pb)) = (pw, pb) else {
                                return Err(Error::shape("distill", "projection missing"));
                            };
                            let proj = Projection {
                                weight: &pw.value,
                                bias: &pb.value,
                                dweight: &mut pw.grad,
                                dbias: &mut pb.grad,
                            };
                            projected_hidden_loss(s, target, hs, ht, proj, self.mse, gw, &mut g)
                        })?,
                    };
                    loss += w * l;
                    grads.outputs[i] = Some(g);
                }
                if self.alpha_attn > 0.0 {
                    let w = self.alpha_attn * per_block;
                    let heads = self.heads[i];
                    let ps = probs(acts.qkv(i), heads, self.head_dim)?;
                    let pt = probs(teacher_acts.qkv(tl), heads, tc.head_dim())?;
                    let mut g = vec![0.0; ps.len()];
                    let gw = w * grad_scale;
                    loss += w * attention_loss(&ps, &pt, &batch.seq_lens, heads, gw, &mut g)?;
                    grads.scores[i] = Some(g);
                }
            }
            Ok((loss, grads))
        })
    }
}

/// Rows of `k` logits whose teacher row is not marked (NaN): the soft-target distributions.
fn marked_rows(teacher: &[f32], k: usize) -> Vec<Dist> {
    (0..teacher.len() / k)
        .filter(|&r| !teacher[r * k].is_nan())
        .map(|r| Dist::row(r, k))
        .collect()
}

/// Unlabelled examples to add: the first `ratio × labelled` records of the `--unlabeled` file.
fn unlabeled_records(
    d: &DistillConfig,
    labelled: usize,
    skip_invalid: bool,
) -> Result<Vec<Record>> {
    let Some(path) = &d.unlabeled else {
        return Ok(Vec::new());
    };
    let mut data = super::classify::read_data(path, skip_invalid)?;
    let n = ((labelled as f64) * d.unlabeled_ratio as f64).round() as usize;
    data.records.truncate(n);
    Ok(data.records)
}

/// Sequence classification distilled: soft targets are the teacher's class distributions.
pub(crate) fn classify(
    student: &mut Pretrained,
    teacher: &Arc<Pretrained>,
    cfg: &FinetuneConfig,
    d: &DistillConfig,
    records: &[Record],
    valid: &[Record],
    resume: bool,
) -> Result<TaughtTask<Example, f32>> {
    let names = teacher.task.as_ref().map(|t| t.labels.names.clone());
    let mut task = super::classify::prepare(student, cfg, records, valid, resume, names)?;
    same_labels(teacher, student)?;
    let unlabeled = unlabeled_records(d, task.train.len(), cfg.skip_invalid)?;
    if !unlabeled.is_empty() {
        let fields = Fields::resolve(
            cfg.text_field.as_deref(),
            cfg.text_b_field.as_deref(),
            &cfg.label_field,
            unlabeled.first(),
        );
        let max_len = cfg.max_length.min(student.config().max_positions);
        let extra = encode_examples(student.tokenizer()?, &unlabeled, &fields, None, max_len)?;
        task.train.extend(extra);
        task.order = Order::new(task.train.len(), cfg.train.seed);
    }
    let k = teacher.task.as_ref().map_or(0, |t| t.linear.out_features());
    let soft = teacher_logits(teacher, &task.train, batch_of, sequence_logits, k, |_| 1)?;
    let hidden = Hidden::new(teacher, student, d, cfg.train.seed)?;
    let aux = hidden.as_ref().and_then(Hidden::auxiliary).cloned();
    let d = d.clone();
    Ok(taught(
        task,
        soft,
        aux,
        |labels, _| labels.len(),
        Box::new(
            move |p, batch, labels: &[f32], teacher, grads, scale, seed| {
                let n = labels.len();
                let dists: Vec<Dist> = (0..n).map(|r| Dist::row(r, k)).collect();
                // Unlabelled examples carry a negative label: ignored by the gold loss.
                let targets: Vec<i64> = labels
                    .iter()
                    .map(|&l| if l < 0.0 { -100 } else { l as i64 })
                    .collect();
                let gold =
                    |z: &[f32], g: &mut [f32]| Ok(cross_entropy(z, k, &targets, -100, Some(g))?.0);
                let gold: Option<GoldLoss> = targets.iter().any(|&t| t >= 0).then_some(&gold);
                let term = hidden.as_ref().map(|h| h.term(batch)).transpose()?;
                let states = term.as_ref().map(|f| f as HiddenTerm);
                super::classify::sequence_loss_with(
                    p,
                    batch,
                    grads,
                    scale,
                    seed,
                    &|z, g| distill_loss(&d, z, teacher, &dists, gold, g),
                    states,
                )
            },
        ),
    ))
}

/// Tagging distilled: soft targets are the teacher's tag distributions on every word piece
/// (special tokens skipped).
pub(crate) fn tag(
    student: &mut Pretrained,
    teacher: &Arc<Pretrained>,
    cfg: &FinetuneConfig,
    d: &DistillConfig,
    records: &[Record],
    valid: &[Record],
    resume: bool,
) -> Result<TaughtTask<TagExample, i64>> {
    let names = teacher.task.as_ref().map(|t| t.labels.names.clone());
    let mut task = super::tag::prepare(student, cfg, records, valid, resume, names)?;
    same_labels(teacher, student)?;
    let unlabeled = unlabeled_records(d, task.train.len(), cfg.skip_invalid)?;
    if !unlabeled.is_empty() {
        let max_len = cfg.max_length.min(student.config().max_positions);
        let extra = encode_tag_examples(
            student.tokenizer()?,
            &unlabeled,
            &cfg.tokens_field,
            &cfg.tag_field,
            None,
            max_len,
            cfg.label_all_pieces,
            LongSentences::Truncate,
        )?;
        task.train.extend(extra);
        task.order = Order::new(task.train.len(), cfg.train.seed);
    }
    let k = teacher.task.as_ref().map_or(0, |t| t.linear.out_features());
    let mut soft = teacher_logits(teacher, &task.train, tag_batch, token_logits, k, |e| {
        e.ids.len()
    })?;
    for (s, e) in soft.iter_mut().zip(&task.train) {
        for (row, w) in s.chunks_mut(k).zip(&e.word_ids) {
            if w.is_none() {
                row.fill(f32::NAN);
            }
        }
    }
    let hidden = Hidden::new(teacher, student, d, cfg.train.seed)?;
    let aux = hidden.as_ref().and_then(Hidden::auxiliary).cloned();
    let d = d.clone();
    Ok(taught(
        task,
        soft,
        aux,
        move |_, soft| soft.chunks(k.max(1)).filter(|r| !r[0].is_nan()).count(),
        Box::new(
            move |p, batch, targets: &[i64], teacher, grads, scale, seed| {
                let dists = marked_rows(teacher, k);
                let gold =
                    |z: &[f32], g: &mut [f32]| Ok(cross_entropy(z, k, targets, IGNORE, Some(g))?.0);
                let gold: Option<GoldLoss> = targets.iter().any(|&t| t != IGNORE).then_some(&gold);
                let term = hidden.as_ref().map(|h| h.term(batch)).transpose()?;
                let states = term.as_ref().map(|f| f as HiddenTerm);
                super::tag::token_loss_with(
                    p,
                    batch,
                    grads,
                    scale,
                    seed,
                    &|z, g| distill_loss(&d, z, teacher, &dists, gold, g),
                    states,
                )
            },
        ),
    ))
}

/// Extractive QA distilled: soft targets are the teacher's start and end distributions over
/// each window's tokens.
pub(crate) fn qa(
    student: &mut Pretrained,
    teacher: &Arc<Pretrained>,
    cfg: &FinetuneConfig,
    d: &DistillConfig,
    records: &[Record],
    valid: &[Record],
    resume: bool,
) -> Result<TaughtTask<QaFeature, (usize, usize)>> {
    if d.unlabeled.is_some() {
        return Err(Error::Input(
            "--unlabeled: distilling qa learns from the training questions only (unlabelled data is for classify and tag)".into(),
        ));
    }
    let task = super::qa::prepare(student, cfg, records, valid, resume)?;
    let soft = teacher_logits(teacher, &task.train, qa_batch, span_logits, 2, |f| {
        f.ids.len()
    })?;
    let hidden = Hidden::new(teacher, student, d, cfg.train.seed)?;
    let aux = hidden.as_ref().and_then(Hidden::auxiliary).cloned();
    let d = d.clone();
    Ok(taught(
        task,
        soft,
        aux,
        |targets, _| targets.len(),
        Box::new(
            move |p, batch, targets: &[(usize, usize)], teacher, grads, scale, seed| {
                let n = targets.len();
                let dists: Vec<Dist> = batch
                    .offsets()
                    .iter()
                    .zip(&batch.seq_lens)
                    .flat_map(|(&o, &l)| {
                        (0..2).map(move |col| Dist {
                            start: o * 2 + col,
                            stride: 2,
                            len: l,
                        })
                    })
                    .collect();
                let gold = |z: &[f32], g: &mut [f32]| {
                    let loss = span_ce(z, batch, targets, Some(&mut *g))?;
                    g.iter_mut().for_each(|v| *v /= (2 * n) as f32);
                    Ok(loss)
                };
                let term = hidden.as_ref().map(|h| h.term(batch)).transpose()?;
                let states = term.as_ref().map(|f| f as HiddenTerm);
                super::qa::span_loss_with(
                    p,
                    batch,
                    grads,
                    scale,
                    seed,
                    &|z, g| distill_loss(&d, z, teacher, &dists, Some(&gold), g),
                    states,
                )
            },
        ),
    ))
}

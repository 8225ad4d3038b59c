//! Knowledge distillation's losses: the student matches the teacher's softened output
//! distributions (Hinton et al. 2015), as DistilBERT and transformers' distillation scripts
//! compute it: `T² · KL(softmax(t/T) ‖ softmax(s/T))`, averaged over distributions
//! (`reduction="batchmean"`), where a distribution is one softmax of the head: a sequence's
//! classes, a token's tags, a QA window's start (or end) positions.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// The distillation settings a run is made with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistillConfig {
    /// The teacher model directory (a model with the task's head).
    pub teacher: std::path::PathBuf,
    /// The student is the teacher cut to these blocks (0-based, in order), with the teacher's
    /// embeddings and head, as DistilBERT was initialised; empty: the student is `--student`
    /// (or, for a run given no student, the teacher's full architecture).
    pub student_layers: Vec<usize>,
    /// Weight of the soft-target loss `T² · KL(teacher ‖ student)`.
    pub alpha_kd: f32,
    /// Weight of the cross-entropy on gold labels (where the data has them).
    pub alpha_ce: f32,
    /// Softmax temperature of both distributions in the soft-target loss.
    pub temperature: f32,
    /// Weight of the loss between mapped hidden states (block outputs): student block `i`
    /// against the teacher block it was cut from (`student_layers[i]`), or, for a `--student`
    /// model, teacher block `(i + 1) · L_t / L_s − 1`.
    pub alpha_hidden: f32,
    /// `cosine` (1 − cos per token, DistilBERT) or `mse` (TinyBERT) for the hidden-state loss.
    pub hidden_loss: String,
    /// Weight of the attention-transfer loss: KL(teacher ‖ student) between the attention
    /// distributions of each query and head in mapped blocks (MiniLM, TinyBERT), averaged.
    pub alpha_attn: f32,
    /// Texts without labels: the teacher's soft targets are the student's only signal on them.
    pub unlabeled: Option<std::path::PathBuf>,
    /// Unlabelled examples added per labelled example (0.5: half as many as the labelled
    /// data; the first ones of the file).
    pub unlabeled_ratio: f32,
    /// The teacher's fingerprint (content hash), so a resumed run checks it has the same one.
    pub teacher_fingerprint: String,
}

impl Default for DistillConfig {
    fn default() -> Self {
        DistillConfig {
            teacher: Default::default(),
            student_layers: Vec::new(),
            alpha_kd: 1.0,
            alpha_ce: 0.0,
            temperature: 2.0,
            alpha_hidden: 0.0,
            hidden_loss: "cosine".into(),
            alpha_attn: 0.0,
            unlabeled: None,
            unlabeled_ratio: 1.0,
            teacher_fingerprint: String::new(),
        }
    }
}

impl DistillConfig {
    /// Refuses settings that cannot train, naming the flag.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(Error::Input(format!(
                "--temperature {} must be a positive number",
                self.temperature
            )));
        }
        for (flag, v) in [("--alpha-kd", self.alpha_kd), ("--alpha-ce", self.alpha_ce)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::Input(format!("{flag} {v} must be zero or positive")));
            }
        }
        for (flag, v) in [
            ("--alpha-hidden", self.alpha_hidden),
            ("--alpha-attn", self.alpha_attn),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::Input(format!("{flag} {v} must be zero or positive")));
            }
        }
        if !["cosine", "mse"].contains(&self.hidden_loss.as_str()) {
            return Err(Error::Input(format!(
                "--hidden-loss {}: cosine or mse",
                self.hidden_loss
            )));
        }
        if [
            self.alpha_kd,
            self.alpha_ce,
            self.alpha_hidden,
            self.alpha_attn,
        ] == [0.0; 4]
        {
            return Err(Error::Input(
                "--alpha-kd, --alpha-ce, --alpha-hidden and --alpha-attn are all 0: the student would learn nothing".into(),
            ));
        }
        if !(self.unlabeled_ratio.is_finite() && self.unlabeled_ratio >= 0.0) {
            return Err(Error::Input(format!(
                "--unlabeled-ratio {} must be zero or positive",
                self.unlabeled_ratio
            )));
        }
        Ok(())
    }
}

/// One softmax of a head's logits: `len` values starting at `start`, `stride` apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dist {
    /// Index of the first logit.
    pub start: usize,
    /// Distance between consecutive logits of the distribution.
    pub stride: usize,
    /// Number of values.
    pub len: usize,
}

impl Dist {
    /// A row of `k` contiguous values (classes of a sequence, tags of a token).
    pub fn row(r: usize, k: usize) -> Dist {
        Dist {
            start: r * k,
            stride: 1,
            len: k,
        }
    }

    fn index(&self, i: usize) -> usize {
        self.start + i * self.stride
    }
}

/// Log-softmax of `z / t` over a distribution's values, in f64.
fn log_softmax(z: &[f32], d: &Dist, t: f32) -> Vec<f64> {
    let v: Vec<f64> = (0..d.len).map(|i| (z[d.index(i)] / t) as f64).collect();
    let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + v.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
    v.iter().map(|x| x - lse).collect()
}

/// The soft-target loss `T² · KL(softmax(teacher/T) ‖ softmax(student/T))` averaged over
/// `dists` (the same positions in both logit buffers). With `grad`, adds `weight ·` its
/// gradient with respect to the student's logits, `T · (p_student − p_teacher) / n`, into it.
pub fn kd_loss(
    student: &[f32],
    teacher: &[f32],
    dists: &[Dist],
    temperature: f32,
    weight: f32,
    mut grad: Option<&mut [f32]>,
) -> Result<f32> {
    if student.len() != teacher.len() {
        return Err(Error::shape(
            "kd_loss",
            format!(
                "the student has {} logits where the teacher has {}",
                student.len(),
                teacher.len()
            ),
        ));
    }
    if let Some(d) = dists
        .iter()
        .find(|d| d.len == 0 || d.index(d.len - 1) >= student.len())
    {
        return Err(Error::shape(
            "kd_loss",
            format!("distribution {d:?} outside the logits"),
        ));
    }
    let n = dists.len().max(1) as f64;
    let t = temperature;
    // Every row of a [rows, k] buffer (masked-LM vocabularies, tags): rows in parallel.
    let k = dists.first().map_or(0, |d| d.len);
    let all_rows = k > 0
        && dists.len() * k == student.len()
        && dists.iter().enumerate().all(|(r, d)| *d == Dist::row(r, k));
    if all_rows {
        use rayon::prelude::*;
        let c = (weight * t) as f64 / n;
        let one = |r: usize, g: Option<&mut [f32]>| {
            let d = Dist::row(r, k);
            let (ls, lt) = (log_softmax(student, &d, t), log_softmax(teacher, &d, t));
            if let Some(g) = g {
                for ((o, a), b) in g.iter_mut().zip(&ls).zip(&lt) {
                    *o += (c * (a.exp() - b.exp())) as f32;
                }
            }
            lt.iter()
                .zip(&ls)
                .map(|(a, b)| a.exp() * (a - b))
                .sum::<f64>()
        };
        let kls: Vec<f64> = match grad {
            Some(g) => g
                .par_chunks_mut(k)
                .enumerate()
                .map(|(r, gr)| one(r, Some(gr)))
                .collect(),
            None => (0..dists.len())
                .into_par_iter()
                .map(|r| one(r, None))
                .collect(),
        };
        // Summed in row order: the same total whatever the thread count.
        let total: f64 = kls.iter().sum();
        return Ok((t as f64 * t as f64 * total / n) as f32);
    }
    let mut total = 0.0f64;
    for d in dists {
        let ls = log_softmax(student, d, t);
        let lt = log_softmax(teacher, d, t);
        let kl: f64 = lt.iter().zip(&ls).map(|(a, b)| a.exp() * (a - b)).sum();
        total += kl;
        if let Some(g) = grad.as_deref_mut() {
            let c = (weight * t) as f64 / n;
            for i in 0..d.len {
                g[d.index(i)] += (c * (ls[i].exp() - lt[i].exp())) as f32;
            }
        }
    }
    Ok((t as f64 * t as f64 * total / n) as f32)
}

/// A gold-label loss: returns the mean loss of the logits and writes its gradient.
pub type GoldLoss<'a> = &'a dyn Fn(&[f32], &mut [f32]) -> Result<f32>;

/// The loss a distilled head trains on, `alpha_ce · gold + alpha_kd · soft-target loss`, its
/// gradient with respect to the logits added into `dlogits`. `gold` returns the mean gold loss
/// and writes its gradient (`None`: no gold labels in this micro-batch).
pub fn distill_loss(
    d: &DistillConfig,
    logits: &[f32],
    teacher: &[f32],
    dists: &[Dist],
    gold: Option<GoldLoss>,
    dlogits: &mut [f32],
) -> Result<f32> {
    let mut loss = 0.0;
    if let Some(gold) = gold.filter(|_| d.alpha_ce > 0.0) {
        let mut g = vec![0.0; logits.len()];
        loss += d.alpha_ce * gold(logits, &mut g)?;
        for (o, v) in dlogits.iter_mut().zip(&g) {
            *o += d.alpha_ce * v;
        }
    }
    if d.alpha_kd > 0.0 {
        loss += d.alpha_kd
            * kd_loss(
                logits,
                teacher,
                dists,
                d.temperature,
                d.alpha_kd,
                Some(dlogits),
            )?;
    }
    Ok(loss)
}

/// The loss between a student's and a teacher's hidden states (`[tokens, h]` each): the mean
/// over tokens of `1 − cos(s, t)` (cosine) or the mean squared difference over every value
/// (`mse`). Adds `weight ·` its gradient with respect to `s` into `grad`.
pub fn hidden_loss(
    s: &[f32],
    t: &[f32],
    h: usize,
    mse: bool,
    weight: f32,
    grad: &mut [f32],
) -> Result<f32> {
    if s.len() != t.len() || grad.len() != s.len() || h == 0 || !s.len().is_multiple_of(h) {
        return Err(Error::shape(
            "hidden_loss",
            format!(
                "student states of {} values, teacher's {}, width {h}",
                s.len(),
                t.len()
            ),
        ));
    }
    let rows = (s.len() / h).max(1);
    if mse {
        let n = s.len().max(1) as f64;
        let mut total = 0.0f64;
        for ((g, &a), &b) in grad.iter_mut().zip(s).zip(t) {
            let d = (a - b) as f64;
            total += d * d;
            *g += (weight as f64 * 2.0 * d / n) as f32;
        }
        return Ok((total / n) as f32);
    }
    let mut total = 0.0f64;
    for ((sr, tr), gr) in s.chunks(h).zip(t.chunks(h)).zip(grad.chunks_mut(h)) {
        let dot: f64 = sr.iter().zip(tr).map(|(&a, &b)| a as f64 * b as f64).sum();
        let ns = sr
            .iter()
            .map(|&a| (a as f64).powi(2))
            .sum::<f64>()
            .sqrt()
            .max(1e-12);
        let nt = tr
            .iter()
            .map(|&b| (b as f64).powi(2))
            .sum::<f64>()
            .sqrt()
            .max(1e-12);
        let cos = dot / (ns * nt);
        total += 1.0 - cos;
        // d(1 − cos)/ds = −(t / (|s||t|) − cos · s / |s|²), averaged over rows.
        let c = weight as f64 / rows as f64;
        for ((g, &a), &b) in gr.iter_mut().zip(sr).zip(tr) {
            *g -= (c * (b as f64 / (ns * nt) - cos * a as f64 / (ns * ns))) as f32;
        }
    }
    Ok((total / rows as f64) as f32)
}

/// A learned projection from the student's hidden width to the teacher's (TinyBERT's `W_h`,
/// an `nn.Linear(h_student, h_teacher)`): weight `[h_t, h_s]` and bias `[h_t]`, with the
/// gradients a loss adds to them.
pub struct Projection<'a> {
    /// Weight, `[h_t, h_s]`.
    pub weight: &'a [f32],
    /// Bias, `[h_t]`.
    pub bias: &'a [f32],
    /// Gradient of the weight (accumulated).
    pub dweight: &'a mut [f32],
    /// Gradient of the bias (accumulated).
    pub dbias: &'a mut [f32],
}

/// [`hidden_loss`] between the student's states projected to the teacher's width,
/// `s · Wᵀ + b`, and the teacher's; adds `weight ·` its gradient with respect to `s` into
/// `grad` and with respect to the projection into the projection's gradients.
#[allow(clippy::too_many_arguments)]
pub fn projected_hidden_loss(
    s: &[f32],
    t: &[f32],
    hs: usize,
    ht: usize,
    proj: Projection,
    mse: bool,
    weight: f32,
    grad: &mut [f32],
) -> Result<f32> {
    use crate::engine::matmul::{matmul, MatMut, MatRef, Par};
    let rows = s.len() / hs.max(1);
    if hs == 0
        || ht == 0
        || s.len() != rows * hs
        || t.len() != rows * ht
        || grad.len() != s.len()
        || proj.weight.len() != ht * hs
        || proj.bias.len() != ht
        || proj.dweight.len() != ht * hs
        || proj.dbias.len() != ht
    {
        return Err(Error::shape(
            "projected_hidden_loss",
            format!(
                "{} student values of width {hs}, {} teacher values of width {ht}, projection {}",
                s.len(),
                t.len(),
                proj.weight.len()
            ),
        ));
    }
    let mut y = vec![0.0; rows * ht];
    for r in y.chunks_mut(ht) {
        r.copy_from_slice(proj.bias);
    }
    let w = MatRef::new(proj.weight, ht, hs)?;
    let sm = MatRef::new(s, rows, hs)?;
    matmul(
        MatMut::new(&mut y, rows, ht)?,
        sm,
        w.t(),
        1.0,
        true,
        Par::All,
    )?;
    let mut gy = vec![0.0; y.len()];
    let loss = hidden_loss(&y, t, ht, mse, weight, &mut gy)?;
    let gym = MatRef::new(&gy, rows, ht)?;
    // ds += gy · W ;  dW += gyᵀ · s ;  db += Σ_rows gy
    matmul(MatMut::new(grad, rows, hs)?, gym, w, 1.0, true, Par::All)?;
    matmul(
        MatMut::new(proj.dweight, ht, hs)?,
        gym.t(),
        sm,
        1.0,
        true,
        Par::All,
    )?;
    for r in gy.chunks(ht) {
        proj.dbias.iter_mut().zip(r).for_each(|(d, g)| *d += g);
    }
    Ok(loss)
}

/// The attention-transfer loss (MiniLM): `KL(teacher ‖ student)` between the attention
/// distributions of every query row of every head, averaged over the rows that see a key.
/// `student` and `teacher` hold the probabilities of packed sequences of `seq_lens` tokens in
/// the [`crate::engine::attention::probs_offsets`] layout. Adds `weight ·` the gradient with
/// respect to the student's attention scores (the softmax input), `(p_s − p_t) / rows`, into
/// `grad`.
pub fn attention_loss(
    student: &[f32],
    teacher: &[f32],
    seq_lens: &[usize],
    heads: usize,
    weight: f32,
    grad: &mut [f32],
) -> Result<f32> {
    let (_, total) = crate::engine::attention::probs_offsets(seq_lens, heads);
    if student.len() != total || teacher.len() != total || grad.len() != total {
        return Err(Error::shape(
            "attention_loss",
            format!(
                "student {} / teacher {} / gradient {} probabilities where {} sequences of {heads} heads have {total}",
                student.len(),
                teacher.len(),
                grad.len(),
                seq_lens.len()
            ),
        ));
    }
    // Row length of every probability row, in order.
    let row_lens = seq_lens
        .iter()
        .flat_map(|&l| std::iter::repeat_n(l, heads * l));
    let mut rows = 0usize;
    let mut kl = 0.0f64;
    let mut at = 0;
    let mut counted = Vec::new();
    for l in row_lens {
        let (s, t) = (&student[at..at + l], &teacher[at..at + l]);
        if t.iter().any(|&v| v > 0.0) {
            rows += 1;
            counted.push(at..at + l);
            // Probabilities the student rounds to 0 where the teacher has mass: ln of the
            // smallest normal float rather than −∞.
            kl += t
                .iter()
                .zip(s)
                .filter(|(&p, _)| p > 0.0)
                .map(|(&p, &q)| {
                    p as f64 * ((p as f64).ln() - (q.max(f32::MIN_POSITIVE) as f64).ln())
                })
                .sum::<f64>();
        }
        at += l;
    }
    let c = weight / rows.max(1) as f32;
    for r in counted {
        for i in r {
            grad[i] += c * (student[i] - teacher[i]);
        }
    }
    Ok((kl / rows.max(1) as f64) as f32)
}

/// Which teacher block each student block learns from: the blocks it was cut from, or, for a
/// student of its own, evenly spaced ones ending with the last.
pub fn layer_map(cut_from: &[usize], student_layers: usize, teacher_layers: usize) -> Vec<usize> {
    if !cut_from.is_empty() {
        return cut_from.to_vec();
    }
    (0..student_layers)
        .map(|i| ((i + 1) * teacher_layers / student_layers.max(1)).max(1) - 1)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_distributions_cost_nothing_and_push_nowhere() {
        let z = [0.3f32, -1.0, 2.0, 0.5, 0.5, 0.5];
        let mut g = vec![0.0; 6];
        let l = kd_loss(
            &z,
            &z,
            &[Dist::row(0, 3), Dist::row(1, 3)],
            2.0,
            1.0,
            Some(&mut g),
        )
        .unwrap();
        assert!(l.abs() < 1e-7);
        assert!(g.iter().all(|v| v.abs() < 1e-7));
    }

    #[test]
    fn the_gradient_matches_finite_differences_for_strided_distributions() {
        // Two QA-style columns interleaved: start logits at even, end logits at odd indices.
        let s = [0.2f32, -0.3, 1.1, 0.4, -0.7, 0.9, 0.05, -1.2];
        let t = [1.0f32, 0.1, -0.5, 0.3, 0.2, -0.4, 0.8, 0.6];
        let dists = [
            Dist {
                start: 0,
                stride: 2,
                len: 4,
            },
            Dist {
                start: 1,
                stride: 2,
                len: 4,
            },
        ];
        let mut g = vec![0.0; 8];
        kd_loss(&s, &t, &dists, 3.0, 0.5, Some(&mut g)).unwrap();
        for i in 0..8 {
            let eps = 1e-3;
            let (mut up, mut down) = (s, s);
            up[i] += eps;
            down[i] -= eps;
            let f = |z: &[f32]| kd_loss(z, &t, &dists, 3.0, 1.0, None).unwrap() as f64;
            let numeric = 0.5 * (f(&up) - f(&down)) / (2.0 * eps as f64);
            assert!(
                (numeric - g[i] as f64).abs() < 2e-4,
                "{i}: {numeric} vs {}",
                g[i]
            );
        }
    }

    #[test]
    fn hidden_losses_have_the_gradient_of_their_value() {
        let s = [0.5f32, -1.0, 2.0, 0.1, 0.3, -0.7];
        let t = [1.0f32, 0.2, 1.5, -0.4, 0.9, 0.1];
        for mse in [false, true] {
            let mut g = vec![0.0; 6];
            hidden_loss(&s, &t, 3, mse, 1.0, &mut g).unwrap();
            for i in 0..6 {
                let eps = 1e-3;
                let (mut up, mut down) = (s, s);
                up[i] += eps;
                down[i] -= eps;
                let f = |z: &[f32]| hidden_loss(z, &t, 3, mse, 0.0, &mut [0.0; 6]).unwrap() as f64;
                let numeric = (f(&up) - f(&down)) / (2.0 * eps as f64);
                assert!(
                    (numeric - g[i] as f64).abs() < 1e-3,
                    "{mse} {i}: {numeric} vs {}",
                    g[i]
                );
            }
        }
        assert_eq!(layer_map(&[0, 2, 4], 3, 6), [0, 2, 4]);
        assert_eq!(layer_map(&[], 3, 6), [1, 3, 5]);
        assert_eq!(layer_map(&[], 4, 2), [0, 0, 0, 1]);
    }

    #[test]
    fn projected_hidden_losses_have_the_gradient_of_their_value() {
        // 2 tokens of width 3 projected to width 2.
        let s = [0.5f32, -1.0, 2.0, 0.1, 0.3, -0.7];
        let t = [1.0f32, 0.2, -0.4, 0.9];
        let w = [0.3f32, -0.2, 0.5, 0.1, 0.4, -0.6];
        let b = [0.05f32, -0.1];
        let value = |s: &[f32], w: &[f32], b: &[f32], mse: bool| -> f64 {
            let (mut dw, mut db) = ([0.0; 6], [0.0; 2]);
            let proj = Projection {
                weight: w,
                bias: b,
                dweight: &mut dw,
                dbias: &mut db,
            };
            projected_hidden_loss(s, &t, 3, 2, proj, mse, 0.0, &mut [0.0; 6]).unwrap() as f64
        };
        for mse in [false, true] {
            let (mut gs, mut dw, mut db) = ([0.0f32; 6], [0.0f32; 6], [0.0f32; 2]);
            let proj = Projection {
                weight: &w,
                bias: &b,
                dweight: &mut dw,
                dbias: &mut db,
            };
            projected_hidden_loss(&s, &t, 3, 2, proj, mse, 1.0, &mut gs).unwrap();
            let eps = 1e-3;
            let fd = |f: &dyn Fn(f32) -> f64| (f(eps) - f(-eps)) / (2.0 * eps as f64);
            for i in 0..6 {
                let ns = fd(&|d| {
                    let mut x = s;
                    x[i] += d;
                    value(&x, &w, &b, mse)
                });
                let nw = fd(&|d| {
                    let mut x = w;
                    x[i] += d;
                    value(&s, &x, &b, mse)
                });
                assert!(
                    (ns - gs[i] as f64).abs() < 1e-3,
                    "{mse} ds{i}: {ns} vs {}",
                    gs[i]
                );
                assert!(
                    (nw - dw[i] as f64).abs() < 1e-3,
                    "{mse} dw{i}: {nw} vs {}",
                    dw[i]
                );
            }
            for i in 0..2 {
                let nb = fd(&|d| {
                    let mut x = b;
                    x[i] += d;
                    value(&s, &w, &x, mse)
                });
                assert!(
                    (nb - db[i] as f64).abs() < 1e-3,
                    "{mse} db{i}: {nb} vs {}",
                    db[i]
                );
            }
        }
    }

    #[test]
    fn attention_loss_is_kl_per_row_with_the_softmax_gradient() {
        // Two sequences (lengths 2 and 1), one head; the second row of the first sequence sees
        // no key (all zero) and is not counted.
        let t = [0.7f32, 0.3, 0.0, 0.0, 1.0];
        let scores = [0.2f32, -0.4, 0.0, 0.0, 1.3];
        let softmax = |z: &[f32]| -> Vec<f32> {
            let mut p = vec![0.0; 5];
            let e: Vec<f32> = z[..2].iter().map(|v| v.exp()).collect();
            p[0] = e[0] / (e[0] + e[1]);
            p[1] = e[1] / (e[0] + e[1]);
            p[4] = 1.0;
            p
        };
        let s = softmax(&scores);
        let mut g = vec![0.0; 5];
        let l = attention_loss(&s, &t, &[2, 1], 1, 1.0, &mut g).unwrap();
        let row0 = 0.7 * (0.7f32.ln() - s[0].ln()) + 0.3 * (0.3f32.ln() - s[1].ln());
        assert!((l - row0 / 2.0).abs() < 1e-6, "{l} vs {}", row0 / 2.0);
        for i in 0..2 {
            let eps = 1e-3;
            let (mut up, mut down) = (scores, scores);
            up[i] += eps;
            down[i] -= eps;
            let f = |z: &[f32]| {
                attention_loss(&softmax(z), &t, &[2, 1], 1, 0.0, &mut [0.0; 5]).unwrap() as f64
            };
            let numeric = (f(&up) - f(&down)) / (2.0 * eps as f64);
            assert!(
                (numeric - g[i] as f64).abs() < 1e-3,
                "{i}: {numeric} vs {}",
                g[i]
            );
        }
        assert!(attention_loss(&s, &t, &[2, 2], 1, 1.0, &mut g).is_err());
    }

    #[test]
    fn bad_settings_are_named() {
        let c = DistillConfig {
            temperature: 0.0,
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--temperature"));
        let c = DistillConfig {
            alpha_kd: 0.0,
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("learn nothing"));
    }
}

//! Structured pruning: whole attention heads, feed-forward neurons and blocks removed, so the
//! matrices really shrink (query/key/value rows, attention-output columns, feed-forward rows and
//! columns) and the model runs faster in every command. Each block keeps its own head count and
//! feed-forward width, recorded in `config.json` (`pruned_heads`, as transformers 4 wrote it,
//! and `kiln_intermediate_sizes`; see docs/compression.md). [`densify`] pads a pruned model back
//! to the standard shape with zeros, which transformers loads with the same outputs.

use crate::checkpoint::Pretrained;
use crate::engine::{Linear, Tensor};
use crate::error::{Error, Result};
use crate::train::backprop::MaskGrads;

/// How unimportant heads and neurons are found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Importance {
    /// Weight norms (no data): a head's query, key, value rows and output columns, a
    /// neuron's input row and output column.
    Magnitude,
    /// `|∂loss/∂mask|` accumulated over labelled data (Michel et al. 2019).
    Data,
}

/// Importance scores, per layer: one per head, one per feed-forward neuron.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scores {
    /// Per layer, per head (in the block's current order).
    pub heads: Vec<Vec<f64>>,
    /// Per layer, per neuron.
    pub neurons: Vec<Vec<f64>>,
}

impl From<MaskGrads> for Scores {
    fn from(g: MaskGrads) -> Self {
        Scores {
            heads: g.heads,
            neurons: g.neurons,
        }
    }
}

/// What to remove.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PruneOptions {
    /// Fraction of all attention heads removed (the least important, ranked across layers
    /// after normalizing each layer's scores; every layer keeps one head at least).
    pub heads: f32,
    /// Fraction of all feed-forward neurons removed (ranked across layers likewise).
    pub ffn: f32,
    /// Blocks removed whole (0-based).
    pub drop_layers: Vec<usize>,
}

/// What pruning did, per layer of the result.
#[derive(Clone, Debug, PartialEq)]
pub struct PruneReport {
    /// Heads kept per layer.
    pub heads: Vec<usize>,
    /// Feed-forward neurons kept per layer.
    pub ffn: Vec<usize>,
    /// Base-model parameters before and after.
    pub parameters: (u128, u128),
}

/// Refuses models pruning cannot edit in place.
fn check(p: &Pretrained) -> Result<()> {
    if p.model.lstm.is_some() {
        return Err(Error::Input(
            "pruning removes attention heads and feed-forward neurons; an LSTM (kiln_lstm) has neither"
                .into(),
        ));
    }
    if p.peft.is_some() {
        return Err(Error::Input(
            "the model carries a LoRA/adapter: prune the base (or `kiln merge` first)".into(),
        ));
    }
    if p.model.blocks.iter().any(|b| b.qkv.int8.is_some()) || p.config().is_quantized() {
        return Err(Error::Input(
            "the model is int8-quantized: prune the f32 model, then `kiln quantize` the result"
                .into(),
        ));
    }
    if p.config().shares_layers() {
        return Err(Error::Input(format!(
            "this {} model's layers share their weights: a head or neuron removed from the shared block would leave every layer; structured pruning needs a model with a block per layer",
            p.config().arch.model_type()
        )));
    }
    Ok(())
}

/// Squared norms of `rows` rows (of width `cols`) of a `[rows_total, cols]` matrix from `row0`.
fn row_norms(w: &Tensor, row0: usize, rows: usize, cols: usize) -> Vec<f64> {
    let d = w.data();
    (row0..row0 + rows)
        .map(|r| {
            d[r * cols..(r + 1) * cols]
                .iter()
                .map(|&v| (v as f64) * (v as f64))
                .sum()
        })
        .collect()
}

/// Squared norms of each column of a `[rows, cols]` matrix.
fn col_norms(w: &Tensor, rows: usize, cols: usize) -> Vec<f64> {
    let mut out = vec![0.0; cols];
    for r in w.data().chunks(cols).take(rows) {
        for (o, &v) in out.iter_mut().zip(r) {
            *o += (v as f64) * (v as f64);
        }
    }
    out
}

/// Importance from weight norms: a head's score is the norm of its query, key and value rows
/// and its attention-output columns; a neuron's, of its input row times its output column.
pub fn magnitude_scores(p: &Pretrained) -> Result<Scores> {
    check(p)?;
    let cfg = p.config();
    let (h, d) = (cfg.hidden_size, cfg.head_dim());
    let mut s = Scores::default();
    for b in &p.model.blocks {
        let w = b.attention_width();
        let qkv = row_norms(&b.qkv.weight, 0, 3 * w, h);
        let out = col_norms(&b.attn_out.weight, h, w);
        let heads = (0..w / d)
            .map(|k| {
                let rows: f64 = (0..3)
                    .map(|part| {
                        qkv[part * w + k * d..part * w + (k + 1) * d]
                            .iter()
                            .sum::<f64>()
                    })
                    .sum();
                (rows + out[k * d..(k + 1) * d].iter().sum::<f64>()).sqrt()
            })
            .collect();
        let inter = b.ffn_in.out_features();
        let inn = row_norms(&b.ffn_in.weight, 0, inter, h);
        let outn = col_norms(&b.ffn_out.weight, h, inter);
        s.heads.push(heads);
        s.neurons
            .push(inn.iter().zip(&outn).map(|(a, b)| (a * b).sqrt()).collect());
    }
    Ok(s)
}

/// Importance from data (Michel et al. 2019): the model's own task loss (`cfg.task`: classify,
/// tag or qa, read as fine-tuning reads it) on the first `max_examples` of `records`, without
/// dropout; a head's or neuron's score is `|∂loss/∂mask|` of a mask of ones on its output,
/// summed over micro-batches of `cfg.train.batch_size`. The model must already have the task's
/// head (a fine-tuned model): the gradients of a random head say nothing.
pub fn data_scores(
    p: &mut Pretrained,
    cfg: &crate::train::FinetuneConfig,
    records: &[crate::data::records::Record],
    max_examples: usize,
) -> Result<Scores> {
    use crate::heads::HeadKind;
    use crate::train::Task;
    check(p)?;
    let kind = match cfg.task.as_str() {
        "classify" => HeadKind::Sequence,
        "tag" => HeadKind::Token,
        "qa" => HeadKind::Span,
        other => {
            return Err(Error::Input(format!(
                "--task {other}: importance from data is measured with a classify, tag or qa loss"
            )))
        }
    };
    if p.task.as_ref().map(|t| t.kind) != Some(kind) {
        return Err(Error::Input(format!(
            "--data with --task {}: the model has {}; measure importance with the loss of a head it was fine-tuned with (or use --importance magnitude)",
            cfg.task,
            p.head_description()
        )));
    }
    let records = &records[..records.len().min(max_examples)];
    let names = p.task.as_ref().map(|t| t.labels.names.clone());
    let batch = cfg.train.batch_size.max(1);
    let mut grads = crate::train::backprop::zeros_like(p);
    let mut rng = rand::SeedableRng::seed_from_u64(cfg.train.seed);
    macro_rules! run {
        ($task:expr) => {{
            let mut task = $task;
            let n = task.train.len();
            let (r, g) = crate::train::backprop::with_mask_grads(|| -> Result<()> {
                for _ in 0..n.div_ceil(batch) {
                    let m = task.next_micro(batch, 0..batch, &mut rng)?;
                    task.loss(p, &m, &mut grads, 1.0, None)?;
                }
                Ok(())
            });
            r?;
            g
        }};
    }
    let g = match kind {
        HeadKind::Sequence => run!(crate::train::classify::prepare(
            p,
            cfg,
            records,
            &[],
            false,
            names
        )?),
        HeadKind::Token => run!(crate::train::tag::prepare(
            p,
            cfg,
            records,
            &[],
            false,
            names
        )?),
        HeadKind::Span => run!(crate::train::qa::prepare(p, cfg, records, &[], false)?),
    };
    if g.heads.len() != p.model.blocks.len() {
        return Err(Error::Input(
            "no gradient reached the blocks (is the data empty?)".into(),
        ));
    }
    Ok(g.into())
}

/// Indices to keep per layer when removing `fraction` of all units: scores normalized per
/// layer (L2, as Michel et al. do, so layers of different scale compete fairly), the lowest
/// removed across layers, at least `min_keep` kept in each layer.
fn keep_sets(scores: &[Vec<f64>], fraction: f32, min_keep: usize) -> Vec<Vec<usize>> {
    let total: usize = scores.iter().map(Vec::len).sum();
    let remove = ((total as f64) * fraction as f64).round() as usize;
    let mut all: Vec<(f64, usize, usize)> = Vec::with_capacity(total);
    for (l, layer) in scores.iter().enumerate() {
        let norm = layer.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-30);
        all.extend(layer.iter().enumerate().map(|(i, v)| (v / norm, l, i)));
    }
    // Ties broken by position, so the choice is reproducible.
    all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut left: Vec<usize> = scores.iter().map(Vec::len).collect();
    let mut gone: Vec<Vec<bool>> = scores.iter().map(|l| vec![false; l.len()]).collect();
    let mut removed = 0;
    for &(_, l, i) in &all {
        if removed == remove {
            break;
        }
        if left[l] > min_keep {
            gone[l][i] = true;
            left[l] -= 1;
            removed += 1;
        }
    }
    gone.iter()
        .map(|g| (0..g.len()).filter(|&i| !g[i]).collect())
        .collect()
}

/// Rows `keep` (each `size` rows long, in units) of a `[rows, cols]` weight and its bias.
fn take_rows(l: &Linear, offset: usize, keep: &[usize], size: usize) -> (Vec<f32>, Vec<f32>) {
    let cols = l.in_features();
    let w = l.weight.data();
    let (mut rows, mut bias) = (Vec::new(), Vec::new());
    for &k in keep {
        let r0 = offset + k * size;
        rows.extend_from_slice(&w[r0 * cols..(r0 + size) * cols]);
        if let Some(b) = &l.bias {
            bias.extend_from_slice(&b.data()[r0..r0 + size]);
        }
    }
    (rows, bias)
}

/// Columns `keep` (each `size` wide, in units) of a `[rows, cols]` weight.
fn take_cols(l: &Linear, keep: &[usize], size: usize) -> Vec<f32> {
    let (rows, cols) = (l.out_features(), l.in_features());
    let w = l.weight.data();
    let mut out = Vec::with_capacity(rows * keep.len() * size);
    for r in 0..rows {
        for &k in keep {
            out.extend_from_slice(&w[r * cols + k * size..r * cols + (k + 1) * size]);
        }
    }
    out
}

fn linear(rows: usize, cols: usize, w: Vec<f32>, bias: Option<Vec<f32>>) -> Result<Linear> {
    let b = match bias {
        Some(b) => Some(Tensor::new(vec![rows], b)?),
        None => None,
    };
    Ok(Linear::new(Tensor::new(vec![rows, cols], w)?, b))
}

/// Keeps the heads `keep` (indices in the block's current order) of block `layer`.
pub fn keep_heads(p: &mut Pretrained, layer: usize, keep: &[usize]) -> Result<()> {
    let (h, d, n_heads) = {
        let c = p.config();
        (c.hidden_size, c.head_dim(), c.num_heads)
    };
    // The original indices of the heads the block has now, to record which are gone.
    let before: Vec<usize> = {
        let gone = p
            .config()
            .pruned_heads
            .get(&layer)
            .cloned()
            .unwrap_or_default();
        (0..n_heads).filter(|x| !gone.contains(x)).collect()
    };
    let b = &mut p.model.blocks[layer];
    let w = b.attention_width();
    if keep.is_empty() || keep.iter().any(|&k| k >= w / d) {
        return Err(Error::Input(format!(
            "layer {layer}: cannot keep heads {keep:?} of its {}",
            w / d
        )));
    }
    let nw = keep.len() * d;
    let (mut rows, mut bias) = (Vec::new(), Vec::new());
    for part in 0..3 {
        let (r, bs) = take_rows(&b.qkv, part * w, keep, d);
        rows.extend(r);
        bias.extend(bs);
    }
    let has_bias = b.qkv.bias.is_some();
    b.qkv = linear(3 * nw, h, rows, has_bias.then_some(bias))?;
    b.attn_out = linear(
        h,
        nw,
        take_cols(&b.attn_out, keep, d),
        b.attn_out.bias.as_ref().map(|t| t.data().to_vec()),
    )?;
    let gone: Vec<usize> = (0..before.len())
        .filter(|i| !keep.contains(i))
        .map(|i| before[i])
        .chain(
            p.config()
                .pruned_heads
                .get(&layer)
                .cloned()
                .unwrap_or_default(),
        )
        .collect();
    let mut gone = gone;
    gone.sort_unstable();
    gone.dedup();
    let cfg = &mut p.model.config;
    if gone.is_empty() {
        cfg.pruned_heads.remove(&layer);
    } else {
        cfg.pruned_heads.insert(layer, gone);
    }
    Ok(())
}

/// Keeps the feed-forward neurons `keep` of block `layer`.
pub fn keep_neurons(p: &mut Pretrained, layer: usize, keep: &[usize]) -> Result<()> {
    let h = p.config().hidden_size;
    let b = &mut p.model.blocks[layer];
    let inter = b.ffn_in.out_features();
    if keep.is_empty() || keep.iter().any(|&k| k >= inter) {
        return Err(Error::Input(format!(
            "layer {layer}: cannot keep neurons outside its {inter}"
        )));
    }
    let (rows, bias) = take_rows(&b.ffn_in, 0, keep, 1);
    let has_bias = b.ffn_in.bias.is_some();
    b.ffn_in = linear(keep.len(), h, rows, has_bias.then_some(bias))?;
    b.ffn_out = linear(
        h,
        keep.len(),
        take_cols(&b.ffn_out, keep, 1),
        b.ffn_out.bias.as_ref().map(|t| t.data().to_vec()),
    )?;
    let widths: Vec<usize> = p
        .model
        .blocks
        .iter()
        .map(|b| b.ffn_in.out_features())
        .collect();
    let cfg = &mut p.model.config;
    cfg.intermediate_sizes = if widths.iter().all(|&w| w == cfg.intermediate_size) {
        Vec::new()
    } else {
        widths
    };
    Ok(())
}

/// Prunes `p` in place: the blocks in `drop_layers` first, then the least important heads and
/// neurons by `scores` (of the model before dropping layers).
pub fn prune(p: &mut Pretrained, scores: &Scores, opts: &PruneOptions) -> Result<PruneReport> {
    check(p)?;
    let n = p.model.blocks.len();
    for (flag, f) in [("--heads", opts.heads), ("--ffn", opts.ffn)] {
        if !(0.0..1.0).contains(&f) {
            return Err(Error::Input(format!(
                "{flag} {f}: give the fraction removed, from 0 up to (not including) 1"
            )));
        }
    }
    if let Some(&l) = opts.drop_layers.iter().find(|&&l| l >= n) {
        return Err(Error::Input(format!(
            "--drop-layers: layer {l} does not exist; the model has layers 0..{}",
            n - 1
        )));
    }
    let kept: Vec<usize> = (0..n).filter(|l| !opts.drop_layers.contains(l)).collect();
    if kept.is_empty() {
        return Err(Error::Input(
            "--drop-layers: every layer would be dropped".into(),
        ));
    }
    if scores.heads.len() != n || scores.neurons.len() != n {
        return Err(Error::shape("prune", "one score list per layer"));
    }
    let before = p.config().parameter_count();
    if kept.len() < n {
        let blocks = std::mem::take(&mut p.model.blocks);
        p.model.blocks = blocks
            .into_iter()
            .enumerate()
            .filter(|(i, _)| kept.contains(i))
            .map(|(_, b)| b)
            .collect();
        p.model.config.keep_layers(&kept);
    }
    let pick =
        |all: &[Vec<f64>]| -> Vec<Vec<f64>> { kept.iter().map(|&l| all[l].clone()).collect() };
    let (hs, ns) = (pick(&scores.heads), pick(&scores.neurons));
    if opts.heads > 0.0 {
        for (l, keep) in keep_sets(&hs, opts.heads, 1).into_iter().enumerate() {
            keep_heads(p, l, &keep)?;
        }
    }
    if opts.ffn > 0.0 {
        for (l, keep) in keep_sets(&ns, opts.ffn, 1).into_iter().enumerate() {
            keep_neurons(p, l, &keep)?;
        }
    }
    let cfg = p.config();
    Ok(PruneReport {
        heads: (0..cfg.num_layers).map(|l| cfg.heads_at(l)).collect(),
        ffn: (0..cfg.num_layers)
            .map(|l| cfg.intermediate_at(l))
            .collect(),
        parameters: (before, cfg.parameter_count()),
    })
}

/// Pads a pruned model back to the standard shape: removed heads and neurons come back as zero
/// rows and columns (a zero head attends uniformly over zero values and adds nothing; a zero
/// neuron's activation of 0 meets a zero column), so the outputs are unchanged and transformers
/// loads the result.
pub fn densify(p: &mut Pretrained) -> Result<()> {
    check(p)?;
    let (h, d, n_heads, full_inter) = {
        let c = p.config();
        (
            c.hidden_size,
            c.head_dim(),
            c.num_heads,
            c.intermediate_size,
        )
    };
    for l in 0..p.model.blocks.len() {
        let gone = p.config().pruned_heads.get(&l).cloned().unwrap_or_default();
        let slots: Vec<usize> = (0..n_heads).filter(|x| !gone.contains(x)).collect();
        let b = &mut p.model.blocks[l];
        let w = b.attention_width();
        if w != h {
            let cols = h;
            let (qw, qb) = (b.qkv.weight.data(), b.qkv.bias.as_ref().map(|t| t.data()));
            let mut rows = vec![0.0; 3 * h * cols];
            let mut bias = vec![0.0; 3 * h];
            for part in 0..3 {
                for (k, &slot) in slots.iter().enumerate() {
                    let src = part * w + k * d;
                    let dst = part * h + slot * d;
                    rows[dst * cols..(dst + d) * cols]
                        .copy_from_slice(&qw[src * cols..(src + d) * cols]);
                    if let Some(qb) = qb {
                        bias[dst..dst + d].copy_from_slice(&qb[src..src + d]);
                    }
                }
            }
            let has_bias = b.qkv.bias.is_some();
            let ow = b.attn_out.weight.data();
            let mut out = vec![0.0; h * h];
            for r in 0..h {
                for (k, &slot) in slots.iter().enumerate() {
                    out[r * h + slot * d..r * h + (slot + 1) * d]
                        .copy_from_slice(&ow[r * w + k * d..r * w + (k + 1) * d]);
                }
            }
            b.qkv = linear(3 * h, h, rows, has_bias.then_some(bias))?;
            b.attn_out = linear(
                h,
                h,
                out,
                b.attn_out.bias.as_ref().map(|t| t.data().to_vec()),
            )?;
        }
        let inter = b.ffn_in.out_features();
        if inter != full_inter {
            if inter > full_inter {
                return Err(Error::Input(format!(
                    "layer {l} has {inter} feed-forward neurons, more than intermediate_size {full_inter}"
                )));
            }
            let mut win = b.ffn_in.weight.data().to_vec();
            win.resize(full_inter * h, 0.0);
            let bin = b.ffn_in.bias.as_ref().map(|t| {
                let mut v = t.data().to_vec();
                v.resize(full_inter, 0.0);
                v
            });
            let wo = b.ffn_out.weight.data();
            let mut out = vec![0.0; h * full_inter];
            for r in 0..h {
                out[r * full_inter..r * full_inter + inter]
                    .copy_from_slice(&wo[r * inter..(r + 1) * inter]);
            }
            b.ffn_in = linear(full_inter, h, win, bin)?;
            b.ffn_out = linear(
                h,
                full_inter,
                out,
                b.ffn_out.bias.as_ref().map(|t| t.data().to_vec()),
            )?;
        }
    }
    let cfg = &mut p.model.config;
    cfg.pruned_heads.clear();
    cfg.intermediate_sizes.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_normalized_scores_go_and_every_layer_keeps_one() {
        let scores = vec![vec![1.0, 2.0, 3.0], vec![10.0, 0.1, 20.0]];
        // Normalized: layer 0 ≈ [.27, .53, .80], layer 1 ≈ [.45, .004, .89].
        let keep = keep_sets(&scores, 0.5, 1);
        assert_eq!(keep, vec![vec![1, 2], vec![2]]);
        let keep = keep_sets(&scores, 0.9, 1);
        assert_eq!(keep.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1]);
        assert_eq!(
            keep_sets(&scores, 0.0, 1),
            vec![vec![0, 1, 2], vec![0, 1, 2]]
        );
    }
}

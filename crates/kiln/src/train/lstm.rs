//! Training forward and backward of the LSTM backbone's stacks (between the embeddings and
//! the heads, which [`super::backprop`] handles for every backbone).

use crate::engine::dropout::Dropout;
use crate::engine::lstm::{lstm_backward, lstm_forward, LstmCellGrads, LstmTrace, Steps};
use crate::engine::{LinearOut, MaskKind};
use crate::error::Result;
use crate::model::lstm::{Lstm, LstmDirection};
use crate::peft::bottleneck::non_empty;

/// What one direction of one layer keeps for the backward pass.
struct LayerActs {
    input: Vec<f32>,
    hidden: Vec<f32>,
    trace: LstmTrace,
}

/// Saved activations of the stacks: per direction, per layer.
pub struct LstmActs {
    steps: Steps,
    dirs: Vec<Vec<LayerActs>>,
}

/// The dropout on direction `d`'s layer `l` output, from the pass's site function.
fn site(l: usize, d: usize) -> usize {
    2 * l + d
}

/// The dropout of a layer's projected output, by site (`None` when off).
pub type DropSite<'a> = &'a (dyn Fn(usize) -> Option<Dropout> + Sync);

/// Runs the stacks over `x0: [T, P]` (the dropped-out embeddings) under `mask`, keeping what
/// [`backward`] needs; returns the top states `[T, directions · P]`. The two directions of a
/// bidirectional read run at the same time, each on half of the threads.
pub fn forward(
    lstm: &Lstm,
    x0: &[f32],
    seq_lens: &[usize],
    mask: MaskKind,
    drop: DropSite,
) -> Result<(Vec<f32>, LstmActs)> {
    let s = &lstm.shape;
    let steps = Steps::new(seq_lens);
    let p = s.proj;
    let run = |d: usize| stack_forward(lstm, d, x0, &steps, drop);
    if s.directions(mask) == 1 {
        let (acts, top) = run(0)?;
        return Ok((
            top,
            LstmActs {
                steps,
                dirs: vec![acts],
            },
        ));
    }
    let (f, b) = crate::engine::par::join_halves(|| run(0), || run(1));
    let ((fa, ft), (ba, bt)) = (f?, b?);
    Ok((
        crate::model::lstm::interleave(&ft, &bt, p),
        LstmActs {
            steps,
            dirs: vec![fa, ba],
        },
    ))
}

/// Direction `d`'s stack: every layer's saved activations and the top output.
fn stack_forward(
    lstm: &Lstm,
    d: usize,
    x0: &[f32],
    steps: &Steps,
    drop: DropSite,
) -> Result<(Vec<LayerActs>, Vec<f32>)> {
    let s = &lstm.shape;
    let (t, h, p) = (steps.tokens, s.hidden, s.proj);
    let mut acts = Vec::with_capacity(s.layers);
    let mut input = x0.to_vec();
    for (l, layer) in lstm.layers.iter().enumerate() {
        let dir = layer.direction(d)?;
        let mut hidden = vec![0.0f32; t * h];
        let mut trace = LstmTrace::default();
        lstm_forward(
            &dir.cell,
            &input,
            steps,
            d == 1,
            &mut hidden,
            None,
            Some(&mut trace),
        )?;
        let mut y = vec![0.0f32; t * p];
        dir.proj
            .forward_into(&hidden, t, &mut y, LinearOut::Write)?;
        if let Some(dr) = drop(site(l, d)) {
            dr.apply(&mut y);
        }
        if s.residual && l > 0 {
            for (a, b) in y.iter_mut().zip(&input) {
                *a += b;
            }
        }
        acts.push(LayerActs {
            input: std::mem::replace(&mut input, y),
            hidden,
            trace,
        });
    }
    Ok((acts, input))
}

/// Backward of [`forward`]: from the gradient of its output `dout`, adds every weight's
/// gradient into `grads` (shaped as `lstm`; frozen tensors empty) and returns the gradient of
/// `x0`. The two directions run at the same time, as in the forward pass.
pub fn backward(
    lstm: &Lstm,
    acts: &LstmActs,
    dout: &[f32],
    grads: &mut Lstm,
    drop: DropSite,
) -> Result<Vec<f32>> {
    let p = lstm.shape.proj;
    let n_dirs = acts.dirs.len();
    // This direction's half of the output gradient.
    let half = |d: usize| -> Vec<f32> {
        dout.chunks(n_dirs * p)
            .flat_map(|r| r[d * p..(d + 1) * p].iter().copied())
            .collect()
    };
    let mut fwd_g = Vec::with_capacity(grads.layers.len());
    let mut bwd_g = Vec::with_capacity(grads.layers.len());
    for l in grads.layers.iter_mut() {
        fwd_g.push(&mut l.forward);
        bwd_g.extend(l.backward.as_mut());
    }
    if n_dirs == 1 {
        return stack_backward(lstm, acts, 0, half(0), fwd_g, drop);
    }
    if bwd_g.len() != fwd_g.len() {
        return Err(crate::error::Error::shape(
            "lstm backward",
            "gradients lack the backward LSTM",
        ));
    }
    let (f, b) = crate::engine::par::join_halves(
        || stack_backward(lstm, acts, 0, half(0), fwd_g, drop),
        || stack_backward(lstm, acts, 1, half(1), bwd_g, drop),
    );
    let mut dx0 = f?;
    for (a, b) in dx0.iter_mut().zip(b?) {
        *a += b;
    }
    Ok(dx0)
}

/// Direction `d`'s stack backward from the gradient `dy` of its top output, into its
/// gradient buffers `g` (one per layer); returns the gradient of `x0`.
fn stack_backward(
    lstm: &Lstm,
    acts: &LstmActs,
    d: usize,
    mut dy: Vec<f32>,
    mut g: Vec<&mut LstmDirection>,
    drop: DropSite,
) -> Result<Vec<f32>> {
    let s = &lstm.shape;
    let (t, h, p) = (acts.steps.tokens, s.hidden, s.proj);
    for (l, a) in acts.dirs[d].iter().enumerate().rev() {
        let dir = lstm.layers[l].direction(d)?;
        let gdir = &mut *g[l];
        // The residual passes dy to the input unchanged; the projection gets it through the
        // dropout mask.
        let mut dz = dy.clone();
        if let Some(dr) = drop(site(l, d)) {
            dr.apply(&mut dz);
        }
        let mut dhid = vec![0.0f32; t * h];
        crate::train::backprop::lin_back(
            &dir.proj,
            &mut gdir.proj,
            &a.hidden,
            &dz,
            t,
            Some(&mut dhid),
            None,
            0,
        )?;
        let mut dinput = vec![0.0f32; t * p];
        let gc = &mut gdir.cell;
        lstm_backward(
            &dir.cell,
            &a.input,
            &a.hidden,
            &a.trace,
            &acts.steps,
            d == 1,
            &dhid,
            Some(&mut dinput),
            LstmCellGrads {
                w_ih: non_empty(&mut gc.w_ih),
                w_hh: non_empty(&mut gc.w_hh),
                b_ih: non_empty(&mut gc.b_ih),
                b_hh: non_empty(&mut gc.b_hh),
            },
        )?;
        if s.residual && l > 0 {
            for (a, b) in dinput.iter_mut().zip(&dy) {
                *a += b;
            }
        }
        dy = dinput;
    }
    Ok(dy)
}

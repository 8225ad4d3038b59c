//! Training forward and backward of the LSTM backbone's stacks (between the embeddings and
//! the heads, which [`super::backprop`] handles for every backbone).

use crate::engine::dropout::Dropout;
use crate::engine::lstm::{lstm_backward, lstm_forward, LstmCellGrads, LstmTrace, Steps};
use crate::engine::{LinearOut, MaskKind};
use crate::error::Result;
use crate::model::lstm::Lstm;
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

/// Runs the stacks over `x0: [T, P]` (the dropped-out embeddings) under `mask`, keeping what
/// [`backward`] needs; returns the top states `[T, directions · P]`. `drop(site)` is the
/// dropout of a layer's projected output (`None` when off).
pub fn forward(
    lstm: &Lstm,
    x0: &[f32],
    seq_lens: &[usize],
    mask: MaskKind,
    drop: &dyn Fn(usize) -> Option<Dropout>,
) -> Result<(Vec<f32>, LstmActs)> {
    let s = &lstm.shape;
    let steps = Steps::new(seq_lens);
    let (t, h, p) = (steps.tokens, s.hidden, s.proj);
    let n_dirs = s.directions(mask);
    let mut dirs = Vec::with_capacity(n_dirs);
    let mut tops = Vec::with_capacity(n_dirs);
    for d in 0..n_dirs {
        let mut acts = Vec::with_capacity(s.layers);
        let mut input = x0.to_vec();
        for (l, layer) in lstm.layers.iter().enumerate() {
            let dir = layer.direction(d)?;
            let mut hidden = vec![0.0f32; t * h];
            let mut trace = LstmTrace::default();
            lstm_forward(
                &dir.cell,
                &input,
                &steps,
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
        dirs.push(acts);
        tops.push(input);
    }
    let out = if n_dirs == 1 {
        tops.pop().unwrap_or_default()
    } else {
        tops[0]
            .chunks(p)
            .zip(tops[1].chunks(p))
            .flat_map(|(a, b)| a.iter().chain(b).copied())
            .collect()
    };
    Ok((out, LstmActs { steps, dirs }))
}

/// Backward of [`forward`]: from the gradient of its output `dout`, adds every weight's
/// gradient into `grads` (shaped as `lstm`; frozen tensors empty) and returns the gradient of
/// `x0`.
pub fn backward(
    lstm: &Lstm,
    acts: &LstmActs,
    dout: &[f32],
    grads: &mut Lstm,
    drop: &dyn Fn(usize) -> Option<Dropout>,
) -> Result<Vec<f32>> {
    let s = &lstm.shape;
    let (t, h, p) = (acts.steps.tokens, s.hidden, s.proj);
    let n_dirs = acts.dirs.len();
    let mut dx0 = vec![0.0f32; t * p];
    for (d, layers) in acts.dirs.iter().enumerate() {
        // This direction's half of the output gradient.
        let mut dy: Vec<f32> = dout
            .chunks(n_dirs * p)
            .flat_map(|r| r[d * p..(d + 1) * p].iter().copied())
            .collect();
        for (l, a) in layers.iter().enumerate().rev() {
            let dir = lstm.layers[l].direction(d)?;
            let gl = &mut grads.layers[l];
            let gdir = if d == 0 {
                &mut gl.forward
            } else {
                gl.backward.as_mut().ok_or_else(|| {
                    crate::error::Error::shape("lstm backward", "gradients lack the backward LSTM")
                })?
            };
            // The residual passes dy to the input unchanged; the projection gets it through
            // the dropout mask.
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
        for (a, b) in dx0.iter_mut().zip(&dy) {
            *a += b;
        }
    }
    Ok(dx0)
}

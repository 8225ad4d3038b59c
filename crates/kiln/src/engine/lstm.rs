//! One direction of an LSTM over a packed batch (sequences of different lengths back to back,
//! no padding), forward and backward through time, with PyTorch `nn.LSTM`'s weights and gate
//! order (i, f, g, o).
//!
//! The shape of the work: the input projection of every token of every sequence is one GEMM
//! before the recurrence; each time step is one GEMM of the still-running sequences' states
//! against `W_hh` (sequences sorted longest first, so the running ones are a prefix of the
//! state matrix and the GEMM needs no gather), followed by one fused pass that adds, activates
//! the four gates and updates the cell. The backward pass mirrors it: a fused pass per step
//! from the saved gates, one GEMM back through `W_hh`, and the weight gradients as three
//! GEMMs over all tokens at the end, not one per step.

use super::grad::add_col_sums;
use super::math::exp;
use super::matmul::{matmul, matmul_fast, MatMut, MatRef, Par};
use super::packed::{PackedWeight, MIN_ROWS};
use super::par::SendPtr;
use super::simd::dispatch;
use super::tensor::Tensor;
use crate::error::{Error, Result};
use rayon::prelude::*;

/// The weights of one direction of one LSTM layer, as `nn.LSTM` stores them.
#[derive(Clone, Debug)]
pub struct LstmCell {
    /// `weight_ih`: `[4H, input]`.
    pub w_ih: Tensor,
    /// `weight_hh`: `[4H, H]`.
    pub w_hh: Tensor,
    /// `bias_ih`: `[4H]`.
    pub b_ih: Tensor,
    /// `bias_hh`: `[4H]`.
    pub b_hh: Tensor,
}

impl LstmCell {
    /// Hidden (cell) width H.
    pub fn hidden(&self) -> usize {
        self.w_hh.cols()
    }

    /// Input width.
    pub fn input(&self) -> usize {
        self.w_ih.cols()
    }

    fn check(&self) -> Result<()> {
        let h = self.hidden();
        let ok = self.w_hh.shape() == [4 * h, h]
            && self.w_ih.shape().len() == 2
            && self.w_ih.shape()[0] == 4 * h
            && self.b_ih.shape() == [4 * h]
            && self.b_hh.shape() == [4 * h];
        if ok {
            Ok(())
        } else {
            Err(Error::shape(
                "LstmCell",
                format!(
                    "weight_ih {:?}, weight_hh {:?}, biases {:?} / {:?} are not an LSTM's [4H, in], [4H, H], [4H]",
                    self.w_ih.shape(),
                    self.w_hh.shape(),
                    self.b_ih.shape(),
                    self.b_hh.shape()
                ),
            ))
        }
    }
}

/// Where each sequence's time steps lie in a packed batch, sequences ordered longest first so
/// the ones still running at step `s` are the first [`Steps::active`]`(s)`.
#[derive(Clone, Debug)]
pub struct Steps {
    /// Original sequence index of each sorted slot.
    pub order: Vec<usize>,
    offsets: Vec<usize>,
    lens: Vec<usize>,
    /// Tokens in the batch.
    pub tokens: usize,
}

impl Steps {
    /// From a packed batch's sequence lengths.
    pub fn new(seq_lens: &[usize]) -> Self {
        let mut offsets = Vec::with_capacity(seq_lens.len());
        let mut o = 0;
        for &l in seq_lens {
            offsets.push(o);
            o += l;
        }
        let mut order: Vec<usize> = (0..seq_lens.len()).collect();
        // Stable: equal lengths keep batch order, so results never depend on the sort.
        order.sort_by_key(|&i| std::cmp::Reverse(seq_lens[i]));
        Steps {
            offsets: order.iter().map(|&i| offsets[i]).collect(),
            lens: order.iter().map(|&i| seq_lens[i]).collect(),
            order,
            tokens: o,
        }
    }

    /// Number of time steps (the longest sequence).
    pub fn len(&self) -> usize {
        self.lens.first().copied().unwrap_or(0)
    }

    /// Whether there is no time step.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sequences.
    pub fn sequences(&self) -> usize {
        self.lens.len()
    }

    /// Sequences still running at step `s`.
    pub fn active(&self, s: usize) -> usize {
        self.lens.partition_point(|&l| l > s)
    }

    /// The packed row of sorted slot `k` at step `s` (`reverse`: counted from its end).
    #[inline]
    pub fn row(&self, k: usize, s: usize, reverse: bool) -> usize {
        if reverse {
            self.offsets[k] + self.lens[k] - 1 - s
        } else {
            self.offsets[k] + s
        }
    }
}

/// What the backward pass needs from a forward pass: the activated gates `[T, 4H]` and the
/// cell states `[T, H]` of every token (its hidden states are the forward's output).
#[derive(Clone, Debug, Default)]
pub struct LstmTrace {
    /// i, f, g, o after their nonlinearities.
    pub gates: Vec<f32>,
    /// Cell state after each token.
    pub cells: Vec<f32>,
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[inline(always)]
fn tanh(x: f32) -> f32 {
    // 1 - 2 / (e^{2x} + 1): exact at both ends (e^{2x} saturates to 0 or inf).
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

dispatch! {
    /// One running sequence's step: `g` holds the input projection plus biases of the four
    /// gates; adds the recurrent part `r`, activates in place, updates the cell `c` and writes
    /// the hidden state `h`.
    fn cell_step(g: &mut [f32], r: &[f32], c: &mut [f32], h: &mut [f32]) {
        let n = c.len();
        let (gi, rest) = g.split_at_mut(n);
        let (gf, rest) = rest.split_at_mut(n);
        let (gg, go) = rest.split_at_mut(n);
        let (ri, rest) = r.split_at(n);
        let (rf, rest) = rest.split_at(n);
        let (rg, ro) = rest.split_at(n);
        for j in 0..n {
            let i = sigmoid(gi[j] + ri[j]);
            let f = sigmoid(gf[j] + rf[j]);
            let gv = tanh(gg[j] + rg[j]);
            let o = sigmoid(go[j] + ro[j]);
            let cv = f * c[j] + i * gv;
            gi[j] = i;
            gf[j] = f;
            gg[j] = gv;
            go[j] = o;
            c[j] = cv;
            h[j] = o * tanh(cv);
        }
    }
}

dispatch! {
    /// One running sequence's step backward: from the gradient `dh` of its hidden state (its
    /// output's plus the next step's) and `dc` of its cell (carried from the next step), the
    /// gradient `dg` of the gates' pre-activations; `dc` becomes the previous cell's gradient.
    fn cell_step_back(
        gates: &[f32],
        c: &[f32],
        c_prev: &[f32],
        dh: &[f32],
        dc: &mut [f32],
        dg: &mut [f32],
    ) {
        let n = c.len();
        let (i, rest) = gates.split_at(n);
        let (f, rest) = rest.split_at(n);
        let (g, o) = rest.split_at(n);
        let (di, rest) = dg.split_at_mut(n);
        let (df, rest) = rest.split_at_mut(n);
        let (dgg, dout) = rest.split_at_mut(n);
        for j in 0..n {
            let tc = tanh(c[j]);
            let dcv = dc[j] + dh[j] * o[j] * (1.0 - tc * tc);
            di[j] = dcv * g[j] * i[j] * (1.0 - i[j]);
            df[j] = dcv * c_prev[j] * f[j] * (1.0 - f[j]);
            dgg[j] = dcv * i[j] * (1.0 - g[j] * g[j]);
            dout[j] = dh[j] * tc * o[j] * (1.0 - o[j]);
            dc[j] = dcv * f[j];
        }
    }
}

/// One running sequence's slot in a forward step: its index, recurrent gate inputs, cell and
/// hidden state.
type StepRow<'a> = (usize, ((&'a [f32], &'a mut [f32]), &'a mut [f32]));

/// One running sequence's slot in a backward step: its index, hidden- and cell-state
/// gradients, and its gates' gradient.
type BackRow<'a> = (usize, ((&'a mut [f32], &'a mut [f32]), &'a mut [f32]));

/// The gate inputs of every token: `x · W_ihᵀ + b_ih + b_hh`, `[T, 4H]`, one GEMM.
fn input_gates(cell: &LstmCell, x: &[f32], t: usize) -> Result<Vec<f32>> {
    let g4 = 4 * cell.hidden();
    let mut gx = vec![0.0f32; t * g4];
    if t == 0 {
        return Ok(gx);
    }
    let bias: Vec<f32> = cell
        .b_ih
        .data()
        .iter()
        .zip(cell.b_hh.data())
        .map(|(a, b)| a + b)
        .collect();
    for row in gx.chunks_mut(g4) {
        row.copy_from_slice(&bias);
    }
    matmul_fast(
        MatMut::new(&mut gx, t, g4)?,
        MatRef::new(x, t, cell.input())?,
        MatRef::new(cell.w_ih.data(), g4, cell.input())?.t(),
        true,
    )?;
    Ok(gx)
}

/// A recurrent weight packed once for the many small products of a pass over time (the
/// AVX-512 kernel), or the `gemm` crate's path where that kernel does not run.
struct Recurrent<'a> {
    /// `[rows, cols]` as the product's right operand reads it: `out = x · Wᵀ` for the packed
    /// `W` (`[out, in]`).
    data: &'a [f32],
    out: usize,
    inp: usize,
    /// Whether `data` holds `Wᵀ` (`[in, out]`) rather than `W`.
    transposed: bool,
    packed: Option<PackedWeight>,
}

impl<'a> Recurrent<'a> {
    /// `x · Wᵀ` for `w: [out, in]`, or with `transposed`, `x · w` for `w: [in, out]`.
    fn new(data: &'a [f32], out: usize, inp: usize, transposed: bool) -> Self {
        let packed = PackedWeight::supported().then(|| {
            if transposed {
                PackedWeight::pack_strided(data, out, inp, 1, out)
            } else {
                PackedWeight::pack_strided(data, out, inp, inp, 1)
            }
        });
        Recurrent {
            data,
            out,
            inp,
            transposed,
            packed,
        }
    }

    /// `dst[n, out] = x[n, in] · Wᵀ`.
    fn product(&self, x: &[f32], n: usize, dst: &mut [f32]) -> Result<()> {
        match &self.packed {
            Some(p) if n >= MIN_ROWS => {
                p.matmul(x, n, None, dst, false, None);
                Ok(())
            }
            _ => {
                let w = if self.transposed {
                    MatRef::new(self.data, self.inp, self.out)?
                } else {
                    MatRef::new(self.data, self.out, self.inp)?.t()
                };
                matmul(
                    MatMut::new(dst, n, self.out)?,
                    MatRef::new(x, n, self.inp)?,
                    w,
                    1.0,
                    false,
                    Par::All,
                )
            }
        }
    }
}

/// Runs one direction over the packed input `x: [T, input]`, writing every token's hidden
/// state to `h_out: [T, H]`. `reverse` reads each sequence from its end. `state`, when given,
/// is each sequence's `[h, c]` (`2H` values, batch order): the starting state, overwritten by
/// the final one (a generator's cache); without it the state starts at zero. With `trace`, the
/// gates and cells are kept for [`lstm_backward`].
pub fn lstm_forward(
    cell: &LstmCell,
    x: &[f32],
    steps: &Steps,
    reverse: bool,
    h_out: &mut [f32],
    state: Option<&mut [f32]>,
    trace: Option<&mut LstmTrace>,
) -> Result<()> {
    cell.check()?;
    let (h, t, b) = (cell.hidden(), steps.tokens, steps.sequences());
    if x.len() != t * cell.input() || h_out.len() != t * h {
        return Err(Error::shape(
            "lstm_forward",
            format!(
                "{t} tokens need x of {} and h of {} values, got {} and {}",
                t * cell.input(),
                t * h,
                x.len(),
                h_out.len()
            ),
        ));
    }
    if state.as_deref().is_some_and(|s| s.len() != b * 2 * h) {
        return Err(Error::shape("lstm_forward", "state is [sequences, 2H]"));
    }
    let g4 = 4 * h;
    let mut gates = input_gates(cell, x, t)?;
    let mut cells = if trace.is_some() {
        vec![0.0f32; t * h]
    } else {
        Vec::new()
    };
    // Running states in sorted order.
    let mut hs = vec![0.0f32; b * h];
    let mut cs = vec![0.0f32; b * h];
    if let Some(st) = state.as_deref() {
        for (k, &i) in steps.order.iter().enumerate() {
            hs[k * h..(k + 1) * h].copy_from_slice(&st[i * 2 * h..i * 2 * h + h]);
            cs[k * h..(k + 1) * h].copy_from_slice(&st[i * 2 * h + h..(i + 1) * 2 * h]);
        }
    }
    let mut rec = vec![0.0f32; b * g4];
    let w_hh = Recurrent::new(cell.w_hh.data(), g4, h, false);
    let (gp, hp, cp) = (
        SendPtr(gates.as_mut_ptr()),
        SendPtr(h_out.as_mut_ptr()),
        SendPtr(cells.as_mut_ptr()),
    );
    let keep = !cells.is_empty();
    for s in 0..steps.len() {
        let n = steps.active(s);
        w_hh.product(&hs[..n * h], n, &mut rec[..n * g4])?;
        let body = |(k, ((r, c), hk)): StepRow| {
            let row = steps.row(k, s, reverse);
            // SAFETY: distinct running sequences are at distinct packed rows, so the parallel
            // tasks write disjoint rows of `gates`, `h_out` and `cells`, all inside their
            // buffers (`row < T`, checked above).
            let (g, ho) = unsafe {
                (
                    std::slice::from_raw_parts_mut(gp.ptr().add(row * g4), g4),
                    std::slice::from_raw_parts_mut(hp.ptr().add(row * h), h),
                )
            };
            cell_step(g, r, c, hk);
            ho.copy_from_slice(hk);
            if keep {
                // SAFETY: as above.
                unsafe { std::slice::from_raw_parts_mut(cp.ptr().add(row * h), h) }
                    .copy_from_slice(c);
            }
        };
        if n * g4 >= super::par::PAR_MIN_ELEMS && super::par::threads() > 1 {
            rec[..n * g4]
                .par_chunks(g4)
                .zip(cs[..n * h].par_chunks_mut(h))
                .zip(hs[..n * h].par_chunks_mut(h))
                .enumerate()
                .for_each(body);
        } else {
            rec[..n * g4]
                .chunks(g4)
                .zip(cs[..n * h].chunks_mut(h))
                .zip(hs[..n * h].chunks_mut(h))
                .enumerate()
                .for_each(body);
        }
    }
    if let Some(st) = state {
        for (k, &i) in steps.order.iter().enumerate() {
            st[i * 2 * h..i * 2 * h + h].copy_from_slice(&hs[k * h..(k + 1) * h]);
            st[i * 2 * h + h..(i + 1) * 2 * h].copy_from_slice(&cs[k * h..(k + 1) * h]);
        }
    }
    if let Some(tr) = trace {
        tr.gates = gates;
        tr.cells = cells;
    }
    Ok(())
}

/// Gradients of one direction's weights (accumulated, `+=`), shaped as [`LstmCell`]'s.
pub struct LstmCellGrads<'a> {
    /// Of `weight_ih`.
    pub w_ih: Option<&'a mut [f32]>,
    /// Of `weight_hh`.
    pub w_hh: Option<&'a mut [f32]>,
    /// Of `bias_ih`.
    pub b_ih: Option<&'a mut [f32]>,
    /// Of `bias_hh`.
    pub b_hh: Option<&'a mut [f32]>,
}

/// Backward through time of [`lstm_forward`] (zero starting state): from `dh: [T, H]`, the
/// gradient of every hidden state the forward wrote, and its input `x`, output `h` and
/// `trace`, writes `dx: [T, input]` (if given) and adds the weight gradients into `grads`.
#[allow(clippy::too_many_arguments)]
pub fn lstm_backward(
    cell: &LstmCell,
    x: &[f32],
    h: &[f32],
    trace: &LstmTrace,
    steps: &Steps,
    reverse: bool,
    dh: &[f32],
    dx: Option<&mut [f32]>,
    grads: LstmCellGrads<'_>,
) -> Result<()> {
    cell.check()?;
    let (hw, t, b) = (cell.hidden(), steps.tokens, steps.sequences());
    let g4 = 4 * hw;
    if dh.len() != t * hw
        || h.len() != t * hw
        || trace.cells.len() != t * hw
        || trace.gates.len() != t * g4
    {
        return Err(Error::shape(
            "lstm_backward",
            "dh, h and the trace must come from a forward over the same batch",
        ));
    }
    let mut dgates = vec![0.0f32; t * g4];
    let mut dhs = vec![0.0f32; b * hw];
    let mut dcs = vec![0.0f32; b * hw];
    let mut dstep = vec![0.0f32; b * g4];
    let zero = vec![0.0f32; hw];
    // dh_prev = dgates · W_hh: the product with W_hh's transpose, packed once.
    let w_hh_t = Recurrent::new(cell.w_hh.data(), hw, g4, true);
    let dgp = SendPtr(dgates.as_mut_ptr());
    for s in (0..steps.len()).rev() {
        let n = steps.active(s);
        let body = |(k, ((dhk, dck), dgk)): BackRow| {
            let row = steps.row(k, s, reverse);
            for (a, b) in dhk.iter_mut().zip(&dh[row * hw..(row + 1) * hw]) {
                *a += b;
            }
            let c_prev = if s == 0 {
                &zero[..]
            } else {
                let p = steps.row(k, s - 1, reverse);
                &trace.cells[p * hw..(p + 1) * hw]
            };
            cell_step_back(
                &trace.gates[row * g4..(row + 1) * g4],
                &trace.cells[row * hw..(row + 1) * hw],
                c_prev,
                dhk,
                dck,
                dgk,
            );
            // SAFETY: distinct running sequences are at distinct packed rows (row < T).
            unsafe { std::slice::from_raw_parts_mut(dgp.ptr().add(row * g4), g4) }
                .copy_from_slice(dgk);
        };
        if n * g4 >= super::par::PAR_MIN_ELEMS && super::par::threads() > 1 {
            dhs[..n * hw]
                .par_chunks_mut(hw)
                .zip(dcs[..n * hw].par_chunks_mut(hw))
                .zip(dstep[..n * g4].par_chunks_mut(g4))
                .enumerate()
                .for_each(body);
        } else {
            dhs[..n * hw]
                .chunks_mut(hw)
                .zip(dcs[..n * hw].chunks_mut(hw))
                .zip(dstep[..n * g4].chunks_mut(g4))
                .enumerate()
                .for_each(body);
        }
        // The previous step's hidden-state gradient: dgates · W_hh (rows past the sequences
        // that run at step s - 1 are never read again).
        w_hh_t.product(&dstep[..n * g4], n, &mut dhs[..n * hw])?;
    }
    if let Some(g) = grads.w_hh {
        // Each token's previous hidden state (zero at a sequence's first step).
        let mut prev = vec![0.0f32; t * hw];
        for k in 0..b {
            for s in 1..steps.lens[k] {
                let (r, p) = (steps.row(k, s, reverse), steps.row(k, s - 1, reverse));
                prev[r * hw..(r + 1) * hw].copy_from_slice(&h[p * hw..(p + 1) * hw]);
            }
        }
        matmul_fast(
            MatMut::new(g, g4, hw)?,
            MatRef::new(&dgates, t, g4)?.t(),
            MatRef::new(&prev, t, hw)?,
            true,
        )?;
    }
    if let Some(g) = grads.w_ih {
        matmul_fast(
            MatMut::new(g, g4, cell.input())?,
            MatRef::new(&dgates, t, g4)?.t(),
            MatRef::new(x, t, cell.input())?,
            true,
        )?;
    }
    if let Some(g) = grads.b_ih {
        add_col_sums(&dgates, g4, g);
    }
    if let Some(g) = grads.b_hh {
        add_col_sums(&dgates, g4, g);
    }
    if let Some(dx) = dx {
        matmul_fast(
            MatMut::new(dx, t, cell.input())?,
            MatRef::new(&dgates, t, g4)?,
            MatRef::new(cell.w_ih.data(), g4, cell.input())?,
            false,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rand_tensor(rng: &mut rand::rngs::StdRng, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        Tensor::new(
            shape.to_vec(),
            (0..n).map(|_| rng.gen_range(-0.6..0.6)).collect(),
        )
        .unwrap()
    }

    fn cell(rng: &mut rand::rngs::StdRng, input: usize, h: usize) -> LstmCell {
        LstmCell {
            w_ih: rand_tensor(rng, &[4 * h, input]),
            w_hh: rand_tensor(rng, &[4 * h, h]),
            b_ih: rand_tensor(rng, &[4 * h]),
            b_hh: rand_tensor(rng, &[4 * h]),
        }
    }

    /// The textbook LSTM in f64, one sequence at a time: the reference for the kernels.
    fn naive(cell: &LstmCell, x: &[f32], lens: &[usize], reverse: bool) -> Vec<f64> {
        let (h, inp) = (cell.hidden(), cell.input());
        let w = |t: &Tensor, r: usize, c: usize| t.data()[r * t.cols() + c] as f64;
        let mut out = vec![0.0; lens.iter().sum::<usize>() * h];
        let mut off = 0;
        for &len in lens {
            let (mut hs, mut cs) = (vec![0.0f64; h], vec![0.0f64; h]);
            for s in 0..len {
                let row = if reverse { off + len - 1 - s } else { off + s };
                let mut z = vec![0.0f64; 4 * h];
                for (r, zr) in z.iter_mut().enumerate() {
                    *zr = cell.b_ih.data()[r] as f64 + cell.b_hh.data()[r] as f64;
                    for c in 0..inp {
                        *zr += w(&cell.w_ih, r, c) * x[row * inp + c] as f64;
                    }
                    for (c, hv) in hs.iter().enumerate() {
                        *zr += w(&cell.w_hh, r, c) * hv;
                    }
                }
                let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
                for j in 0..h {
                    let (i, f, g, o) = (
                        sig(z[j]),
                        sig(z[h + j]),
                        z[2 * h + j].tanh(),
                        sig(z[3 * h + j]),
                    );
                    cs[j] = f * cs[j] + i * g;
                    hs[j] = o * cs[j].tanh();
                    out[row * h + j] = hs[j];
                }
            }
            off += len;
        }
        out
    }

    /// Loss = Σ w ⊙ h for fixed random w: its gradient w.r.t. h is w.
    fn loss(cell: &LstmCell, x: &[f32], lens: &[usize], reverse: bool, wts: &[f32]) -> f64 {
        naive(cell, x, lens, reverse)
            .iter()
            .zip(wts)
            .map(|(a, &b)| a * b as f64)
            .sum()
    }

    #[test]
    fn forward_matches_naive_both_directions() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        // Large enough that the step loop runs in parallel too.
        for &(inp, h, ref lens) in &[
            (5usize, 7usize, vec![6usize, 3, 5, 3]),
            (24, 64, vec![9, 70, 1, 33]),
        ] {
            let c = cell(&mut rng, inp, h);
            let t: usize = lens.iter().sum();
            let x: Vec<f32> = (0..t * inp).map(|_| rng.gen_range(-1.0..1.0)).collect();
            for reverse in [false, true] {
                let want = naive(&c, &x, lens, reverse);
                let mut got = vec![0.0; t * h];
                let mut tr = LstmTrace::default();
                lstm_forward(
                    &c,
                    &x,
                    &Steps::new(lens),
                    reverse,
                    &mut got,
                    None,
                    Some(&mut tr),
                )
                .unwrap();
                for (g, w) in got.iter().zip(&want) {
                    assert!((*g as f64 - w).abs() < 2e-5, "{g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn carried_state_equals_one_long_run() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let c = cell(&mut rng, 4, 6);
        let x: Vec<f32> = (0..2 * 7 * 4).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut whole = vec![0.0; 14 * 6];
        lstm_forward(&c, &x, &Steps::new(&[7, 7]), false, &mut whole, None, None).unwrap();
        // The same two sequences fed as 3 + 4 tokens with the state carried between calls.
        let mut state = vec![0.0; 2 * 12];
        let (a, b) = (3usize, 4usize);
        let mut first = vec![0.0; 2 * a * 4];
        let mut second = vec![0.0; 2 * b * 4];
        for s in 0..2 {
            first[s * a * 4..(s + 1) * a * 4].copy_from_slice(&x[s * 28..s * 28 + a * 4]);
            second[s * b * 4..(s + 1) * b * 4].copy_from_slice(&x[s * 28 + a * 4..(s + 1) * 28]);
        }
        let mut h1 = vec![0.0; 2 * a * 6];
        let mut h2 = vec![0.0; 2 * b * 6];
        lstm_forward(
            &c,
            &first,
            &Steps::new(&[a, a]),
            false,
            &mut h1,
            Some(&mut state),
            None,
        )
        .unwrap();
        lstm_forward(
            &c,
            &second,
            &Steps::new(&[b, b]),
            false,
            &mut h2,
            Some(&mut state),
            None,
        )
        .unwrap();
        for s in 0..2 {
            let want = &whole[(s * 7 + 6) * 6..(s * 7 + 7) * 6];
            let got = &h2[(s * b + b - 1) * 6..(s * b + b) * 6];
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let (inp, h) = (3usize, 4usize);
        let lens = [4usize, 2, 3];
        let t: usize = lens.iter().sum();
        let c = cell(&mut rng, inp, h);
        let x: Vec<f32> = (0..t * inp).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let wts: Vec<f32> = (0..t * h).map(|_| rng.gen_range(-1.0..1.0)).collect();
        for reverse in [false, true] {
            let steps = Steps::new(&lens);
            let mut hout = vec![0.0; t * h];
            let mut tr = LstmTrace::default();
            lstm_forward(&c, &x, &steps, reverse, &mut hout, None, Some(&mut tr)).unwrap();
            let mut g = [
                vec![0.0; 4 * h * inp],
                vec![0.0; 4 * h * h],
                vec![0.0; 4 * h],
                vec![0.0; 4 * h],
            ];
            let mut dx = vec![0.0; t * inp];
            let [gi, gh, gbi, gbh] = &mut g;
            lstm_backward(
                &c,
                &x,
                &hout,
                &tr,
                &steps,
                reverse,
                &wts,
                Some(&mut dx),
                LstmCellGrads {
                    w_ih: Some(gi),
                    w_hh: Some(gh),
                    b_ih: Some(gbi),
                    b_hh: Some(gbh),
                },
            )
            .unwrap();
            let eps = 1e-3f32;
            let check = |got: f32, plus: f64, minus: f64| {
                let fd = (plus - minus) / (2.0 * eps as f64);
                assert!(
                    (got as f64 - fd).abs() < 2e-3 * (1.0 + fd.abs()),
                    "{got} vs {fd}"
                );
            };
            for i in 0..x.len() {
                let (mut xp, mut xm) = (x.clone(), x.clone());
                xp[i] += eps;
                xm[i] -= eps;
                check(
                    dx[i],
                    loss(&c, &xp, &lens, reverse, &wts),
                    loss(&c, &xm, &lens, reverse, &wts),
                );
            }
            for (which, grad) in g.iter().enumerate() {
                for (i, &got) in grad.iter().enumerate() {
                    let bump = |d: f32| {
                        let mut cc = c.clone();
                        let t = match which {
                            0 => &mut cc.w_ih,
                            1 => &mut cc.w_hh,
                            2 => &mut cc.b_ih,
                            _ => &mut cc.b_hh,
                        };
                        t.data_mut()[i] += d;
                        loss(&cc, &x, &lens, reverse, &wts)
                    };
                    check(got, bump(eps), bump(-eps));
                }
            }
        }
    }
}

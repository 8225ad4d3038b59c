//! The linear layer: `y = x Wᵀ + b`, with the bias (and optionally the activation) fused into
//! one pass after the matrix multiply, or accumulated straight into a residual stream. The
//! weight is f32, or int8 with a scale per output row (`kiln quantize`): one layer type, so
//! every command runs quantized models.

use super::activation::{bias_act_inplace, Activation};
use super::int8::Int8Weight;
use super::matmul::{matmul, matmul_fast, MatMut, MatRef, Par};
use super::packed::{PackedWeight, MIN_ROWS};
use super::tensor::Tensor;
use crate::error::{Error, Result};
use crate::peft::lora::Lora;
use std::sync::OnceLock;

/// A dense layer holding `weight: [out, in]` (PyTorch `nn.Linear` layout) and `bias: [out]`.
#[derive(Clone, Debug)]
pub struct Linear {
    /// `[out_features, in_features]`; empty when the layer is int8 (see `int8`).
    pub weight: Tensor,
    /// `[out_features]`, if any.
    pub bias: Option<Tensor>,
    /// LoRA bypasses over bands of the output rows (empty for a plain layer).
    pub lora: Vec<Lora>,
    /// The weight packed for the AVX-512 kernel, made on first use. Whoever changes `weight`
    /// in place must call [`Linear::weights_changed`].
    packed: OnceLock<Option<PackedWeight>>,
    /// The weight in int8, when the layer is quantized (`weight` is then empty).
    pub int8: Option<Int8Weight>,
}

/// What a linear layer does with its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearOut {
    /// `out = x Wᵀ + b`.
    Write,
    /// `out = act(x Wᵀ + b)`.
    WriteAct(Activation),
    /// `out += x Wᵀ + b` (a residual connection without a temporary).
    Accumulate,
}

impl Linear {
    /// A layer from `weight: [out, in]` and an optional `bias: [out]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear {
            weight,
            bias,
            lora: Vec::new(),
            packed: OnceLock::new(),
            int8: None,
        }
    }

    /// An int8 layer.
    pub fn quantized(weight: Int8Weight, bias: Option<Tensor>) -> Self {
        Linear {
            int8: Some(weight),
            ..Linear::new(Tensor::zeros(&[0]), bias)
        }
    }

    /// Turns the weight into int8 (a scale per output row); the f32 weight is dropped.
    pub fn quantize(&mut self) {
        if self.int8.is_none() {
            self.int8 = Some(Int8Weight::quantize(&self.weight));
            self.weight = Tensor::zeros(&[0]);
            self.weights_changed();
        }
    }

    /// Turns an int8 layer back into f32 (the weight its int8 values stand for).
    pub fn dequantize(&mut self) {
        if let Some(q) = self.int8.take() {
            self.weight = q.dequantize();
            self.weights_changed();
        }
    }

    /// The f32 weight: the layer's own, or its int8 weight dequantized.
    pub fn f32_weight(&self) -> std::borrow::Cow<'_, Tensor> {
        match &self.int8 {
            Some(q) => std::borrow::Cow::Owned(q.dequantize()),
            None => std::borrow::Cow::Borrowed(&self.weight),
        }
    }

    /// Drops the packed copy after `weight` was modified.
    pub fn weights_changed(&mut self) {
        self.packed = OnceLock::new();
    }

    /// Input width.
    pub fn in_features(&self) -> usize {
        match &self.int8 {
            Some(q) => q.in_features(),
            // An empty tensor (a frozen weight's gradient buffer) has no width.
            None => self.weight.shape().get(1).copied().unwrap_or(0),
        }
    }

    /// Output width.
    pub fn out_features(&self) -> usize {
        match &self.int8 {
            Some(q) => q.out_features(),
            None => self.weight.shape()[0],
        }
    }

    /// Whether an unmerged LoRA bypass adds to this layer's output.
    pub fn has_active_lora(&self) -> bool {
        self.lora.iter().any(|l| !l.merged)
    }

    /// x: [rows, in] -> out: [rows, out], LoRA bypasses included (without dropout).
    pub fn forward_into(
        &self,
        x: &[f32],
        rows: usize,
        out: &mut [f32],
        mode: LinearOut,
    ) -> Result<()> {
        if !self.has_active_lora() {
            return self.base_forward_into(x, rows, out, mode);
        }
        // The bypass adds before the activation.
        let base_mode = match mode {
            LinearOut::WriteAct(_) => LinearOut::Write,
            m => m,
        };
        self.base_forward_into(x, rows, out, base_mode)?;
        let o = self.out_features();
        for l in &self.lora {
            l.forward_add(x, rows, out, o, None)?;
        }
        if let LinearOut::WriteAct(a) = mode {
            bias_act_inplace(out, None, Some(a));
        }
        Ok(())
    }

    /// The frozen layer alone (no LoRA). x: [rows, in] -> out: [rows, out]
    fn base_forward_into(
        &self,
        x: &[f32],
        rows: usize,
        out: &mut [f32],
        mode: LinearOut,
    ) -> Result<()> {
        let (o, i) = (self.out_features(), self.in_features());
        if let Some(q) = &self.int8 {
            if x.len() != rows * i || out.len() != rows * o {
                return Err(Error::shape(
                    "Linear::forward",
                    format!(
                        "int8 weight [{o}, {i}] with {rows} rows: x of {}, out of {}",
                        x.len(),
                        out.len()
                    ),
                ));
            }
            q.forward_into(x, rows, self.bias.as_ref().map(|b| b.data()), out, mode);
            return Ok(());
        }
        if rows >= MIN_ROWS && x.len() == rows * i && out.len() == rows * o {
            let packed = self.packed.get_or_init(|| {
                PackedWeight::supported().then(|| PackedWeight::pack(&self.weight))
            });
            if let Some(pw) = packed {
                let bias = self.bias.as_ref().map(|b| b.data());
                match mode {
                    LinearOut::Write => pw.matmul(x, rows, bias, out, false, None),
                    LinearOut::WriteAct(a) => pw.matmul(x, rows, bias, out, false, Some(a)),
                    LinearOut::Accumulate => pw.matmul(x, rows, bias, out, true, None),
                }
                return Ok(());
            }
        }
        linear_forward(&self.weight, self.bias.as_ref(), x, rows, out, mode)
    }

    /// x: [rows, in] -> [rows, out], allocating the result.
    pub fn forward(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let mut out = vec![0.0; rows * self.out_features()];
        self.forward_into(x, rows, &mut out, LinearOut::Write)?;
        Ok(out)
    }
}

/// The linear map with borrowed parameters, so a tied matrix (the word embeddings used as the
/// output projection) needs no copy. x: [rows, in] -> out: [rows, out]
pub fn linear_forward(
    weight: &Tensor,
    bias: Option<&Tensor>,
    x: &[f32],
    rows: usize,
    out: &mut [f32],
    mode: LinearOut,
) -> Result<()> {
    linear_forward_with(weight, bias, x, rows, out, mode, false)
}

/// [`linear_forward`] for a weight used once (training, where every step changes the
/// weights): packed for the AVX-512 kernel on the spot, which pays for itself on a large
/// product (the vocabulary projection of a language-model loss).
pub fn linear_forward_once(
    weight: &Tensor,
    bias: Option<&Tensor>,
    x: &[f32],
    rows: usize,
    out: &mut [f32],
    mode: LinearOut,
) -> Result<()> {
    linear_forward_with(weight, bias, x, rows, out, mode, true)
}

fn linear_forward_with(
    weight: &Tensor,
    bias: Option<&Tensor>,
    x: &[f32],
    rows: usize,
    out: &mut [f32],
    mode: LinearOut,
    once: bool,
) -> Result<()> {
    {
        let (o, i) = (weight.shape()[0], weight.cols());
        if x.len() != rows * i || out.len() != rows * o {
            return Err(Error::shape(
                "Linear::forward",
                format!(
                    "weight [{o}, {i}] with {rows} rows needs x of {} and out of {} values, got {} and {}",
                    rows * i,
                    rows * o,
                    x.len(),
                    out.len()
                ),
            ));
        }
        let bias = bias.map(|b| b.data());
        if mode == LinearOut::Accumulate {
            // Adding the bias first lets the multiply accumulate straight into `out`.
            bias_act_inplace(out, bias, None);
        }
        // Wᵀ is a strided view of W: no transposed copy.
        let w_t = MatRef::new(weight.data(), o, i)?.t();
        if once {
            matmul_fast(
                MatMut::new(out, rows, o)?,
                MatRef::new(x, rows, i)?,
                w_t,
                mode == LinearOut::Accumulate,
            )?;
        } else {
            matmul(
                MatMut::new(out, rows, o)?,
                MatRef::new(x, rows, i)?,
                w_t,
                1.0,
                mode == LinearOut::Accumulate,
                Par::All,
            )?;
        }
        match mode {
            LinearOut::Write => bias_act_inplace(out, bias, None),
            LinearOut::WriteAct(a) => bias_act_inplace(out, bias, Some(a)),
            LinearOut::Accumulate => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::matmul::naive_matmul;
    use rand::{Rng, SeedableRng};

    /// Relative tolerance of the gemm-backed linear against the f64 naive product.
    const LINEAR_RTOL: f32 = 1e-5;

    fn rand_vec(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
    }

    #[test]
    fn linear_matches_naive_in_all_modes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for &(rows, i, o) in &[(1usize, 5usize, 3usize), (17, 96, 200), (130, 64, 33)] {
            let x = rand_vec(&mut rng, rows * i);
            let w = rand_vec(&mut rng, o * i);
            let b = rand_vec(&mut rng, o);
            let lin = Linear::new(
                Tensor::new(vec![o, i], w.clone()).unwrap(),
                Some(Tensor::new(vec![o], b.clone()).unwrap()),
            );
            let wt = Tensor::new(vec![o, i], w).unwrap().transpose2d().unwrap();
            let reference = naive_matmul(&x, wt.data(), rows, i, o);
            let scale = i as f32; // sums of i products of values in [-1, 1]
            let close = |got: f32, want: f32| (got - want).abs() <= LINEAR_RTOL * scale;

            let y = lin.forward(&x, rows).unwrap();
            let resid = rand_vec(&mut rng, rows * o);
            let mut acc = resid.clone();
            lin.forward_into(&x, rows, &mut acc, LinearOut::Accumulate)
                .unwrap();
            let mut act = vec![0.0; rows * o];
            lin.forward_into(
                &x,
                rows,
                &mut act,
                LinearOut::WriteAct(Activation::GeluTanh),
            )
            .unwrap();
            for r in 0..rows {
                for c in 0..o {
                    let want = reference[r * o + c] + b[c];
                    assert!(close(y[r * o + c], want));
                    assert!(close(acc[r * o + c], want + resid[r * o + c]));
                    assert!(close(act[r * o + c], Activation::GeluTanh.apply(want)));
                }
            }
        }
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        let lin = Linear::new(Tensor::zeros(&[3, 4]), None);
        let err = lin.forward(&[0.0; 5], 1).unwrap_err();
        assert!(err.to_string().contains("weight [3, 4]"), "{err}");
    }
}

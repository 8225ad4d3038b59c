//! Elementwise activations, applied in place and in parallel.

use super::par::for_each_row;
use super::simd::dispatch;

/// The feed-forward nonlinearity, named as Hugging Face configs name it (`hidden_act`,
/// `activation_function`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: exact, `0.5·x·(1 + erf(x/√2))` (BERT).
    GeluErf,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation (GPT-2).
    GeluTanh,
    /// `relu`.
    Relu,
}

impl Activation {
    /// Parses a Hugging Face activation name.
    pub fn from_hf(name: &str) -> Option<Self> {
        match name {
            "gelu" | "gelu_python" => Some(Activation::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Activation::GeluTanh),
            "relu" => Some(Activation::Relu),
            _ => None,
        }
    }

    /// The Hugging Face name written back to config.json.
    pub fn hf_name(self) -> &'static str {
        match self {
            Activation::GeluErf => "gelu",
            Activation::GeluTanh => "gelu_new",
            Activation::Relu => "relu",
        }
    }

    /// The activation of one value.
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::GeluErf => gelu_erf(x),
            Activation::GeluTanh => gelu_tanh(x),
            Activation::Relu => x.max(0.0),
        }
    }
}

/// Exact GELU, `0.5·x·(1 + erf(x/√2))`.
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + super::math::erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Tanh-approximated GELU; `tanh(u) = 1 - 2 / (e^{2u} + 1)` with the vectorizable exp.
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // sqrt(2/pi)
    let u = C * (x + 0.044715 * x * x * x);
    let tanh = 1.0 - 2.0 / (super::math::exp(2.0 * u) + 1.0);
    0.5 * x * (1.0 + tanh)
}

/// Applies `f` to `row + bias` elementwise; generic so each activation gets its own
/// vectorized loop (a `match` per element would block vectorization).
#[inline(always)]
fn map_row(row: &mut [f32], bias: Option<&[f32]>, f: impl Fn(f32) -> f32) {
    // Index loops, not iterator adapters: adapters may stay out of line and would then be
    // compiled without the caller's AVX2 features.
    let n = row.len();
    match bias {
        Some(b) => {
            let b = &b[..n];
            for i in 0..n {
                row[i] = f(row[i] + b[i]);
            }
        }
        None => {
            for v in row.iter_mut() {
                *v = f(*v);
            }
        }
    }
}

dispatch! {
    fn row_gelu_erf(row: &mut [f32], bias: Option<&[f32]>) { map_row(row, bias, gelu_erf) }
}
dispatch! {
    fn row_gelu_tanh(row: &mut [f32], bias: Option<&[f32]>) { map_row(row, bias, gelu_tanh) }
}
dispatch! {
    fn row_relu(row: &mut [f32], bias: Option<&[f32]>) { map_row(row, bias, |v| v.max(0.0)) }
}
dispatch! {
    fn row_bias(row: &mut [f32], bias: Option<&[f32]>) { map_row(row, bias, |v| v) }
}

/// `x[r, :] = act(x[r, :] + bias)` for every row: the bias add and activation fused into one
/// pass over memory after a matrix multiply.
pub fn bias_act_inplace(x: &mut [f32], bias: Option<&[f32]>, act: Option<Activation>) {
    let cols = bias.map_or(4096.min(x.len()), |b| b.len()).max(1);
    match act {
        Some(Activation::GeluErf) => for_each_row(x, cols, |_, r| row_gelu_erf(r, bias)),
        Some(Activation::GeluTanh) => for_each_row(x, cols, |_, r| row_gelu_tanh(r, bias)),
        Some(Activation::Relu) => for_each_row(x, cols, |_, r| row_relu(r, bias)),
        None if bias.is_some() => for_each_row(x, cols, |_, r| row_bias(r, bias)),
        None => {}
    }
}

/// `x = act(x)` on one contiguous slice, on the calling thread (used inside other kernels,
/// e.g. on a matrix-multiply tile while it is still in L1).
pub fn act_slice(x: &mut [f32], act: Activation) {
    match act {
        Activation::GeluErf => row_gelu_erf(x, None),
        Activation::GeluTanh => row_gelu_tanh(x, None),
        Activation::Relu => row_relu(x, None),
    }
}

/// `x += y`, elementwise, in parallel.
pub fn add_inplace(x: &mut [f32], y: &[f32]) {
    let cols = 4096.min(x.len()).max(1);
    for_each_row(x, cols, |i, row| {
        let start = i * cols;
        let n = row.len();
        row.iter_mut()
            .zip(&y[start..start + n])
            .for_each(|(a, b)| *a += b)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tolerance for f32 activations against an f64 reference.
    const ACT_TOL: f32 = 1e-6;

    fn erf64(x: f64) -> f64 {
        libm::erf(x)
    }

    #[test]
    fn activations_match_f64_reference() {
        for i in -600..600 {
            let x = i as f32 / 100.0;
            let xd = x as f64;
            let erf_ref = 0.5 * xd * (1.0 + erf64(xd / 2f64.sqrt()));
            let c = (2.0 / std::f64::consts::PI).sqrt();
            let tanh_ref = 0.5 * xd * (1.0 + (c * (xd + 0.044715 * xd.powi(3))).tanh());
            let tol = ACT_TOL * (1.0 + x.abs());
            assert!(
                (Activation::GeluErf.apply(x) as f64 - erf_ref).abs() < tol as f64,
                "gelu({x})"
            );
            assert!(
                (Activation::GeluTanh.apply(x) as f64 - tanh_ref).abs() < tol as f64,
                "gelu_new({x})"
            );
            assert_eq!(Activation::Relu.apply(x), x.max(0.0));
        }
    }

    #[test]
    fn fused_bias_act_matches_separate_steps() {
        let cols = 37;
        let rows = 1000; // large enough to take the parallel path
        let x: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
            .collect();
        let b: Vec<f32> = (0..cols).map(|i| i as f32 / 10.0 - 1.5).collect();
        let mut fused = x.clone();
        bias_act_inplace(&mut fused, Some(&b), Some(Activation::GeluErf));
        for r in 0..rows {
            for c in 0..cols {
                let want = Activation::GeluErf.apply(x[r * cols + c] + b[c]);
                assert_eq!(fused[r * cols + c], want);
            }
        }
    }
}

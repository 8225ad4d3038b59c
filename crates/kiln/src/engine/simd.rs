//! Helpers that let plain Rust loops compile to wide vector code.
//!
//! The default x86-64 target has only SSE2, so hot elementwise loops are compiled a second time
//! with AVX2+FMA enabled and picked at run time (`dispatch!`); the binary still runs on any
//! x86-64. Reductions accumulate in 8 independent lanes, because the compiler may not reorder
//! floating-point sums on its own.

/// Whether the CPU has AVX2 and FMA (cached by std).
#[inline]
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines `pub fn $name(args)` that runs `$body` compiled for AVX2+FMA when available.
macro_rules! dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn generic($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn wide($($arg: $ty),*) {
                generic($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            {
                if $crate::engine::simd::has_avx2_fma() {
                    // SAFETY: the CPU supports the features `wide` was compiled for.
                    return unsafe { wide($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}
pub(crate) use dispatch;

/// Sum with 8 independent accumulators.
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// Sum of squared deviations from `mean`, 8 lanes.
#[inline(always)]
pub fn sum_sq_dev(x: &[f32], mean: f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            let d = c[i] - mean;
            acc[i] += d * d;
        }
    }
    acc.iter().sum::<f32>() + rest.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>()
}

/// Maximum (NEG_INFINITY for an empty slice), 8 lanes.
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    acc.iter()
        .chain(rest)
        .cloned()
        .fold(f32::NEG_INFINITY, f32::max)
}

#[cfg(test)]
mod tests {
    #[test]
    fn lane_reductions_match_sequential() {
        let x: Vec<f32> = (0..1003)
            .map(|i| ((i * 37) % 101) as f32 / 7.0 - 3.0)
            .collect();
        let s: f64 = x.iter().map(|&v| v as f64).sum();
        assert!((super::sum(&x) as f64 - s).abs() < 1e-3);
        assert_eq!(super::max(&x), x.iter().cloned().fold(f32::MIN, f32::max));
        let m = (s / x.len() as f64) as f32;
        let ss: f64 = x.iter().map(|&v| ((v - m) as f64).powi(2)).sum();
        assert!((super::sum_sq_dev(&x, m) as f64 - ss).abs() < 1e-2);
        assert_eq!(super::max(&[]), f32::NEG_INFINITY);
    }
}

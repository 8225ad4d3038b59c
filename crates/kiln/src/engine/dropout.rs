//! Dropout with counter-based masks: whether element `i` of a stream is kept is a pure
//! function of `(seed, i)`, so the backward pass (and a resumed run) regenerates the exact
//! mask instead of storing it, and results never depend on thread scheduling.

use rayon::prelude::*;

/// A dropout layer's settings for one call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    /// Probability of zeroing an element.
    pub p: f32,
    /// Seed of this call's mask stream.
    pub seed: u64,
}

/// splitmix64: a fast, well-mixed hash of a 64-bit counter.
#[inline(always)]
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Dropout {
    /// The seed of a sub-stream (a layer, a site within it).
    pub fn derive(seed: u64, stream: u64) -> u64 {
        mix(seed ^ mix(stream))
    }

    /// Whether element `i` survives.
    #[inline(always)]
    pub fn keep(&self, i: u64) -> bool {
        let u = (mix(self.seed ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03)) >> 40) as f32
            / (1u64 << 24) as f32;
        u >= self.p
    }

    /// `x = mask ⊙ x / (1 - p)`; the same call on a gradient is the backward pass.
    pub fn apply(&self, x: &mut [f32]) {
        if self.p <= 0.0 {
            return;
        }
        let scale = 1.0 / (1.0 - self.p);
        x.par_chunks_mut(4096).enumerate().for_each(|(c, chunk)| {
            for (j, v) in chunk.iter_mut().enumerate() {
                *v = if self.keep((c * 4096 + j) as u64) {
                    *v * scale
                } else {
                    0.0
                };
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_the_right_share_and_rescales() {
        let d = Dropout { p: 0.1, seed: 3 };
        let mut x = vec![1.0f32; 100_000];
        d.apply(&mut x);
        let zeros = x.iter().filter(|&&v| v == 0.0).count() as f32 / x.len() as f32;
        assert!((zeros - 0.1).abs() < 0.005, "{zeros}");
        assert!(x.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
        let mean = x.iter().sum::<f32>() / x.len() as f32;
        assert!((mean - 1.0).abs() < 0.01);
        // Same seed, same mask; another seed, another mask.
        let mut y = vec![1.0f32; 100_000];
        d.apply(&mut y);
        assert_eq!(x, y);
        let mut z = vec![1.0f32; 100_000];
        Dropout { p: 0.1, seed: 4 }.apply(&mut z);
        assert_ne!(x, z);
    }
}

//! Kiln's own matrix multiply for linear layers on AVX-512 CPUs: weights packed once into
//! 32-column panels, a 12×32 register-blocked kernel, the bias (and a residual) applied while
//! the tile is still in registers.
//!
//! Why not only the `gemm` crate: on stable Rust it uses 256-bit AVX2 kernels, which leave half
//! of an AVX-512 core's FMA throughput unused (measured: 134 vs 268 GFLOP/s per core on this
//! project's machines), and it re-packs the weight matrix on every call. CPUs without AVX-512
//! keep using `gemm` (see `linear.rs`).

use super::activation::{act_slice, Activation};
use super::tensor::Tensor;
use rayon::prelude::*;

/// Output columns per panel (two 16-lane vectors).
pub const NR: usize = 32;
/// Rows per register tile.
const MR: usize = 12;
/// Rows per parallel task (a multiple of MR).
const MC: usize = 96;
/// Depth per cache block: a panel slice of KC×NR floats stays in L1.
const KC: usize = 256;

/// Below this many rows the packed path does not pay off (single-token decoding), and the
/// `gemm` crate's path is used. From here on the packed weights save `gemm`'s per-call
/// re-packing, which dominates one short sentence (11 ms of a 16-token MiniLM query).
pub const MIN_ROWS: usize = 4;

/// A weight matrix `[n, k]` (PyTorch layout) repacked as `ceil(n/32)` panels of `k × 32`.
#[derive(Clone)]
pub struct PackedWeight {
    n: usize,
    k: usize,
    panels: Vec<f32>,
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeight([{}, {}])", self.n, self.k)
    }
}

impl PackedWeight {
    /// Packs `w: [n, k]`; columns past `n` in the last panel are zero.
    pub fn pack(w: &Tensor) -> Self {
        let (n, k) = (w.shape()[0], w.cols());
        Self::pack_strided(w.data(), n, k, k, 1)
    }

    /// Packs the `[n, k]` matrix whose element `(j, kk)` is `d[j·rs + kk·cs]`: a weight, or
    /// the transpose of one (`rs = 1`) without a transposed copy.
    pub fn pack_strided(d: &[f32], n: usize, k: usize, rs: usize, cs: usize) -> Self {
        assert!(n == 0 || k == 0 || (n - 1) * rs + (k - 1) * cs < d.len());
        let np = n.div_ceil(NR);
        let mut panels = vec![0.0f32; np * k * NR];
        if rs == 1 && cs != 1 {
            // The transposed layout (a `[k, n]` row-major matrix read as `[n, k]`): each
            // source row is contiguous over all panels, so a task takes a range of depths and
            // copies whole rows (a panel at a time would jump a row's length every step).
            #[derive(Clone, Copy)]
            struct Out(*mut f32);
            // SAFETY: tasks write disjoint depth ranges of every panel.
            unsafe impl Send for Out {}
            unsafe impl Sync for Out {}
            impl Out {
                // A method call captures the whole (Sync) wrapper, not the bare pointer.
                fn at(self, i: usize) -> *mut f32 {
                    // SAFETY: callers stay inside the buffer.
                    unsafe { self.0.add(i) }
                }
            }
            let out = Out(panels.as_mut_ptr());
            let per = k.div_ceil(4 * rayon::current_num_threads()).max(16);
            (0..k.div_ceil(per)).into_par_iter().for_each(|c| {
                for kk in c * per..((c + 1) * per).min(k) {
                    let row = &d[kk * cs..kk * cs + n];
                    for (p, part) in row.chunks(NR).enumerate() {
                        // SAFETY: panel p, depth kk: inside the buffer, written by this task
                        // alone.
                        unsafe {
                            let dst = out.at(p * k * NR + kk * NR);
                            std::ptr::copy_nonoverlapping(part.as_ptr(), dst, part.len());
                        }
                    }
                }
            });
            return PackedWeight { n, k, panels };
        }
        panels
            .par_chunks_mut((k * NR).max(1))
            .enumerate()
            .for_each(|(p, panel)| {
                let rows = NR.min(n - p * NR);
                for r in 0..rows {
                    for kk in 0..k {
                        panel[kk * NR + r] = d[(p * NR + r) * rs + kk * cs];
                    }
                }
            });
        PackedWeight { n, k, panels }
    }

    /// Output columns `n`.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Whether this CPU can run the packed kernel.
    pub fn supported() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// `out[rows, n] (+)= x[rows, k] · Wᵀ + bias`, then `act` on the result (only meaningful
    /// without `accumulate`). Callers check `supported()` and shapes.
    pub fn matmul(
        &self,
        x: &[f32],
        rows: usize,
        bias: Option<&[f32]>,
        out: &mut [f32],
        accumulate: bool,
        act: Option<Activation>,
    ) {
        self.matmul_strided(x, rows, self.k, 1, bias, out, accumulate, act)
    }

    /// [`PackedWeight::matmul`] with `x` any strided `[rows, k]` view: element `(i, kk)` is
    /// `x[i·rs + kk·cs]` (e.g. a transposed matrix, `rs = 1`).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_strided(
        &self,
        x: &[f32],
        rows: usize,
        rs: usize,
        cs: usize,
        bias: Option<&[f32]>,
        out: &mut [f32],
        accumulate: bool,
        act: Option<Activation>,
    ) {
        assert!(
            (rows == 0 || self.k == 0 || (rows - 1) * rs + (self.k - 1) * cs < x.len())
                && out.len() >= rows * self.n
        );
        assert!(bias.is_none_or(|b| b.len() == self.n));
        #[cfg(target_arch = "x86_64")]
        {
            let n = self.n;
            let np = n.div_ceil(NR);
            let threads = rayon::current_num_threads();
            if rows.div_ceil(MC) >= threads || np == 1 {
                out[..rows * n]
                    .par_chunks_mut(MC * n)
                    .enumerate()
                    .for_each(|(blk, c)| {
                        let r0 = blk * MC;
                        let m = c.len() / n;
                        // SAFETY: `supported()` was checked by the caller (avx512f); every
                        // pointer below stays inside `x`, `c`, the panels and `bias` by the
                        // loop bounds.
                        unsafe {
                            self.block(
                                x.as_ptr().add(r0 * rs),
                                (rs, cs),
                                m,
                                bias,
                                c.as_mut_ptr(),
                                0..np,
                                accumulate,
                                act,
                            )
                        }
                    });
            } else {
                // Too few rows to keep every thread busy (one short sentence, a small
                // batch): the threads take bands of output columns instead, each over all
                // rows.
                let per = np.div_ceil(threads * 2).max(1);
                let c = SendPtr(out.as_mut_ptr());
                (0..np.div_ceil(per)).into_par_iter().for_each(|t| {
                    let panels = t * per..((t + 1) * per).min(np);
                    let c = &c;
                    // SAFETY: as above; the tasks write disjoint column bands of `out`.
                    unsafe {
                        self.block(
                            x.as_ptr(),
                            (rs, cs),
                            rows,
                            bias,
                            c.0,
                            panels,
                            accumulate,
                            act,
                        )
                    }
                });
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block(
        &self,
        a: *const f32,
        (ars, acs): (usize, usize),
        m: usize,
        bias: Option<&[f32]>,
        c: *mut f32,
        panels: std::ops::Range<usize>,
        accumulate: bool,
        act: Option<Activation>,
    ) {
        let (n, k) = (self.n, self.k);
        let mut k0 = 0;
        while k0 < k {
            let kc = KC.min(k - k0);
            for p in panels.clone() {
                let cols = NR.min(n - p * NR);
                let panel = self.panels.as_ptr().add(p * k * NR + k0 * NR);
                let b = if k0 == 0 {
                    bias.map(|b| b.as_ptr().add(p * NR))
                } else {
                    None
                };
                let load_c = accumulate || k0 > 0;
                let mut i = 0;
                while i < m {
                    let mr = MR.min(m - i);
                    let ap = a.add(i * ars + k0 * acs);
                    let cp = c.add(i * n + p * NR);
                    let t = Tile {
                        a: ap,
                        lda: ars,
                        acs,
                        panel,
                        kc,
                        c: cp,
                        ldc: n,
                        cols,
                        bias: b,
                        load_c,
                    };
                    match mr {
                        12 => t.run::<12>(),
                        11 => t.run::<11>(),
                        10 => t.run::<10>(),
                        9 => t.run::<9>(),
                        8 => t.run::<8>(),
                        7 => t.run::<7>(),
                        6 => t.run::<6>(),
                        5 => t.run::<5>(),
                        4 => t.run::<4>(),
                        3 => t.run::<3>(),
                        2 => t.run::<2>(),
                        _ => t.run::<1>(),
                    }
                    if let (Some(f), true) = (act, k0 + kc == k) {
                        // The tile was just written: activate it while it is in L1.
                        for r in 0..mr {
                            let row =
                                std::slice::from_raw_parts_mut(c.add((i + r) * n + p * NR), cols);
                            act_slice(row, f);
                        }
                    }
                    i += mr;
                }
            }
            k0 += kc;
        }
    }
}

/// The output pointer shared by tasks that write disjoint parts of it.
#[cfg(target_arch = "x86_64")]
struct SendPtr(*mut f32);
// SAFETY: only used by `PackedWeight::matmul`, whose tasks write disjoint column bands.
#[cfg(target_arch = "x86_64")]
unsafe impl Sync for SendPtr {}

/// One register tile: `R` rows × 32 columns over `kc` steps of depth.
#[cfg(target_arch = "x86_64")]
struct Tile {
    a: *const f32,
    lda: usize,
    /// Column stride of `a` (1 but for a transposed view).
    acs: usize,
    panel: *const f32,
    kc: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    bias: Option<*const f32>,
    load_c: bool,
}

#[cfg(target_arch = "x86_64")]
impl Tile {
    #[target_feature(enable = "avx512f")]
    unsafe fn run<const R: usize>(&self) {
        use std::arch::x86_64::*;
        let m0: __mmask16 = if self.cols >= 16 {
            0xFFFF
        } else {
            ((1u32 << self.cols) - 1) as u16
        };
        let m1: __mmask16 = if self.cols >= 32 {
            0xFFFF
        } else if self.cols > 16 {
            ((1u32 << (self.cols - 16)) - 1) as u16
        } else {
            0
        };
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        if self.load_c {
            for (i, row) in acc.iter_mut().enumerate() {
                let cp = self.c.add(i * self.ldc);
                row[0] = _mm512_maskz_loadu_ps(m0, cp);
                row[1] = _mm512_maskz_loadu_ps(m1, cp.add(16));
            }
        }
        for kk in 0..self.kc {
            let b0 = _mm512_loadu_ps(self.panel.add(kk * NR));
            let b1 = _mm512_loadu_ps(self.panel.add(kk * NR + 16));
            let ak = self.a.add(kk * self.acs);
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ak.add(i * self.lda));
                row[0] = _mm512_fmadd_ps(av, b0, row[0]);
                row[1] = _mm512_fmadd_ps(av, b1, row[1]);
            }
        }
        let (bias0, bias1) = match self.bias {
            Some(b) => (
                _mm512_maskz_loadu_ps(m0, b),
                _mm512_maskz_loadu_ps(m1, b.add(16)),
            ),
            None => (_mm512_setzero_ps(), _mm512_setzero_ps()),
        };
        for (i, row) in acc.iter().enumerate() {
            let cp = self.c.add(i * self.ldc);
            _mm512_mask_storeu_ps(cp, m0, _mm512_add_ps(row[0], bias0));
            _mm512_mask_storeu_ps(cp.add(16), m1, _mm512_add_ps(row[1], bias1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::matmul::naive_matmul;
    use rand::{Rng, SeedableRng};

    /// Packed kernel vs f64 naive product, relative to the sum length.
    const PACKED_RTOL: f32 = 1e-5;

    #[test]
    fn packed_matmul_matches_naive_on_ragged_shapes() {
        if !PackedWeight::supported() {
            eprintln!("no AVX-512 on this CPU: the packed kernel is not used here");
            return;
        }
        // One thread splits rows; several threads with few rows split the output columns.
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut rng = rand::rngs::StdRng::seed_from_u64(11);
                for &(m, k, n) in &[
                    (1usize, 1usize, 1usize),
                    (13, 300, 33),
                    (97, 257, 64),
                    (200, 96, 250),
                    (24, 1536, 384),
                    (5, 384, 1536),
                ] {
                    let x: Vec<f32> = (0..m * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
                    let w: Vec<f32> = (0..n * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
                    let b: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
                    let wt = Tensor::new(vec![n, k], w).unwrap();
                    let want = naive_matmul(&x, wt.transpose2d().unwrap().data(), m, k, n);
                    let p = PackedWeight::pack(&wt);
                    let mut out = vec![f32::NAN; m * n];
                    p.matmul(&x, m, Some(&b), &mut out, false, None);
                    let mut gelu = vec![0.0; m * n];
                    p.matmul(&x, m, Some(&b), &mut gelu, false, Some(Activation::GeluErf));
                    let resid: Vec<f32> = (0..m * n).map(|_| rng.gen_range(-1.0..1.0)).collect();
                    let mut acc = resid.clone();
                    p.matmul(&x, m, None, &mut acc, true, None);
                    for i in 0..m * n {
                        let tol = PACKED_RTOL * k as f32;
                        assert!(
                            (out[i] - (want[i] + b[i % n])).abs() <= tol,
                            "m{m} k{k} n{n} at {i}"
                        );
                        assert!(
                            (acc[i] - (want[i] + resid[i])).abs() <= tol,
                            "accumulate m{m} k{k} n{n} at {i}"
                        );
                    }
                }
            });
        }
    }

    /// Transposed operands read in place: `matmul_fast` on every stride combination (and the
    /// `gemm` fallback for few rows) equals the naive product.
    #[test]
    fn strided_operands_match_naive() {
        use crate::engine::matmul::{matmul_fast, MatMut, MatRef};
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        for &(m, k, n) in &[(3usize, 7usize, 5usize), (37, 300, 70), (130, 64, 33)] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let want = naive_matmul(&a, &b, m, k, n);
            let at = Tensor::new(vec![m, k], a.clone())
                .unwrap()
                .transpose2d()
                .unwrap();
            let bt = Tensor::new(vec![k, n], b.clone())
                .unwrap()
                .transpose2d()
                .unwrap();
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let av = if ta {
                    MatRef::new(at.data(), k, m).unwrap().t()
                } else {
                    MatRef::new(&a, m, k).unwrap()
                };
                let bv = if tb {
                    MatRef::new(bt.data(), n, k).unwrap().t()
                } else {
                    MatRef::new(&b, k, n).unwrap()
                };
                let mut out = vec![1.0f32; m * n];
                matmul_fast(MatMut::new(&mut out, m, n).unwrap(), av, bv, true).unwrap();
                for i in 0..m * n {
                    let tol = PACKED_RTOL * k as f32;
                    assert!(
                        (out[i] - want[i] - 1.0).abs() <= tol,
                        "m{m} k{k} n{n} {ta} {tb} at {i}"
                    );
                }
            }
        }
    }
}

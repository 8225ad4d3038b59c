//! Integer matrix multiply for int8 linear layers. Weights are int8, symmetric, one scale per
//! output channel, packed once per kernel; activations are quantized per row at run time to u8
//! with a zero point (asymmetric: the range of each token's row, which after GELU or a residual
//! is far from symmetric); products accumulate in i32; an epilogue dequantizes and fuses the
//! bias, the activation or the residual sum, as the f32 path does:
//!
//! `y[r, c] = sx[r] · sw[c] · (Σₖ q[r, k] · w[c, k] − zx[r] · Σₖ w[c, k]) + b[c]`
//!
//! where the column sums `Σₖ w[c, k]` are precomputed (the zero point's correction).
//!
//! Kernels, chosen at run time, all giving the same integers: AVX-512 VNNI (`vpdpbusd`: 64
//! u8 × s8 multiply-adds per instruction, 4x an f32 FMA), AVX-512BW and AVX2 (`vpmaddwd` on
//! operands widened to 16 bits: exact, where `vpmaddubsw` would saturate u8 × s8 pair sums past
//! i16), and a scalar reference.

use super::activation::act_slice;
use super::linear::LinearOut;
use super::tensor::Tensor;
use rayon::prelude::*;
use std::sync::OnceLock;

/// The integer kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512 VNNI: u8 × s8 quads into i32 (`vpdpbusd`).
    Vnni,
    /// AVX-512BW: 16-bit pairs into i32 (`vpmaddwd`, 512-bit).
    Avx512Bw,
    /// AVX2: 16-bit pairs into i32 (`vpmaddwd`, 256-bit).
    Avx2,
    /// Plain Rust loops (any CPU; the reference).
    Scalar,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn best() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512bw") && has!("avx512vnni") {
                return Kernel::Vnni;
            }
            if has!("avx512f") && has!("avx512bw") {
                return Kernel::Avx512Bw;
            }
            if has!("avx2") {
                return Kernel::Avx2;
            }
        }
        Kernel::Scalar
    }

    /// Whether this CPU can run the kernel.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            match self {
                Kernel::Vnni => has!("avx512f") && has!("avx512bw") && has!("avx512vnni"),
                Kernel::Avx512Bw => has!("avx512f") && has!("avx512bw"),
                Kernel::Avx2 => has!("avx2"),
                Kernel::Scalar => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Kernel::Scalar
        }
    }

    /// The kernel to use: `KILN_INT8_KERNEL` (vnni, avx512bw, avx2, scalar) forces one the CPU
    /// supports (to test or compare paths); otherwise the best.
    pub fn chosen() -> Kernel {
        static CHOSEN: OnceLock<Kernel> = OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let forced = std::env::var("KILN_INT8_KERNEL")
                .ok()
                .and_then(|v| match v.as_str() {
                    "vnni" => Some(Kernel::Vnni),
                    "avx512bw" => Some(Kernel::Avx512Bw),
                    "avx2" => Some(Kernel::Avx2),
                    "scalar" => Some(Kernel::Scalar),
                    _ => None,
                });
            forced
                .filter(|k| k.supported())
                .unwrap_or_else(Kernel::best)
        })
    }

    /// Columns per packed panel and row tile height.
    fn tile(self) -> (usize, usize) {
        match self {
            Kernel::Vnni | Kernel::Avx512Bw => (32, 12),
            Kernel::Avx2 => (16, 6),
            Kernel::Scalar => (16, 4),
        }
    }

    /// Values of k that one i32 lane sums per instruction.
    fn group(self) -> usize {
        match self {
            Kernel::Vnni => 4,
            _ => 2,
        }
    }
}

/// Activations quantized per row: `x ≈ scale · (q − zero)`.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantRows {
    /// `[rows, kp]` u8 values, each row padded with its zero point to `kp` (a multiple of 4).
    pub q: Vec<u8>,
    /// Scale of each row.
    pub scale: Vec<f32>,
    /// Zero point of each row (0..=255).
    pub zero: Vec<i32>,
    /// Rows.
    pub rows: usize,
    /// Values per row before padding.
    pub k: usize,
    /// Padded row length.
    pub kp: usize,
}

/// Quantizes `x: [rows, k]` row by row to u8 over each row's range (zero included, so 0.0 is
/// exact), rounding to nearest.
pub fn quantize_rows(x: &[f32], rows: usize, k: usize) -> QuantRows {
    let kp = k.div_ceil(4) * 4;
    let mut q = vec![0u8; rows * kp];
    let mut scale = vec![0.0f32; rows];
    let mut zero = vec![0i32; rows];
    q.par_chunks_mut(kp)
        .zip(scale.par_iter_mut().zip(zero.par_iter_mut()))
        .enumerate()
        .for_each(|(r, (qr, (s, z)))| {
            let row = &x[r * k..(r + 1) * k];
            let (lo, hi) = row
                .iter()
                .fold((0.0f32, 0.0f32), |(l, h), &v| (l.min(v), h.max(v)));
            let sc = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
            let zp = (-lo / sc).round().clamp(0.0, 255.0);
            let inv = 1.0 / sc;
            for (o, &v) in qr.iter_mut().zip(row) {
                *o = (v * inv + zp).round().clamp(0.0, 255.0) as u8;
            }
            qr[k..].fill(zp as u8);
            *s = sc;
            *z = zp as i32;
        });
    QuantRows {
        q,
        scale,
        zero,
        rows,
        k,
        kp,
    }
}

/// A linear layer's weight `[n, k]` in int8 with a scale per output row (channel).
pub struct Int8Weight {
    n: usize,
    k: usize,
    /// `[n, k]` int8 values, PyTorch layout (what is saved).
    pub data: Vec<i8>,
    /// `[n]` scales: `w[c, k] ≈ scale[c] · data[c, k]`.
    pub scale: Vec<f32>,
    /// `Σₖ data[c, k]`, the zero-point correction of each column of the product.
    colsum: Vec<i32>,
    packed: OnceLock<(Kernel, Vec<u8>)>,
}

impl std::fmt::Debug for Int8Weight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Int8Weight([{}, {}])", self.n, self.k)
    }
}

impl Clone for Int8Weight {
    fn clone(&self) -> Self {
        Int8Weight::from_parts(self.data.clone(), self.scale.clone(), self.n, self.k)
    }
}

impl Int8Weight {
    /// Symmetric per-channel quantization of `w: [n, k]`: each row's largest magnitude maps to
    /// 127 (an all-zero row gets scale 1).
    pub fn quantize(w: &Tensor) -> Self {
        let (n, k) = (w.shape()[0], w.cols());
        let d = w.data();
        let mut data = vec![0i8; n * k];
        let mut scale = vec![0.0f32; n];
        data.par_chunks_mut(k.max(1))
            .zip(scale.par_iter_mut())
            .enumerate()
            .for_each(|(c, (out, s))| {
                let row = &d[c * k..(c + 1) * k];
                let amax = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let sc = if amax > 0.0 { amax / 127.0 } else { 1.0 };
                for (o, &v) in out.iter_mut().zip(row) {
                    *o = (v / sc).round().clamp(-127.0, 127.0) as i8;
                }
                *s = sc;
            });
        Int8Weight::from_parts(data, scale, n, k)
    }

    /// A weight from its stored int8 values `[n, k]` and scales `[n]`.
    pub fn from_parts(data: Vec<i8>, scale: Vec<f32>, n: usize, k: usize) -> Self {
        let colsum = data
            .chunks(k.max(1))
            .map(|r| r.iter().map(|&v| v as i32).sum())
            .collect();
        Int8Weight {
            n,
            k,
            data,
            scale,
            colsum,
            packed: OnceLock::new(),
        }
    }

    /// Output width.
    pub fn out_features(&self) -> usize {
        self.n
    }

    /// Input width.
    pub fn in_features(&self) -> usize {
        self.k
    }

    /// The f32 weight the int8 values stand for.
    pub fn dequantize(&self) -> Tensor {
        let data = self
            .data
            .chunks(self.k.max(1))
            .zip(&self.scale)
            .flat_map(|(r, &s)| r.iter().map(move |&v| v as f32 * s))
            .collect();
        Tensor::new(vec![self.n, self.k], data).expect("n·k values")
    }

    /// The weight packed for `kernel`: panels of NR columns, k in groups of the kernel's lane
    /// width (4 bytes for VNNI, 2 × i16 for the `vpmaddwd` kernels), zero-padded.
    fn pack(&self, kernel: Kernel) -> Vec<u8> {
        let (nr, _) = kernel.tile();
        let g = kernel.group();
        let kp = self.k.div_ceil(4) * 4;
        let np = self.n.div_ceil(nr);
        let groups = kp / g;
        let elem = if g == 4 { 1 } else { 2 };
        let panel_bytes = groups * nr * g * elem;
        let mut out = vec![0u8; np * panel_bytes];
        out.par_chunks_mut(panel_bytes)
            .enumerate()
            .for_each(|(p, panel)| {
                for j in 0..nr.min(self.n - p * nr) {
                    let c = p * nr + j;
                    let row = &self.data[c * self.k..(c + 1) * self.k];
                    for (kk, &v) in row.iter().enumerate() {
                        let (gi, within) = (kk / g, kk % g);
                        let at = ((gi * nr + j) * g + within) * elem;
                        if elem == 1 {
                            panel[at] = v as u8;
                        } else {
                            panel[at..at + 2].copy_from_slice(&(v as i16).to_le_bytes());
                        }
                    }
                }
            });
        out
    }

    /// The i32 products `Σₖ q[r, k] · w[c, k]` `[rows, n]` by `kernel` (tests compare kernels
    /// on these).
    pub fn gemm_i32(&self, x: &QuantRows, kernel: Kernel) -> Vec<i32> {
        let mut acc = vec![0i32; x.rows * self.n];
        let n = self.n;
        let ptr = SendPtr(acc.as_mut_ptr());
        self.run(x, kernel, |r0, c0, tile: &[i32], nr, rows, cols| {
            for i in 0..rows {
                // SAFETY: tiles cover disjoint blocks of `acc` (rows · n values).
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(ptr.get().add((r0 + i) * n + c0), cols)
                };
                dst.copy_from_slice(&tile[i * nr..i * nr + cols]);
            }
        });
        acc
    }

    /// `out[rows, n] (=|+=) act(x · Wᵀ + b)` for `x: [rows, k]`, quantizing `x` per row.
    pub fn forward_into(
        &self,
        x: &[f32],
        rows: usize,
        bias: Option<&[f32]>,
        out: &mut [f32],
        mode: LinearOut,
    ) {
        let q = quantize_rows(x, rows, self.k);
        let n = self.n;
        let out_ptr = SendPtr(out.as_mut_ptr());
        self.run(&q, Kernel::chosen(), |r0, c0, tile, nr, rows_t, cols| {
            for i in 0..rows_t {
                let r = r0 + i;
                let (sx, zx) = (q.scale[r], q.zero[r]);
                // SAFETY: tiles cover disjoint (row, column) blocks of `out`, which holds
                // rows · n values; each task writes only its own block.
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(r * n + c0), cols) };
                let acc = &tile[i * nr..i * nr + cols];
                for (j, (d, &a)) in dst.iter_mut().zip(acc).enumerate() {
                    let c = c0 + j;
                    let v =
                        sx * self.scale[c] * (a as i64 - zx as i64 * self.colsum[c] as i64) as f32
                            + bias.map_or(0.0, |b| b[c]);
                    match mode {
                        LinearOut::Accumulate => *d += v,
                        _ => *d = v,
                    }
                }
                if let LinearOut::WriteAct(act) = mode {
                    act_slice(dst, act);
                }
            }
        });
    }

    /// Computes every (row tile, column panel) product and hands each i32 tile to `emit(first
    /// row, first column, tile, tile width, rows, columns)`, in parallel.
    fn run<F>(&self, x: &QuantRows, kernel: Kernel, emit: F)
    where
        F: Fn(usize, usize, &[i32], usize, usize, usize) + Sync,
    {
        assert_eq!(x.k, self.k, "activation width");
        let kernel = if kernel.supported() {
            kernel
        } else {
            Kernel::Scalar
        };
        let (nr, mr) = kernel.tile();
        let np = self.n.div_ceil(nr);
        let packed = match kernel {
            Kernel::Scalar => None,
            _ => {
                let (k, p) = self.packed.get_or_init(|| (kernel, self.pack(kernel)));
                // A weight packed for another kernel (forced in a test): pack afresh.
                Some(if *k == kernel {
                    std::borrow::Cow::Borrowed(p.as_slice())
                } else {
                    std::borrow::Cow::Owned(self.pack(kernel))
                })
            }
        };
        // 16-bit kernels read activations widened once.
        let wide: Option<Vec<i16>> = matches!(kernel, Kernel::Avx512Bw | Kernel::Avx2)
            .then(|| x.q.iter().map(|&v| v as i16).collect());
        // Row tiles × column panels, grouped so every thread has work even for one row
        // (token-by-token decoding).
        let row_tiles = x.rows.div_ceil(mr);
        let threads = rayon::current_num_threads().max(1);
        let panels_per_task = if row_tiles >= threads {
            np
        } else {
            np.div_ceil(threads.div_ceil(row_tiles)).max(1)
        };
        let col_tasks = np.div_ceil(panels_per_task);
        (0..row_tiles * col_tasks).into_par_iter().for_each(|t| {
            let (rt, ct) = (t / col_tasks, t % col_tasks);
            let r0 = rt * mr;
            let rows = mr.min(x.rows - r0);
            let mut tile = vec![0i32; mr * nr];
            for p in ct * panels_per_task..((ct + 1) * panels_per_task).min(np) {
                let c0 = p * nr;
                let cols = nr.min(self.n - c0);
                tile.fill(0);
                match (kernel, &packed, &wide) {
                    #[cfg(target_arch = "x86_64")]
                    (Kernel::Vnni, Some(pk), _) => {
                        let panel = &pk[p * (x.kp * nr)..(p + 1) * (x.kp * nr)];
                        // SAFETY: the CPU has the features (checked above); the panel holds
                        // kp·NR bytes and each row of `q` kp bytes past `r0`.
                        unsafe {
                            vnni_tile(&x.q[r0 * x.kp..], x.kp, rows, panel, &mut tile);
                        }
                    }
                    #[cfg(target_arch = "x86_64")]
                    (Kernel::Avx512Bw, Some(pk), Some(w16)) => {
                        let bytes = x.kp * nr * 2;
                        let panel = &pk[p * bytes..(p + 1) * bytes];
                        // SAFETY: as above, with 16-bit elements.
                        unsafe {
                            avx512bw_tile(&w16[r0 * x.kp..], x.kp, rows, panel, &mut tile);
                        }
                    }
                    #[cfg(target_arch = "x86_64")]
                    (Kernel::Avx2, Some(pk), Some(w16)) => {
                        let bytes = x.kp * nr * 2;
                        let panel = &pk[p * bytes..(p + 1) * bytes];
                        // SAFETY: as above, with 16-bit elements.
                        unsafe {
                            avx2_tile(&w16[r0 * x.kp..], x.kp, rows, panel, &mut tile);
                        }
                    }
                    _ => self.scalar_tile(x, r0, rows, c0, cols, nr, &mut tile),
                }
                emit(r0, c0, &tile, nr, rows, cols);
            }
        });
    }

    /// The reference: plain integer sums.
    #[allow(clippy::too_many_arguments)]
    fn scalar_tile(
        &self,
        x: &QuantRows,
        r0: usize,
        rows: usize,
        c0: usize,
        cols: usize,
        nr: usize,
        tile: &mut [i32],
    ) {
        for i in 0..rows {
            let a = &x.q[(r0 + i) * x.kp..(r0 + i) * x.kp + self.k];
            for j in 0..cols {
                let w = &self.data[(c0 + j) * self.k..(c0 + j + 1) * self.k];
                tile[i * nr + j] = a.iter().zip(w).map(|(&a, &w)| a as i32 * w as i32).sum();
            }
        }
    }
}

/// A raw pointer that parallel tasks share to write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: only used to write disjoint blocks (see `forward_into`, `gemm_i32`).
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

/// One VNNI tile: up to 12 rows × 32 columns. `a` holds rows of `kp` u8 values, `panel` the
/// packed weights (`kp/4` groups of 32 columns × 4 bytes); `tile` receives `rows × 32` sums.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn vnni_tile(a: &[u8], kp: usize, rows: usize, panel: &[u8], tile: &mut [i32]) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_si512(); 2]; 12];
    let groups = kp / 4;
    for g in 0..groups {
        let w = panel.as_ptr().add(g * 128);
        let w0 = _mm512_loadu_si512(w as *const _);
        let w1 = _mm512_loadu_si512(w.add(64) as *const _);
        for (r, acc_r) in acc.iter_mut().enumerate().take(rows) {
            let quad = (a.as_ptr().add(r * kp + g * 4) as *const i32).read_unaligned();
            let x = _mm512_set1_epi32(quad);
            acc_r[0] = _mm512_dpbusd_epi32(acc_r[0], x, w0);
            acc_r[1] = _mm512_dpbusd_epi32(acc_r[1], x, w1);
        }
    }
    for (r, acc_r) in acc.iter().enumerate().take(rows) {
        _mm512_storeu_si512(tile.as_mut_ptr().add(r * 32) as *mut _, acc_r[0]);
        _mm512_storeu_si512(tile.as_mut_ptr().add(r * 32 + 16) as *mut _, acc_r[1]);
    }
}

/// One AVX-512BW tile: up to 12 rows × 32 columns on 16-bit operands (`kp/2` pairs).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn avx512bw_tile(a: &[i16], kp: usize, rows: usize, panel: &[u8], tile: &mut [i32]) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_si512(); 2]; 12];
    let pairs = kp / 2;
    for g in 0..pairs {
        let w = panel.as_ptr().add(g * 128);
        let w0 = _mm512_loadu_si512(w as *const _);
        let w1 = _mm512_loadu_si512(w.add(64) as *const _);
        for (r, acc_r) in acc.iter_mut().enumerate().take(rows) {
            let pair = (a.as_ptr().add(r * kp + g * 2) as *const i32).read_unaligned();
            let x = _mm512_set1_epi32(pair);
            acc_r[0] = _mm512_add_epi32(acc_r[0], _mm512_madd_epi16(x, w0));
            acc_r[1] = _mm512_add_epi32(acc_r[1], _mm512_madd_epi16(x, w1));
        }
    }
    for (r, acc_r) in acc.iter().enumerate().take(rows) {
        _mm512_storeu_si512(tile.as_mut_ptr().add(r * 32) as *mut _, acc_r[0]);
        _mm512_storeu_si512(tile.as_mut_ptr().add(r * 32 + 16) as *mut _, acc_r[1]);
    }
}

/// One AVX2 tile: up to 6 rows × 16 columns on 16-bit operands.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2_tile(a: &[i16], kp: usize, rows: usize, panel: &[u8], tile: &mut [i32]) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_si256(); 2]; 6];
    let pairs = kp / 2;
    for g in 0..pairs {
        let w = panel.as_ptr().add(g * 64);
        let w0 = _mm256_loadu_si256(w as *const __m256i);
        let w1 = _mm256_loadu_si256(w.add(32) as *const __m256i);
        for (r, acc_r) in acc.iter_mut().enumerate().take(rows) {
            let pair = (a.as_ptr().add(r * kp + g * 2) as *const i32).read_unaligned();
            let x = _mm256_set1_epi32(pair);
            acc_r[0] = _mm256_add_epi32(acc_r[0], _mm256_madd_epi16(x, w0));
            acc_r[1] = _mm256_add_epi32(acc_r[1], _mm256_madd_epi16(x, w1));
        }
    }
    for (r, acc_r) in acc.iter().enumerate().take(rows) {
        _mm256_storeu_si256(tile.as_mut_ptr().add(r * 16) as *mut __m256i, acc_r[0]);
        _mm256_storeu_si256(tile.as_mut_ptr().add(r * 16 + 8) as *mut __m256i, acc_r[1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Activation;
    use rand::{Rng, SeedableRng};

    /// The exact integer products, the definition every kernel must meet.
    fn naive(q: &QuantRows, w: &Int8Weight) -> Vec<i32> {
        let (n, k) = (w.out_features(), w.in_features());
        let mut out = vec![0i32; q.rows * n];
        for r in 0..q.rows {
            for c in 0..n {
                out[r * n + c] = (0..k)
                    .map(|i| q.q[r * q.kp + i] as i32 * w.data[c * k + i] as i32)
                    .sum();
            }
        }
        out
    }

    fn random(rng: &mut rand::rngs::StdRng, rows: usize, k: usize, n: usize) -> (Vec<f32>, Tensor) {
        let x = (0..rows * k).map(|_| rng.gen_range(-3.0..3.0)).collect();
        let w = (0..n * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
        (x, Tensor::new(vec![n, k], w).unwrap())
    }

    #[test]
    fn every_kernel_this_cpu_runs_gives_the_exact_integer_products() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        // Odd shapes: k not a multiple of 4, n not of a panel, rows not of a tile, one row.
        for &(rows, k, n) in &[
            (1, 5, 3),
            (13, 37, 33),
            (25, 384, 96),
            (7, 1, 65),
            (40, 130, 17),
        ] {
            let (x, w) = random(&mut rng, rows, k, n);
            let q = quantize_rows(&x, rows, k);
            // Extremes: 255 against ±127 in every lane, the case vpmaddubsw would saturate.
            let mut q = q;
            q.q[..k].fill(255);
            let mut wq = Int8Weight::quantize(&w);
            wq.data[..k].fill(-127);
            let wq = Int8Weight::from_parts(wq.data.clone(), wq.scale.clone(), n, k);
            let want = naive(&q, &wq);
            for kernel in [Kernel::Scalar, Kernel::Avx2, Kernel::Avx512Bw, Kernel::Vnni] {
                if !kernel.supported() {
                    eprintln!("{kernel:?}: not on this CPU");
                    continue;
                }
                assert_eq!(wq.gemm_i32(&q, kernel), want, "{kernel:?} {rows}x{k}x{n}");
            }
        }
    }

    /// Relative error budget of int8 × u8 products against f32: per-channel weights and
    /// per-row activations on uniform data.
    const INT8_RTOL: f32 = 0.02;

    #[test]
    fn the_dequantized_product_is_close_to_f32_in_every_mode() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let (rows, k, n) = (30, 96, 70);
        let (x, w) = random(&mut rng, rows, k, n);
        let b: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let wq = Int8Weight::quantize(&w);
        let reference =
            crate::engine::Linear::new(w, Some(Tensor::new(vec![n], b.clone()).unwrap()));
        let want = reference.forward(&x, rows).unwrap();
        let norm = want.iter().map(|v| v * v).sum::<f32>().sqrt();
        let err = |got: &[f32], want: &[f32]| {
            got.iter()
                .zip(want)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                .sqrt()
                / norm
        };
        let mut y = vec![0.0; rows * n];
        wq.forward_into(&x, rows, Some(&b), &mut y, LinearOut::Write);
        assert!(err(&y, &want) < INT8_RTOL, "write: {}", err(&y, &want));
        let mut acc = vec![1.0; rows * n];
        wq.forward_into(&x, rows, Some(&b), &mut acc, LinearOut::Accumulate);
        let shifted: Vec<f32> = want.iter().map(|v| v + 1.0).collect();
        assert!(err(&acc, &shifted) < INT8_RTOL);
        let mut g = vec![0.0; rows * n];
        wq.forward_into(
            &x,
            rows,
            Some(&b),
            &mut g,
            LinearOut::WriteAct(Activation::GeluErf),
        );
        let want_g: Vec<f32> = want.iter().map(|&v| Activation::GeluErf.apply(v)).collect();
        assert!(err(&g, &want_g) < INT8_RTOL);
        // Dequantizing gives back the weight within half a step per channel.
        let d = wq.dequantize();
        let w = reference.weight.data();
        for c in 0..n {
            for i in 0..k {
                assert!((d.data()[c * k + i] - w[c * k + i]).abs() <= 0.5 * wq.scale[c] + 1e-7);
            }
        }
    }

    #[test]
    fn rows_quantize_with_zero_exact_and_within_half_a_step() {
        let x = [0.0, -1.0, 2.0, 0.5, 7.0, -3.0];
        let q = quantize_rows(&x, 2, 3);
        for r in 0..2 {
            for i in 0..3 {
                let back = q.scale[r] * (q.q[r * q.kp + i] as i32 - q.zero[r]) as f32;
                assert!((back - x[r * 3 + i]).abs() <= 0.5 * q.scale[r] + 1e-6);
            }
            // Padding is the zero point: it adds nothing after the correction.
            assert!(q.q[r * q.kp + 3..(r + 1) * q.kp]
                .iter()
                .all(|&v| v as i32 == q.zero[r]));
        }
        assert_eq!(q.scale[0] * (q.q[0] as i32 - q.zero[0]) as f32, 0.0);
    }
}

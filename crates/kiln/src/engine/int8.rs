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
use super::simd::dispatch;
use super::tensor::Tensor;
use rayon::prelude::*;
use std::sync::OnceLock;

/// Calls `$f::<R>(args)` for the runtime row count `$rows` (1..=12): the row loop of a tile
/// must have a constant trip count, or its accumulators leave the registers for the stack.
macro_rules! with_rows {
    ($rows:expr, $f:ident($($arg:expr),*)) => {
        match $rows {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            6 => $f::<6>($($arg),*),
            7 => $f::<7>($($arg),*),
            8 => $f::<8>($($arg),*),
            9 => $f::<9>($($arg),*),
            10 => $f::<10>($($arg),*),
            11 => $f::<11>($($arg),*),
            _ => $f::<12>($($arg),*),
        }
    };
}

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

/// Below this many multiply-adds a product runs on the calling thread alone.
const SERIAL_MACS: usize = 1 << 22;

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
/// exact), rounding to nearest (ties to even). With `smooth`, each column is first multiplied
/// by its factor (SmoothQuant's division of the activations, the weights carrying the inverse).
pub fn quantize_rows(x: &[f32], rows: usize, k: usize, smooth: Option<&[f32]>) -> QuantRows {
    let kp = k.div_ceil(4) * 4;
    let mut q = vec![0u8; rows * kp];
    let mut params = vec![(0.0f32, 0i32); rows];
    let one = |buf: &mut Vec<f32>, (r, (qr, pr)): (usize, (&mut [u8], &mut (f32, i32)))| {
        let row = &x[r * k..(r + 1) * k];
        match smooth {
            Some(s) => {
                buf.clear();
                buf.extend(row.iter().zip(s).map(|(v, f)| v * f));
                quantize_row(buf, qr, pr)
            }
            None => quantize_row(row, qr, pr),
        }
    };
    if rows * k < SERIAL_MACS / 64 {
        let mut buf = Vec::new();
        q.chunks_mut(kp)
            .zip(params.iter_mut())
            .enumerate()
            .for_each(|item| one(&mut buf, item));
    } else {
        q.par_chunks_mut(kp)
            .zip(params.par_iter_mut())
            .enumerate()
            .for_each_init(Vec::new, one);
    }
    let (scale, zero) = params.into_iter().unzip();
    QuantRows {
        q,
        scale,
        zero,
        rows,
        k,
        kp,
    }
}

/// The scale and zero point of a row whose values span `[lo, hi]` (zero included).
fn row_params(lo: f32, hi: f32) -> (f32, f32) {
    let sc = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
    (sc, (-lo / sc).round_ties_even().clamp(0.0, 255.0))
}

/// One row: `out` (padded past the row with the zero point) and (scale, zero point). Values
/// round to nearest, ties to even, on every path.
fn quantize_row(row: &[f32], out: &mut [u8], params: &mut (f32, i32)) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F.
        unsafe { quantize_row_avx512(row, out, params) };
        return;
    }
    quantize_row_lanes(row, out, params)
}

dispatch! {
    fn quantize_row_lanes(row: &[f32], out: &mut [u8], params: &mut (f32, i32)) {
        let (mut lo, mut hi) = ([0.0f32; 8], [0.0f32; 8]);
        let chunks = row.chunks_exact(8);
        let rest = chunks.remainder();
        for c in chunks {
            for i in 0..8 {
                lo[i] = if c[i] < lo[i] { c[i] } else { lo[i] };
                hi[i] = if c[i] > hi[i] { c[i] } else { hi[i] };
            }
        }
        let lo = lo.iter().chain(rest).fold(0.0f32, |a, &b| a.min(b));
        let hi = hi.iter().chain(rest).fold(0.0f32, |a, &b| a.max(b));
        let (sc, zp) = row_params(lo, hi);
        let inv = 1.0 / sc;
        for (o, &v) in out.iter_mut().zip(row) {
            *o = (v * inv + zp).round_ties_even().clamp(0.0, 255.0) as u8;
        }
        out[row.len()..].fill(zp as u8);
        *params = (sc, zp as i32);
    }
}

/// [`quantize_row`] in AVX-512: a range pass, then 16 values per conversion and unsigned
/// saturating narrowing to bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn quantize_row_avx512(row: &[f32], out: &mut [u8], params: &mut (f32, i32)) {
    use std::arch::x86_64::*;
    let n = row.len();
    let full = n / 16 * 16;
    let (mut lo, mut hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    for i in (0..full).step_by(16) {
        let v = _mm512_loadu_ps(row.as_ptr().add(i));
        lo = _mm512_min_ps(lo, v);
        hi = _mm512_max_ps(hi, v);
    }
    let tail = &row[full..];
    let lo = tail.iter().fold(_mm512_reduce_min_ps(lo), |a, &b| a.min(b));
    let hi = tail.iter().fold(_mm512_reduce_max_ps(hi), |a, &b| a.max(b));
    let (sc, zp) = row_params(lo, hi);
    let (inv, z) = (_mm512_set1_ps(1.0 / sc), _mm512_set1_ps(zp));
    for i in (0..full).step_by(16) {
        let v = _mm512_fmadd_ps(_mm512_loadu_ps(row.as_ptr().add(i)), inv, z);
        // Round to nearest even (the default mode), clamp below at 0, narrow with unsigned
        // saturation at 255.
        let q = _mm512_max_epi32(_mm512_cvtps_epi32(v), _mm512_setzero_si512());
        _mm_storeu_si128(
            out.as_mut_ptr().add(i) as *mut __m128i,
            _mm512_cvtusepi32_epi8(q),
        );
    }
    for (o, &v) in out[full..].iter_mut().zip(tail) {
        *o = (v * (1.0 / sc) + zp).round_ties_even().clamp(0.0, 255.0) as u8;
    }
    out[n..].fill(zp as u8);
    *params = (sc, zp as i32);
}

/// A tile column range's epilogue factors: per-channel scales, zero-point corrections and bias.
type Columns<'a> = (&'a [f32], &'a [f32], &'a [f32]);

dispatch! {
    /// The epilogue of one tile row: `dst (=|+=) acc · sx · sw[c] − sxz · csw[c] + bias[c]`,
    /// with `(sw, csw, bias)` the columns' factors, `(sx, sxz)` the row's scale and scale ×
    /// zero point, and `csw[c] = sw[c] · Σₖ w[c, k]`.
    fn dequantize_row(acc: &[i32], cols: Columns, row: (f32, f32), dst: &mut [f32], accumulate: bool) {
        let ((sw, csw, bias), (sx, sxz)) = (cols, row);
        let terms = acc.iter().zip(sw.iter().zip(csw)).zip(bias);
        if accumulate {
            for (d, ((&a, (&s, &c)), &b)) in dst.iter_mut().zip(terms) {
                *d += a as f32 * (sx * s) - sxz * c + b;
            }
        } else {
            for (d, ((&a, (&s, &c)), &b)) in dst.iter_mut().zip(terms) {
                *d = a as f32 * (sx * s) - sxz * c + b;
            }
        }
    }
}

/// A linear layer's weight `[n, k]` in int8 with a scale per output row (channel).
pub struct Int8Weight {
    n: usize,
    k: usize,
    /// `[n, k]` int8 values, PyTorch layout (what is saved).
    pub data: Vec<i8>,
    /// `[n]` scales: `w[c, k] ≈ scale[c] · data[c, k] / smooth[k]`.
    pub scale: Vec<f32>,
    /// SmoothQuant factors `[k]` the activations are multiplied by before quantization (the
    /// int8 weight holds `w[c, k] / smooth[k]`), when calibration chose them.
    pub smooth: Option<Vec<f32>>,
    /// `scale[c] · Σₖ data[c, k]`: the zero-point correction of each column, in the
    /// epilogue's units.
    csw: Vec<f32>,
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
            .with_smooth(self.smooth.clone())
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
        let csw = data
            .chunks(k.max(1))
            .zip(&scale)
            .map(|(r, &s)| r.iter().map(|&v| v as i32).sum::<i32>() as f32 * s)
            .collect();
        Int8Weight {
            n,
            k,
            data,
            scale,
            smooth: None,
            csw,
            packed: OnceLock::new(),
        }
    }

    /// Quantizes `w · diag(1 / smooth)` (SmoothQuant: the activations are multiplied by
    /// `smooth` before quantization, so the product is unchanged).
    pub fn quantize_smoothed(w: &Tensor, smooth: &[f32]) -> Self {
        let k = w.cols();
        let scaled: Vec<f32> = w
            .data()
            .chunks(k.max(1))
            .flat_map(|row| row.iter().zip(smooth).map(|(v, s)| v / s))
            .collect();
        let t = Tensor::new(w.shape().to_vec(), scaled).expect("same shape");
        Int8Weight::quantize(&t).with_smooth(Some(smooth.to_vec()))
    }

    /// The weight with SmoothQuant factors (as stored: `data` already holds `w / smooth`).
    pub fn with_smooth(mut self, smooth: Option<Vec<f32>>) -> Self {
        self.smooth = smooth;
        self
    }

    /// Output width.
    pub fn out_features(&self) -> usize {
        self.n
    }

    /// Input width.
    pub fn in_features(&self) -> usize {
        self.k
    }

    /// The f32 weight the int8 values stand for (smoothing undone).
    pub fn dequantize(&self) -> Tensor {
        let ones;
        let smooth = match &self.smooth {
            Some(s) => s.as_slice(),
            None => {
                ones = vec![1.0f32; self.k];
                &ones
            }
        };
        let data = self
            .data
            .chunks(self.k.max(1))
            .zip(&self.scale)
            .flat_map(|(r, &s)| r.iter().zip(smooth).map(move |(&v, &f)| v as f32 * s * f))
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
        let q = quantize_rows(x, rows, self.k, self.smooth.as_deref());
        let n = self.n;
        let zeros;
        let bias = match bias {
            Some(b) => b,
            None => {
                zeros = vec![0.0f32; n];
                &zeros
            }
        };
        let out_ptr = SendPtr(out.as_mut_ptr());
        self.run(&q, Kernel::chosen(), |r0, c0, tile, nr, rows_t, cols| {
            let cs = c0..c0 + cols;
            for i in 0..rows_t {
                let r = r0 + i;
                let sx = q.scale[r];
                // SAFETY: tiles cover disjoint (row, column) blocks of `out`, which holds
                // rows · n values; each task writes only its own block.
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(r * n + c0), cols) };
                dequantize_row(
                    &tile[i * nr..i * nr + cols],
                    (
                        &self.scale[cs.clone()],
                        &self.csw[cs.clone()],
                        &bias[cs.clone()],
                    ),
                    (sx, sx * q.zero[r] as f32),
                    dst,
                    mode == LinearOut::Accumulate,
                );
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
        let task = |t: usize| {
            let (rt, ct) = (t / col_tasks, t % col_tasks);
            let r0 = rt * mr;
            let rows = mr.min(x.rows - r0);
            // Every kernel writes all `rows × nr` sums of its tile; rows past `rows` are unread.
            let mut tile = vec![0i32; mr * nr];
            for p in ct * panels_per_task..((ct + 1) * panels_per_task).min(np) {
                let c0 = p * nr;
                let cols = nr.min(self.n - c0);
                match (kernel, &packed, &wide) {
                    #[cfg(target_arch = "x86_64")]
                    (Kernel::Vnni, Some(pk), _) => {
                        let panel = pk[p * (x.kp * nr)..].as_ptr();
                        let a = x.q[r0 * x.kp..].as_ptr();
                        // SAFETY: the CPU has the features (checked above); the panel holds
                        // kp·NR bytes, `q` rows·kp bytes past `r0`, `tile` MR·NR values.
                        unsafe { with_rows!(rows, vnni_tile(a, x.kp, panel, tile.as_mut_ptr())) }
                    }
                    #[cfg(target_arch = "x86_64")]
                    (Kernel::Avx512Bw, Some(pk), Some(w16)) => {
                        let panel = pk[p * (x.kp * nr * 2)..].as_ptr();
                        let a = w16[r0 * x.kp..].as_ptr();
                        // SAFETY: as above, with 16-bit elements.
                        unsafe {
                            with_rows!(rows, avx512bw_tile(a, x.kp, panel, tile.as_mut_ptr()))
                        }
                    }
                    #[cfg(target_arch = "x86_64")]
                    (Kernel::Avx2, Some(pk), Some(w16)) => {
                        let panel = pk[p * (x.kp * nr * 2)..].as_ptr();
                        let a = w16[r0 * x.kp..].as_ptr();
                        // SAFETY: as above; AVX2 tiles have at most 6 rows.
                        unsafe { with_rows!(rows, avx2_tile(a, x.kp, panel, tile.as_mut_ptr())) }
                    }
                    _ => self.scalar_tile(x, r0, rows, c0, cols, nr, &mut tile),
                }
                emit(r0, c0, &tile, nr, rows, cols);
            }
        };
        // A small product (a decoding step's one row) takes microseconds: waking the pool's
        // threads for it costs more than it saves.
        if x.rows * self.n * self.k < SERIAL_MACS {
            (0..row_tiles * col_tasks).for_each(task);
        } else {
            (0..row_tiles * col_tasks).into_par_iter().for_each(task);
        }
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

/// One VNNI tile: `R` rows × 32 columns. `a` holds rows of `kp` u8 values, `panel` the packed
/// weights (`kp/4` groups of 32 columns × 4 bytes); `tile` receives `R × 32` sums.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn vnni_tile<const R: usize>(a: *const u8, kp: usize, panel: *const u8, tile: *mut i32) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_si512(); 2]; R];
    for g in 0..kp / 4 {
        let w = panel.add(g * 128);
        let w0 = _mm512_loadu_si512(w as *const _);
        let w1 = _mm512_loadu_si512(w.add(64) as *const _);
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_epi32((a.add(r * kp + g * 4) as *const i32).read_unaligned());
            acc_r[0] = _mm512_dpbusd_epi32(acc_r[0], x, w0);
            acc_r[1] = _mm512_dpbusd_epi32(acc_r[1], x, w1);
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        _mm512_storeu_si512(tile.add(r * 32) as *mut _, acc_r[0]);
        _mm512_storeu_si512(tile.add(r * 32 + 16) as *mut _, acc_r[1]);
    }
}

/// One AVX-512BW tile: `R` rows × 32 columns on 16-bit operands (`kp/2` pairs).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn avx512bw_tile<const R: usize>(
    a: *const i16,
    kp: usize,
    panel: *const u8,
    tile: *mut i32,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_si512(); 2]; R];
    for g in 0..kp / 2 {
        let w = panel.add(g * 128);
        let w0 = _mm512_loadu_si512(w as *const _);
        let w1 = _mm512_loadu_si512(w.add(64) as *const _);
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_epi32((a.add(r * kp + g * 2) as *const i32).read_unaligned());
            acc_r[0] = _mm512_add_epi32(acc_r[0], _mm512_madd_epi16(x, w0));
            acc_r[1] = _mm512_add_epi32(acc_r[1], _mm512_madd_epi16(x, w1));
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        _mm512_storeu_si512(tile.add(r * 32) as *mut _, acc_r[0]);
        _mm512_storeu_si512(tile.add(r * 32 + 16) as *mut _, acc_r[1]);
    }
}

/// One AVX2 tile: `R` (at most 6) rows × 16 columns on 16-bit operands.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2_tile<const R: usize>(a: *const i16, kp: usize, panel: *const u8, tile: *mut i32) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    for g in 0..kp / 2 {
        let w = panel.add(g * 64);
        let w0 = _mm256_loadu_si256(w as *const __m256i);
        let w1 = _mm256_loadu_si256(w.add(32) as *const __m256i);
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let x = _mm256_set1_epi32((a.add(r * kp + g * 2) as *const i32).read_unaligned());
            acc_r[0] = _mm256_add_epi32(acc_r[0], _mm256_madd_epi16(x, w0));
            acc_r[1] = _mm256_add_epi32(acc_r[1], _mm256_madd_epi16(x, w1));
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        _mm256_storeu_si256(tile.add(r * 16) as *mut __m256i, acc_r[0]);
        _mm256_storeu_si256(tile.add(r * 16 + 8) as *mut __m256i, acc_r[1]);
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
            let q = quantize_rows(&x, rows, k, None);
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
        let q = quantize_rows(&x, 2, 3, None);
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

//! Strided matrix views and the safe wrapper around the `gemm` crate.
//!
//! Views carry row and column strides, so a transposed operand (Kᵀ in attention, Wᵀ in a linear
//! layer) is a view with swapped strides, never a materialized copy.

use crate::error::{Error, Result};
use gemm::Parallelism;

/// A read-only strided matrix view.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `[rows, cols]` view of `data`.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Result<Self> {
        Self::strided(data, rows, cols, cols, 1)
    }

    /// A view with explicit row stride `rs` and column stride `cs` (in elements).
    pub fn strided(
        data: &'a [f32],
        rows: usize,
        cols: usize,
        rs: usize,
        cs: usize,
    ) -> Result<Self> {
        let m = MatRef {
            data,
            rows,
            cols,
            rs,
            cs,
        };
        if span(rows, cols, rs, cs) > data.len() {
            return Err(Error::shape(
                "MatRef",
                format!(
                    "[{rows}, {cols}] view with strides ({rs}, {cs}) needs {} values, buffer has {}",
                    span(rows, cols, rs, cs),
                    data.len()
                ),
            ));
        }
        Ok(m)
    }

    /// The transposed view (no copy).
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Rows of the view.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns of the view.
    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// A mutable strided matrix view.
#[derive(Debug)]
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> MatMut<'a> {
    /// A row-major `[rows, cols]` view of `data`.
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize) -> Result<Self> {
        Self::strided(data, rows, cols, cols, 1)
    }

    /// A view with explicit strides.
    pub fn strided(
        data: &'a mut [f32],
        rows: usize,
        cols: usize,
        rs: usize,
        cs: usize,
    ) -> Result<Self> {
        if span(rows, cols, rs, cs) > data.len() {
            return Err(Error::shape(
                "MatMut",
                format!(
                    "[{rows}, {cols}] view with strides ({rs}, {cs}) needs {} values, buffer has {}",
                    span(rows, cols, rs, cs),
                    data.len()
                ),
            ));
        }
        Ok(MatMut {
            data,
            rows,
            cols,
            rs,
            cs,
        })
    }
}

fn span(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

/// How many threads one matrix multiply may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Par {
    /// Run on the calling thread (inside an already-parallel loop).
    Single,
    /// Use the whole rayon pool.
    All,
}

/// `dst = scale · a · b`, or `dst += scale · a · b` when `accumulate`.
pub fn matmul(
    dst: MatMut<'_>,
    a: MatRef<'_>,
    b: MatRef<'_>,
    scale: f32,
    accumulate: bool,
    par: Par,
) -> Result<()> {
    if a.cols != b.rows || dst.rows != a.rows || dst.cols != b.cols {
        return Err(Error::shape(
            "matmul",
            format!(
                "[{}, {}] = [{}, {}] x [{}, {}] does not fit",
                dst.rows, dst.cols, a.rows, a.cols, b.rows, b.cols
            ),
        ));
    }
    // SAFETY: the constructors checked that every strided view lies inside its buffer, and
    // `dst` is borrowed mutably, so it cannot alias `a` or `b`.
    unsafe {
        gemm_raw(
            dst.data.as_mut_ptr(),
            dst.rs,
            dst.cs,
            a.rows,
            b.cols,
            a.cols,
            a.data.as_ptr(),
            a.rs,
            a.cs,
            b.data.as_ptr(),
            b.rs,
            b.cs,
            scale,
            accumulate,
            par,
        )
    }
    Ok(())
}

/// [`matmul`] (scale 1) through Kiln's AVX-512 kernel where it runs: `b` is packed once
/// (its transpose read in place) and `a` read with its strides, so a transposed operand costs
/// no copy. Falls back to the `gemm` crate on other CPUs, for a strided `dst` or too few rows.
/// For one-off products large enough that packing `b` is cheap beside them (training's
/// backward passes, the vocabulary projection); a weight used many times is packed once by
/// its owner instead.
pub fn matmul_fast(dst: MatMut<'_>, a: MatRef<'_>, b: MatRef<'_>, accumulate: bool) -> Result<()> {
    use super::packed::{PackedWeight, MIN_ROWS};
    let contiguous = dst.cs == 1 && dst.rs == dst.cols;
    if !(contiguous && a.rows >= MIN_ROWS && PackedWeight::supported())
        || a.cols != b.rows
        || dst.rows != a.rows
        || dst.cols != b.cols
    {
        return matmul(dst, a, b, 1.0, accumulate, Par::All);
    }
    // b: [k, n] -> the packed [n, k] whose (j, kk) is b[kk, j].
    let w = PackedWeight::pack_strided(b.data, b.cols, b.rows, b.cs, b.rs);
    // A transposed `a` (a weight gradient's dyᵀ) is read in place: measured faster than
    // copying it into rows first, the copy costing more than the strided reads.
    w.matmul_strided(a.data, a.rows, a.rs, a.cs, None, dst.data, accumulate, None);
    Ok(())
}

/// Raw strided GEMM: `dst[m, n] (+)= scale · lhs[m, k] · rhs[k, n]`.
///
/// # Safety
/// Every pointer must be valid for its strided extent, and `dst` must not overlap the inputs
/// or any memory another thread writes concurrently.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_raw(
    dst: *mut f32,
    dst_rs: usize,
    dst_cs: usize,
    m: usize,
    n: usize,
    k: usize,
    lhs: *const f32,
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: *const f32,
    rhs_rs: usize,
    rhs_cs: usize,
    scale: f32,
    accumulate: bool,
    par: Par,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    *dst.add(i * dst_rs + j * dst_cs) = 0.0;
                }
            }
        }
        return;
    }
    let parallelism = match par {
        Par::Single => Parallelism::None,
        Par::All => {
            let t = rayon::current_num_threads();
            // Small products lose more to synchronization than they gain.
            if t > 1 && m * n * k >= 32 * 32 * 32 {
                Parallelism::Rayon(t)
            } else {
                Parallelism::None
            }
        }
    };
    gemm::gemm(
        m,
        n,
        k,
        dst,
        dst_cs as isize,
        dst_rs as isize,
        accumulate,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        1.0,
        scale,
        false,
        false,
        false,
        parallelism,
    );
}

/// Naive reference matmul for tests: `a[m,k] · b[k,n]`, row-major, f64 accumulation.
pub fn naive_matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f64;
            for p in 0..k {
                s += a[i * k + p] as f64 * b[p * n + j] as f64;
            }
            out[i * n + j] = s as f32;
        }
    }
    out
}

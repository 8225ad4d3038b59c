//! Matrix-multiply throughput of the linear layers on a model's shapes: Kiln's f32 path
//! against its int8 kernels (each one this CPU runs). Prints one JSON line per (shape, path).
//! Run by `bench/quant_bench.py`; alone: `cargo run --release --example gemm_bench -- ROWS`.

use kiln::engine::int8::{quantize_rows, Int8Weight, Kernel};
use kiln::engine::{Linear, LinearOut, Tensor};
use std::time::Instant;

fn main() {
    let rows: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let min_secs = 0.5;
    // all-MiniLM-L6-v2 / BERT-mini shapes (k = in, n = out): qkv, attention out, FFN in, FFN out.
    let shapes = [(384, 1152), (384, 384), (384, 1536), (1536, 384)];
    for &(k, n) in &shapes {
        let mut seed = 1u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let x: Vec<f32> = (0..rows * k).map(|_| rnd()).collect();
        let w = Tensor::new(vec![n, k], (0..n * k).map(|_| rnd()).collect()).unwrap();
        let ops = 2.0 * rows as f64 * k as f64 * n as f64;
        let time = |f: &mut dyn FnMut()| {
            f(); // warm-up (packing)
            let (mut reps, t) = (0u32, Instant::now());
            while t.elapsed().as_secs_f64() < min_secs {
                f();
                reps += 1;
            }
            ops * reps as f64 / t.elapsed().as_secs_f64() / 1e9
        };
        let lin = Linear::new(w.clone(), None);
        let mut out = vec![0.0f32; rows * n];
        let f32_rate = time(&mut || {
            lin.forward_into(&x, rows, &mut out, LinearOut::Write)
                .unwrap()
        });
        println!(
            "{{\"rows\": {rows}, \"k\": {k}, \"n\": {n}, \"path\": \"f32\", \"gops\": {f32_rate:.1}}}"
        );
        // Kiln's f32 path on CPUs without AVX-512: the `gemm` crate's AVX2 kernels.
        let avx2_rate = time(&mut || {
            kiln::engine::linear::linear_forward(&w, None, &x, rows, &mut out, LinearOut::Write)
                .unwrap()
        });
        println!(
            "{{\"rows\": {rows}, \"k\": {k}, \"n\": {n}, \"path\": \"f32 gemm crate (AVX2)\", \"gops\": {avx2_rate:.1}}}"
        );
        let q = Int8Weight::quantize(&w);
        let full = time(&mut || q.forward_into(&x, rows, None, &mut out, LinearOut::Write));
        println!(
            "{{\"rows\": {rows}, \"k\": {k}, \"n\": {n}, \"path\": \"int8 {:?} (with row quantization)\", \"gops\": {full:.1}}}",
            Kernel::chosen()
        );
        let qx = quantize_rows(&x, rows, k, None);
        for kernel in [Kernel::Vnni, Kernel::Avx512Bw, Kernel::Avx2, Kernel::Scalar] {
            if !kernel.supported() || (kernel == Kernel::Scalar && rows > 64) {
                continue;
            }
            let rate = time(&mut || {
                std::hint::black_box(q.gemm_i32(&qx, kernel));
            });
            println!(
                "{{\"rows\": {rows}, \"k\": {k}, \"n\": {n}, \"path\": \"int8 {kernel:?} (integer GEMM)\", \"gops\": {rate:.1}}}"
            );
        }
    }
}

//! Where an LSTM training step spends its time: one direction's forward and backward through
//! time, and the big products around them, on LSTM-mini shapes (16 × 128 tokens, cell 512,
//! projection 256, vocabulary 8000). Prints milliseconds and GFLOP/s per piece.
//! `cargo run --release --example lstm_bench [-- THREADS]`

use kiln::engine::lstm::{lstm_backward, lstm_forward, LstmCell, LstmCellGrads, LstmTrace, Steps};
use kiln::engine::matmul::{matmul_fast, MatMut, MatRef};
use kiln::engine::Tensor;
use std::time::Instant;

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    kiln::engine::par::init_threads(Some(threads));
    let (b, len, h, p, v) = (16usize, 128usize, 512usize, 256usize, 8000usize);
    let t = b * len;
    let mut seed = 1u64;
    let mut rnd = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 0.2
            })
            .collect()
    };
    let cell = LstmCell {
        w_ih: Tensor::new(vec![4 * h, p], rnd(4 * h * p)).unwrap(),
        w_hh: Tensor::new(vec![4 * h, h], rnd(4 * h * h)).unwrap(),
        b_ih: Tensor::new(vec![4 * h], rnd(4 * h)).unwrap(),
        b_hh: Tensor::new(vec![4 * h], rnd(4 * h)).unwrap(),
    };
    let x = rnd(t * p);
    let steps = Steps::new(&vec![len; b]);
    let time = |name: &str, flop: f64, f: &mut dyn FnMut()| {
        f();
        let reps = 3;
        let s = Instant::now();
        for _ in 0..reps {
            f();
        }
        let secs = s.elapsed().as_secs_f64() / reps as f64;
        println!(
            "{name:<34} {:>8.1} ms {:>7.1} GFLOP/s",
            secs * 1e3,
            flop / secs / 1e9
        );
    };
    let lstm_flop = 2.0 * t as f64 * 4.0 * h as f64 * (p + h) as f64;
    let mut hout = vec![0.0; t * h];
    let mut trace = LstmTrace::default();
    time("lstm forward (one direction)", lstm_flop, &mut || {
        lstm_forward(&cell, &x, &steps, false, &mut hout, None, Some(&mut trace)).unwrap();
    });
    let dh = rnd(t * h);
    let mut gs = [
        vec![0.0; 4 * h * p],
        vec![0.0; 4 * h * h],
        vec![0.0; 4 * h],
        vec![0.0; 4 * h],
    ];
    let mut dx = vec![0.0; t * p];
    time(
        "lstm backward (one direction)",
        2.0 * lstm_flop,
        &mut || {
            let [a, bb, c, d] = &mut gs;
            lstm_backward(
                &cell,
                &x,
                &hout,
                &trace,
                &steps,
                false,
                &dh,
                Some(&mut dx),
                LstmCellGrads {
                    w_ih: Some(a),
                    w_hh: Some(bb),
                    b_ih: Some(c),
                    b_hh: Some(d),
                },
            )
            .unwrap();
        },
    );
    let dg = rnd(t * 4 * h);
    let mut dw = vec![0.0; 4 * h * h];
    time(
        "dW_hh = dGᵀ · H",
        2.0 * (t * 4 * h * h) as f64,
        &mut || {
            matmul_fast(
                MatMut::new(&mut dw, 4 * h, h).unwrap(),
                MatRef::new(&dg, t, 4 * h).unwrap().t(),
                MatRef::new(&hout, t, h).unwrap(),
                true,
            )
            .unwrap();
        },
    );
    let e = rnd(v * p);
    let xs = rnd(t * p);
    let mut logits = vec![0.0; t * v];
    time("logits = X · Eᵀ", 2.0 * (t * v * p) as f64, &mut || {
        matmul_fast(
            MatMut::new(&mut logits, t, v).unwrap(),
            MatRef::new(&xs, t, p).unwrap(),
            MatRef::new(&e, v, p).unwrap().t(),
            false,
        )
        .unwrap();
    });
    let mut dxs = vec![0.0; t * p];
    time("dX = dlogits · E", 2.0 * (t * v * p) as f64, &mut || {
        matmul_fast(
            MatMut::new(&mut dxs, t, p).unwrap(),
            MatRef::new(&logits, t, v).unwrap(),
            MatRef::new(&e, v, p).unwrap(),
            false,
        )
        .unwrap();
    });
    let mut de = vec![0.0; v * p];
    time(
        "dE = dlogitsᵀ · X",
        2.0 * (t * v * p) as f64,
        &mut || {
            matmul_fast(
                MatMut::new(&mut de, v, p).unwrap(),
                MatRef::new(&logits, t, v).unwrap().t(),
                MatRef::new(&xs, t, p).unwrap(),
                true,
            )
            .unwrap();
        },
    );
}

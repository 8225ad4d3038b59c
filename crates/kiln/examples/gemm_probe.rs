use kiln::engine::matmul::{matmul, MatMut, MatRef, Par};
fn main() {
    kiln::engine::par::init_threads(None);
    let (m, k, n) = (4096usize, 384usize, 1536usize);
    let a = vec![0.5f32; m * k];
    let w = vec![0.25f32; n * k];
    let mut c = vec![0.0f32; m * n];
    for par in [Par::All] {
        let t = std::time::Instant::now();
        for _ in 0..40 {
            matmul(MatMut::new(&mut c, m, n).unwrap(), MatRef::new(&a, m, k).unwrap(), MatRef::new(&w, n, k).unwrap().t(), 1.0, false, par).unwrap();
        }
        let s = t.elapsed().as_secs_f64() / 40.0;
        println!("{par:?}: {:.1} GFLOP/s (threads {})", 2.0 * (m * n * k) as f64 / s / 1e9, rayon::current_num_threads());
    }
}

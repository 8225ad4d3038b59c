//! Thread control and the parallel loop helpers shared by the kernels.

use rayon::prelude::*;

/// Sets the number of worker threads for all kernels (`--threads`); `None` uses every core.
/// Only the first call has an effect, as rayon's global pool is built once.
pub fn init_threads(n: Option<usize>) {
    let mut b = rayon::ThreadPoolBuilder::new();
    if let Some(n) = n {
        b = b.num_threads(n.max(1));
    }
    let _ = b.build_global();
}

/// Number of worker threads kernels will use.
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// Below this many f32 values a pass over memory is not worth splitting across threads.
pub const PAR_MIN_ELEMS: usize = 1 << 14;

/// Runs `f(row_index, row)` over the rows of `data` (`row_len` values each), in parallel when
/// the buffer is large enough to pay for it. Work splits are fixed by shape, never by timing.
pub fn for_each_row(data: &mut [f32], row_len: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if row_len == 0 {
        return;
    }
    if data.len() < PAR_MIN_ELEMS || threads() == 1 {
        data.chunks_mut(row_len)
            .enumerate()
            .for_each(|(i, r)| f(i, r));
    } else {
        let rows_per_task = (PAR_MIN_ELEMS / 4 / row_len).max(1);
        data.par_chunks_mut(row_len * rows_per_task)
            .enumerate()
            .for_each(|(c, chunk)| {
                for (j, r) in chunk.chunks_mut(row_len).enumerate() {
                    f(c * rows_per_task + j, r)
                }
            });
    }
}

/// A raw pointer that may cross threads. Used only where parallel tasks write disjoint,
/// interleaved parts of one buffer (e.g. one attention head's columns of every row), which
/// safe slices cannot express.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);
unsafe impl Send for SendPtr {}

impl SendPtr {
    /// The pointer. A closure calling this captures the whole (Send) wrapper rather than the
    /// bare pointer field.
    pub(crate) fn ptr(self) -> *mut f32 {
        self.0
    }
}
unsafe impl Sync for SendPtr {}

/// Runs `a` and `b` at the same time, each on its own half of the worker threads (a pool of
/// its own), or one after the other with a single thread. For two independent chains of many
/// small steps (an LSTM's two directions): each chain's kernels then run without handing work
/// across threads at every step, which costs more than the small steps gain.
pub fn join_halves<A: Send, B: Send>(
    a: impl FnOnce() -> A + Send,
    b: impl FnOnce() -> B + Send,
) -> (A, B) {
    static HALVES: std::sync::OnceLock<Option<[rayon::ThreadPool; 2]>> = std::sync::OnceLock::new();
    let halves = HALVES.get_or_init(|| {
        let t = threads();
        if t < 2 {
            return None;
        }
        let pool = |n: usize| rayon::ThreadPoolBuilder::new().num_threads(n).build().ok();
        Some([pool(t / 2)?, pool(t - t / 2)?])
    });
    match halves {
        Some([pa, pb]) => rayon::join(|| pa.install(a), || pb.install(b)),
        None => (a(), b()),
    }
}

//! Data-parallel training across processes over MPI (`--features mpi`; launched with
//! `mpirun -np N kiln pretrain|finetune …`).
//!
//! Every rank holds the whole model and takes the same AdamW step. Each global batch
//! (`--batch-size` × ranks × `--grad-accum`) is read by every rank from the one global data
//! position, with the random draws of the whole batch (masking), and each rank computes the
//! loss of its own slice of it: rank r of N takes examples `r·B .. (r+1)·B` of each micro-batch
//! of `N·B`. So a run's arithmetic is that of one process at batch `N·B`, whichever rank read
//! what, and a resumed run may change the number of ranks as long as the global batch stays.
//! Reading (and tokenizing) the whole batch on every rank costs a little CPU; it buys that
//! independence without a data server.
//!
//! Gradients are summed over the ranks by allreduce in flat buckets after the backward pass.
//! Evaluation is split over the ranks where a task can add up their shares (pre-training,
//! classification), else run on rank 0 and broadcast. Rank 0 alone writes `metrics.jsonl`,
//! checkpoints and the model; the other ranks never touch the output directory except to read
//! the checkpoint a resumed run starts from (so `--out` must be on a file system every rank
//! sees).
//!
//! Without the `mpi` feature (or outside `mpirun`) the world is one process and every
//! operation here is a no-op.

use crate::error::{Error, Result};
use std::sync::OnceLock;

/// The processes training together: this one's rank and their number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct World {
    rank: usize,
    size: usize,
}

static WORLD: OnceLock<World> = OnceLock::new();

/// The world of this process: what [`init`] found, or one process.
pub fn world() -> World {
    *WORLD.get_or_init(World::single)
}

/// Values of an `mpirun` launch in the environment: Open MPI's, else the PMI (MPICH, Slurm)
/// ones. `None` outside a launcher.
fn launched() -> Option<(usize, usize)> {
    let var = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| std::env::var(n).ok()?.trim().parse::<usize>().ok())
    };
    let size = var(&["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"])?;
    let local = var(&["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"]).unwrap_or(1);
    Some((size, local.max(1)))
}

/// Ranks of this run on this machine (1 outside `mpirun`): they share its cores.
pub fn local_ranks() -> usize {
    launched().map_or(1, |(_, local)| local)
}

/// MPI, held from [`init`] to [`finish`] (dropping the universe shuts MPI down).
#[cfg(feature = "mpi")]
static UNIVERSE: std::sync::Mutex<Option<mpi::environment::Universe>> = std::sync::Mutex::new(None);

/// Joins the MPI world when the process was started by `mpirun` (a training command calls
/// this first). Outside a launcher the world is one process. A build without the `mpi` feature
/// started as one of several ranks is refused: each rank would train alone into the same
/// output directory.
pub fn init() -> Result<()> {
    let Some((size, _)) = launched() else {
        world();
        return Ok(());
    };
    #[cfg(feature = "mpi")]
    {
        use mpi::traits::Communicator;
        let _ = size;
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| Error::Input("MPI was already initialized in this process".into()))?;
        let w = universe.world();
        let me = World {
            rank: w.rank() as usize,
            size: w.size() as usize,
        };
        if WORLD.set(me).is_err() && world() != me {
            return Err(Error::Input(
                "the training world was fixed before MPI started".into(),
            ));
        }
        *UNIVERSE.lock().unwrap_or_else(|e| e.into_inner()) = Some(universe);
        Ok(())
    }
    #[cfg(not(feature = "mpi"))]
    {
        if size > 1 {
            return Err(Error::Input(format!(
                "started by mpirun as one of {size} ranks, but this kiln was built without MPI: build it with `cargo build --release --features mpi` (docs/distributed.md)"
            )));
        }
        world();
        Ok(())
    }
}

/// Elements per allreduce call: big enough that latency does not count, small enough that the
/// staging buffers stay small beside the gradients (16 MiB of f32 each way).
const BUCKET: usize = 1 << 22;

impl World {
    /// One process (whatever this process's world is): for work never shared between ranks.
    pub fn single() -> World {
        World { rank: 0, size: 1 }
    }

    /// This process's rank, 0-based.
    pub fn rank(self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn size(self) -> usize {
        self.size
    }

    /// Whether this rank writes the run's files (rank 0).
    pub fn is_root(self) -> bool {
        self.rank == 0
    }

    /// Whether more than one process trains.
    pub fn is_distributed(self) -> bool {
        self.size > 1
    }

    /// The examples of a micro-batch of `per_rank` × ranks that this rank computes.
    pub fn shard(self, per_rank: usize) -> std::ops::Range<usize> {
        self.rank * per_rank..(self.rank + 1) * per_rank
    }

    /// Sums `bufs` element-wise over all ranks, in place (flat buckets of [`BUCKET`] values
    /// gathered across the buffers, so many small tensors cost few calls). `scratch` stages the
    /// buckets; a caller that sums every step keeps it, so no step allocates.
    pub fn sum_f32(self, bufs: &mut [&mut [f32]], scratch: &mut Vec<f32>) {
        if !self.is_distributed() {
            return;
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let bucket = total.min(BUCKET);
        if scratch.len() < 2 * bucket {
            scratch.resize(2 * bucket, 0.0);
        }
        let (send, recv) = scratch[..2 * bucket].split_at_mut(bucket);
        // (buffer, offset) where the next bucket starts
        let (mut bi, mut off) = (0usize, 0usize);
        while bi < bufs.len() {
            // Gather up to BUCKET values.
            let mut filled = 0;
            let (start_bi, start_off) = (bi, off);
            while bi < bufs.len() && filled < send.len() {
                let take = (bufs[bi].len() - off).min(send.len() - filled);
                send[filled..filled + take].copy_from_slice(&bufs[bi][off..off + take]);
                filled += take;
                off += take;
                if off == bufs[bi].len() {
                    bi += 1;
                    off = 0;
                }
            }
            if filled == 0 {
                break;
            }
            self.allreduce_f32(&send[..filled], &mut recv[..filled]);
            // Scatter the sums back over the same spans.
            let (mut b, mut o, mut at) = (start_bi, start_off, 0);
            while at < filled {
                let take = (bufs[b].len() - o).min(filled - at);
                bufs[b][o..o + take].copy_from_slice(&recv[at..at + take]);
                at += take;
                o += take;
                if o == bufs[b].len() {
                    b += 1;
                    o = 0;
                }
            }
        }
    }

    /// Sums `v` element-wise over all ranks, in place (counts, losses, flags).
    pub fn sum_f64(self, v: &mut [f64]) {
        if !self.is_distributed() {
            return;
        }
        let send = v.to_vec();
        #[cfg(feature = "mpi")]
        {
            use mpi::collective::SystemOperation;
            use mpi::traits::CommunicatorCollectives;
            mpi::topology::SimpleCommunicator::world().all_reduce_into(
                &send[..],
                v,
                SystemOperation::sum(),
            );
        }
        #[cfg(not(feature = "mpi"))]
        let _ = send;
    }

    fn allreduce_f32(self, send: &[f32], recv: &mut [f32]) {
        #[cfg(feature = "mpi")]
        {
            use mpi::collective::SystemOperation;
            use mpi::traits::CommunicatorCollectives;
            mpi::topology::SimpleCommunicator::world().all_reduce_into(
                send,
                recv,
                SystemOperation::sum(),
            );
        }
        #[cfg(not(feature = "mpi"))]
        recv.copy_from_slice(send);
    }

    /// Every rank's `v`, in rank order.
    pub fn gather_u64(self, v: u64) -> Vec<u64> {
        if !self.is_distributed() {
            return vec![v];
        }
        #[allow(unused_mut)]
        let mut all = vec![0u64; self.size];
        #[cfg(feature = "mpi")]
        {
            use mpi::traits::CommunicatorCollectives;
            mpi::topology::SimpleCommunicator::world().all_gather_into(&v, &mut all[..]);
        }
        all
    }

    /// Rank 0's `bytes` on every rank.
    pub fn broadcast(self, bytes: Vec<u8>) -> Vec<u8> {
        if !self.is_distributed() {
            return bytes;
        }
        #[cfg(feature = "mpi")]
        {
            use mpi::traits::{Communicator, Root};
            let w = mpi::topology::SimpleCommunicator::world();
            let root = w.process_at_rank(0);
            let mut len = bytes.len() as u64;
            root.broadcast_into(&mut len);
            let mut buf = if self.is_root() {
                bytes
            } else {
                vec![0u8; len as usize]
            };
            root.broadcast_into(&mut buf[..]);
            buf
        }
        #[cfg(not(feature = "mpi"))]
        bytes
    }

    /// Rank 0's JSON value on every rank.
    pub fn broadcast_json(self, v: Option<serde_json::Value>) -> Result<Option<serde_json::Value>> {
        if !self.is_distributed() {
            return Ok(v);
        }
        let bytes = serde_json::to_vec(&v).map_err(|e| Error::Input(e.to_string()))?;
        serde_json::from_slice(&self.broadcast(bytes)).map_err(|e| Error::Input(e.to_string()))
    }

    /// Waits until every rank is here.
    pub fn barrier(self) {
        #[cfg(feature = "mpi")]
        if self.is_distributed() {
            use mpi::traits::CommunicatorCollectives;
            mpi::topology::SimpleCommunicator::world().barrier();
        }
    }

    /// Ends every rank of the run at once (after this rank printed why).
    pub fn abort(self, code: i32) -> ! {
        #[cfg(feature = "mpi")]
        if self.is_distributed() {
            use mpi::traits::Communicator;
            mpi::topology::SimpleCommunicator::world().abort(code);
        }
        std::process::exit(code)
    }
}

/// Shuts MPI down (`MPI_Finalize`) before the process exits; a no-op outside MPI. Every rank
/// calls it once its work is done.
pub fn finish() {
    #[cfg(feature = "mpi")]
    drop(UNIVERSE.lock().unwrap_or_else(|e| e.into_inner()).take());
}

/// A checksum of the parameter values (their bits): equal on every rank while the ranks agree.
pub fn checksum(values: &[&[f32]]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for v in values {
        for x in v.iter() {
            h.update(&x.to_bits().to_le_bytes());
        }
    }
    h.digest()
}

/// Checks that every rank holds the same parameters (`checksum`); a difference stops the run
/// naming the ranks and the step.
pub fn check_in_sync(world: World, sum: u64, step: u64) -> Result<()> {
    let all = world.gather_u64(sum);
    if all.iter().all(|&s| s == all[0]) {
        return Ok(());
    }
    let odd: Vec<String> = all
        .iter()
        .enumerate()
        .filter(|(_, &s)| s != all[0])
        .map(|(r, s)| format!("rank {r} ({s:016x})"))
        .collect();
    Err(Error::Input(format!(
        "step {step}: the ranks' parameters diverged: rank 0 holds checksum {:016x}, {} differ; the run stopped (its last checkpoint is intact)",
        all[0],
        odd.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_sums_are_identities_and_shards_cover_the_batch() {
        let w = World { rank: 0, size: 1 };
        let mut a = vec![1.0f32, 2.0];
        let mut b = vec![3.0f32];
        w.sum_f32(&mut [&mut a[..], &mut b[..]], &mut Vec::new());
        assert_eq!((a, b), (vec![1.0, 2.0], vec![3.0]));
        let ranks: Vec<_> = (0..3)
            .map(|r| World { rank: r, size: 3 }.shard(4))
            .collect();
        assert_eq!(ranks, vec![0..4, 4..8, 8..12]);
    }

    #[test]
    fn checksums_see_one_bit() {
        let a = [1.0f32, 2.0, 3.0];
        let mut b = a;
        b[1] = f32::from_bits(b[1].to_bits() ^ 1);
        assert_ne!(checksum(&[&a]), checksum(&[&b]));
        assert_eq!(checksum(&[&a]), checksum(&[&a[..]]));
    }
}

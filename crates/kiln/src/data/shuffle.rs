//! A seeded shuffle buffer over the packed-sequence stream. Corpora arrive in file order — a
//! whole book, then the next — so consecutive sequences are strongly correlated; drawing each
//! training sequence at random from a pool of the next `capacity` ones decorrelates the
//! batches (as shuffling the grouped dataset does in transformers' `run_mlm.py`) while the
//! corpus is still streamed. Deterministic: the n-th sequence depends only on the seed, so a
//! resumed run replays the stream to the same point.

use super::pack::Packer;
use crate::error::Result;
use rand::{Rng, SeedableRng};

/// Sequences from a [`Packer`] in a seeded random order within a sliding pool.
pub struct Shuffled<'a> {
    packer: Packer<'a>,
    pool: Vec<Vec<u32>>,
    capacity: usize,
    rng: rand::rngs::StdRng,
    /// Sequences handed out so far (the data position saved in checkpoints).
    pub produced: u64,
}

impl<'a> Shuffled<'a> {
    /// Shuffles within pools of `capacity` sequences (0 or 1: stream order).
    pub fn new(packer: Packer<'a>, capacity: usize, seed: u64) -> Self {
        Shuffled {
            packer,
            pool: Vec::with_capacity(capacity.max(1)),
            capacity: capacity.max(1),
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            produced: 0,
        }
    }

    /// Complete passes over the corpus that the sequences handed out so far make up (not the
    /// passes the pool has read ahead to fill itself).
    pub fn epoch(&self) -> u64 {
        self.packer.passes_at(self.produced)
    }

    /// The next sequence; `None` only when the corpus holds no tokens at all.
    pub fn next_sequence(&mut self) -> Result<Option<Vec<u32>>> {
        while self.pool.len() < self.capacity {
            match self.packer.next_sequence()? {
                Some(s) => self.pool.push(s),
                None => break,
            }
        }
        if self.pool.is_empty() {
            return Ok(None);
        }
        let i = if self.capacity == 1 {
            0
        } else {
            self.rng.gen_range(0..self.pool.len())
        };
        self.produced += 1;
        Ok(Some(self.pool.swap_remove(i)))
    }

    /// Skips `n` sequences (to resume at a saved data position).
    pub fn skip(&mut self, n: u64) -> Result<()> {
        for _ in 0..n {
            if self.next_sequence()?.is_none() {
                break;
            }
        }
        Ok(())
    }
}

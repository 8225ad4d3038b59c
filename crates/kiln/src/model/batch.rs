//! Packed (padding-free) batches: the tokens of every sequence laid end to end, so the linear
//! layers never touch padding. A padded batch is the same structure with a key mask.

use crate::error::{Error, Result};

/// Sequences packed into one `[tokens, hidden]` matrix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Token ids, all sequences concatenated.
    pub ids: Vec<u32>,
    /// Segment ids (empty when the model has none: all zero).
    pub type_ids: Vec<u32>,
    /// Absolute position of each token.
    pub positions: Vec<u32>,
    /// Length of each sequence (number of new tokens).
    pub seq_lens: Vec<usize>,
    /// Optional per-token attention mask (1 = real token, 0 = padding keys never attended).
    pub key_mask: Option<Vec<u8>>,
    /// Per-sequence prefix lengths: each sequence attends bidirectionally over its first
    /// `prefix_lens[i]` tokens and causally after them (an encoder generating a target after
    /// its source), whatever mask the model is run with.
    pub prefix_lens: Option<Vec<usize>>,
}

impl Batch {
    /// Packs sequences of ids (and optional segment ids) starting at position 0.
    pub fn packed(seqs: &[(&[u32], Option<&[u32]>)]) -> Result<Self> {
        let mut b = Batch::default();
        for (i, (ids, types)) in seqs.iter().enumerate() {
            if let Some(t) = types {
                if t.len() != ids.len() {
                    return Err(Error::shape(
                        "Batch::packed",
                        format!(
                            "sequence {i}: {} ids but {} token type ids",
                            ids.len(),
                            t.len()
                        ),
                    ));
                }
            }
            b.ids.extend_from_slice(ids);
            match types {
                Some(t) => b.type_ids.extend_from_slice(t),
                None => b.type_ids.extend(std::iter::repeat_n(0, ids.len())),
            }
            b.positions.extend(0..ids.len() as u32);
            b.seq_lens.push(ids.len());
        }
        Ok(b)
    }

    /// A right-padded batch as transformers builds it: every sequence padded to the longest
    /// with `pad_id`, padding keys masked out.
    pub fn padded(seqs: &[(&[u32], Option<&[u32]>)], pad_id: u32) -> Result<Self> {
        let max = seqs.iter().map(|s| s.0.len()).max().unwrap_or(0);
        let mut b = Batch::default();
        let mut mask = Vec::new();
        for (ids, types) in seqs {
            let pad = max - ids.len();
            b.ids.extend_from_slice(ids);
            b.ids.extend(std::iter::repeat_n(pad_id, pad));
            match types {
                Some(t) => b.type_ids.extend_from_slice(t),
                None => b.type_ids.extend(std::iter::repeat_n(0, ids.len())),
            }
            b.type_ids.extend(std::iter::repeat_n(0, pad));
            b.positions.extend(0..max as u32);
            mask.extend(std::iter::repeat_n(1u8, ids.len()));
            mask.extend(std::iter::repeat_n(0u8, pad));
            b.seq_lens.push(max);
        }
        b.key_mask = Some(mask);
        Ok(b)
    }

    /// Continues sequences whose first `past[i]` tokens are in a KV cache.
    pub fn continuation(seqs: &[&[u32]], past: &[usize]) -> Result<Self> {
        if seqs.len() != past.len() {
            return Err(Error::shape(
                "Batch::continuation",
                "one past length per sequence",
            ));
        }
        let mut b = Batch::default();
        for (ids, &p) in seqs.iter().zip(past) {
            b.ids.extend_from_slice(ids);
            b.type_ids.extend(std::iter::repeat_n(0, ids.len()));
            b.positions.extend((p..p + ids.len()).map(|x| x as u32));
            b.seq_lens.push(ids.len());
        }
        Ok(b)
    }

    /// Total tokens.
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    /// Row offset of each sequence in the packed matrix.
    pub fn offsets(&self) -> Vec<usize> {
        let mut off = Vec::with_capacity(self.seq_lens.len());
        let mut o = 0;
        for &l in &self.seq_lens {
            off.push(o);
            o += l;
        }
        off
    }
}

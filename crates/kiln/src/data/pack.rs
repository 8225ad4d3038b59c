//! Packing a token stream into fixed-length training sequences: documents are tokenized,
//! joined with a separator, and cut into `seq_len` windows, so no position is padding.

use super::corpus::{Corpus, Texts};
use crate::error::Result;
use crate::tokenize::Tokenizer;

/// How sequences are framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `[CLS] tokens… [SEP]` (BERT); documents separated by `[SEP]` inside the window.
    Bert { cls: u32, sep: u32 },
    /// Plain windows; documents separated by the end-of-text token (GPT-2).
    Gpt { eos: u32 },
}

/// An endless stream of packed sequences over a corpus (epoch after epoch). Deterministic: the
/// n-th sequence is always the same, which is what makes a resumed run exact.
pub struct Packer<'a> {
    corpus: &'a Corpus,
    texts: Texts<'a>,
    tokenizer: &'a Tokenizer,
    framing: Framing,
    seq_len: usize,
    buffer: Vec<u32>,
    /// Sequences produced so far (the data position saved in checkpoints).
    pub produced: u64,
    /// Completed passes over the corpus (by the reader, which a shuffle pool runs ahead of
    /// training; see [`Packer::passes_at`]).
    pub epoch: u64,
    /// Sequences made from one whole pass (known once the first pass is complete).
    pub per_pass: Option<u64>,
}

impl<'a> Packer<'a> {
    /// A packer producing sequences of exactly `seq_len` tokens.
    pub fn new(
        corpus: &'a Corpus,
        tokenizer: &'a Tokenizer,
        framing: Framing,
        seq_len: usize,
    ) -> Self {
        Packer {
            corpus,
            texts: corpus.texts(),
            tokenizer,
            framing,
            seq_len,
            buffer: Vec::new(),
            produced: 0,
            epoch: 0,
            per_pass: None,
        }
    }

    /// Complete passes over the corpus that the first `sequences` sequences make up.
    pub fn passes_at(&self, sequences: u64) -> u64 {
        match self.per_pass {
            Some(n) if n > 0 => sequences / n,
            // A pass shorter than one sequence: passes per sequence as read so far.
            _ if self.produced > 0 => sequences * self.epoch / self.produced,
            _ => 0,
        }
    }

    fn body_len(&self) -> usize {
        match self.framing {
            Framing::Bert { .. } => self.seq_len.saturating_sub(2).max(1),
            Framing::Gpt { .. } => self.seq_len,
        }
    }

    /// The next sequence; `None` only when the corpus holds no tokens at all.
    pub fn next_sequence(&mut self) -> Result<Option<Vec<u32>>> {
        let body = self.body_len();
        let mut empty_passes = 0;
        while self.buffer.len() < body {
            match self.texts.next() {
                Some(text) => {
                    let ids = self.tokenizer.encode_plain(&text?)?.ids;
                    if ids.is_empty() {
                        continue;
                    }
                    self.buffer.extend_from_slice(&ids);
                    self.buffer.push(match self.framing {
                        Framing::Bert { sep, .. } => sep,
                        Framing::Gpt { eos } => eos,
                    });
                }
                None => {
                    // End of the corpus: start the next epoch.
                    self.texts = self.corpus.texts();
                    self.epoch += 1;
                    self.per_pass.get_or_insert(self.produced);
                    empty_passes += 1;
                    if empty_passes > 1 && self.buffer.is_empty() {
                        return Ok(None);
                    }
                }
            }
        }
        let chunk: Vec<u32> = self.buffer.drain(..body).collect();
        self.produced += 1;
        Ok(Some(match self.framing {
            Framing::Bert { cls, sep } => {
                let mut s = Vec::with_capacity(self.seq_len);
                s.push(cls);
                s.extend(chunk);
                s.push(sep);
                s
            }
            Framing::Gpt { .. } => chunk,
        }))
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

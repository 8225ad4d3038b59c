//! A trainer wrapper that makes the `tokenizers` crate's trainers reproducible: the same corpus
//! and settings give a byte-identical `tokenizer.json` on every run and with any thread count.
//!
//! Its own trainers keep word counts in hash maps with a random seed per process
//! (`AHashMap::new()`), and their results depend on iteration order: WordPiece creates its
//! `##x` tokens in map order, and those ids break ties between equally frequent pairs, so even
//! the learned merges vary (huggingface/tokenizers#1794); Unigram's EM sums floats in sentence
//! and thread-chunk order, and `finalize` gives the characters it must add scores in set order.
//! Here the words are counted exactly into an ordered map and handed to the trainers'
//! public `do_train` in that order — through a fixed-seed map for BPE/WordPiece, on one thread
//! for Unigram — and Unigram's final pieces are put in a canonical order.

use ahash::AHashMap;
use compact_str::CompactString;
use rayon::iter::{ParallelBridge, ParallelIterator};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::unigram::{Unigram, UnigramTrainer};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::{AddedToken, ModelWrapper, Trainer};

/// The trainer to run.
pub enum Inner {
    /// Byte-level BPE.
    Bpe(BpeTrainer),
    /// WordPiece: a BPE trainer with the `##` continuation prefix, turned into WordPiece.
    WordPiece(BpeTrainer),
    /// Unigram, with the id of its unknown token among the special tokens.
    Unigram(UnigramTrainer, usize),
}

/// Counts words in a fixed order, then trains [`Inner`] on them.
pub struct Reproducible {
    inner: Inner,
    special: usize,
    show_progress: bool,
    counts: BTreeMap<String, u64>,
}

impl Reproducible {
    /// Wraps a trainer; `special` is the number of special tokens it puts first.
    pub fn new(inner: Inner, special: usize, show_progress: bool) -> Self {
        Reproducible {
            inner,
            special,
            show_progress,
            counts: BTreeMap::new(),
        }
    }

    /// Words counted by `feed` (after normalization and pre-tokenization).
    pub fn words(&self) -> usize {
        self.counts.len()
    }
}

type TokResult<T> = tokenizers::Result<T>;

impl Trainer for Reproducible {
    type Model = ModelWrapper;

    fn should_show_progress(&self) -> bool {
        self.show_progress
    }

    fn feed<I, S, F>(&mut self, iterator: I, process: F) -> TokResult<()>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
        F: Fn(&str) -> TokResult<Vec<String>> + Sync,
    {
        // Counted in parallel; integer sums do not depend on how threads split the work.
        let counts = iterator
            .par_bridge()
            .try_fold(HashMap::<String, u64>::new, |mut m, text| {
                for w in process(text.as_ref())? {
                    *m.entry(w).or_default() += 1;
                }
                Ok::<_, tokenizers::Error>(m)
            })
            .try_reduce(HashMap::new, |a, b| {
                let (mut big, small) = if a.len() < b.len() { (b, a) } else { (a, b) };
                for (w, c) in small {
                    *big.entry(w).or_default() += c;
                }
                Ok(big)
            })?;
        self.counts = counts.into_iter().collect();
        Ok(())
    }

    fn train(&self, model: &mut ModelWrapper) -> TokResult<Vec<AddedToken>> {
        if self.counts.is_empty() {
            return Err("the corpus holds no words to train on".into());
        }
        match &self.inner {
            Inner::Bpe(t) | Inner::WordPiece(t) => {
                // A fixed seed and insertion in word order give the same iteration order on
                // every run of this build.
                let mut wc: AHashMap<CompactString, u64> = AHashMap::with_capacity_and_hasher(
                    self.counts.len(),
                    ahash::RandomState::with_seeds(1, 2, 3, 4),
                );
                for (w, c) in &self.counts {
                    wc.insert(w.as_str().into(), *c);
                }
                let mut bpe = BPE::default();
                let special = t.do_train(&wc, &mut bpe)?;
                *model = match self.inner {
                    Inner::WordPiece(_) => WordPiece::from_bpe(&bpe).into(),
                    _ => bpe.into(),
                };
                Ok(special)
            }
            Inner::Unigram(t, unk) => {
                let sentences: Vec<(String, u32)> = self
                    .counts
                    .iter()
                    .map(|(w, c)| (w.clone(), u32::try_from(*c).unwrap_or(u32::MAX)))
                    .collect();
                // One thread: the EM step's float sums are then added in one fixed order.
                let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
                let mut u = Unigram::default();
                let special = pool.install(|| t.do_train(sentences, &mut u))?;
                *model = canonical_unigram(&u, self.special, *unk, &self.counts)?.into();
                Ok(special)
            }
        }
    }
}

/// Unigram pieces in a canonical order: special tokens first, then by score (highest first),
/// ties by string. The characters the trainer had to add get the scores it gave them
/// (`min_score + k·1e-4`, handed out in set order) in character order instead.
fn canonical_unigram(
    u: &Unigram,
    special: usize,
    unk: usize,
    counts: &BTreeMap<String, u64>,
) -> TokResult<Unigram> {
    let required: BTreeSet<String> = counts
        .keys()
        .flat_map(|w| w.chars())
        .map(String::from)
        .collect();
    let all: Vec<(String, f64)> = u.iter().cloned().collect();
    let (head, rest) = all.split_at(special.min(all.len()));
    let mut rest = rest.to_vec();
    let lowest = rest
        .iter()
        .filter(|(p, _)| required.contains(p))
        .map(|(_, s)| *s)
        .reduce(f64::min);
    if let Some(m0) = lowest {
        // The scores finalize() computes, by the same float additions.
        let mut ladder = std::collections::HashSet::new();
        let mut penalty = 0.0f64;
        for _ in 0..required.len() {
            ladder.insert((m0 + penalty).to_bits());
            penalty += 0.0001;
        }
        let mut at: Vec<usize> = (0..rest.len())
            .filter(|&i| required.contains(&rest[i].0) && ladder.contains(&rest[i].1.to_bits()))
            .collect();
        let mut scores: Vec<f64> = at.iter().map(|&i| rest[i].1).collect();
        scores.sort_by(f64::total_cmp);
        at.sort_by(|&a, &b| rest[a].0.cmp(&rest[b].0));
        for (i, s) in at.into_iter().zip(scores) {
            rest[i].1 = s;
        }
    }
    rest.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Unigram::from(
        head.iter().cloned().chain(rest).collect(),
        Some(unk),
        u.byte_fallback(),
    )
}

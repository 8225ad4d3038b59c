//! Input encoding through the `tokenizers` crate: one sentence -> `[CLS] a [SEP]`, a pair ->
//! `[CLS] a [SEP] b [SEP]` with segment ids 0/1 (or whatever the tokenizer.json post-processor
//! template says), truncation, and the offsets and word ids later tasks need.

mod extend;
mod load;
mod reproducible;
pub mod train;

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use tokenizers::{TruncationDirection, TruncationParams, TruncationStrategy};

/// Which tokenizer model a directory uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerKind {
    /// WordPiece (BERT).
    WordPiece,
    /// Byte-pair encoding (GPT-2 and others).
    Bpe,
    /// Unigram (SentencePiece-style).
    Unigram,
    /// Whole-word lookup.
    WordLevel,
}

/// The special tokens around an encoder's input (see [`Tokenizer::frame`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Start token (`[CLS]`, `<s>`).
    pub cls: u32,
    /// Separator and end token (`[SEP]`, `</s>`).
    pub sep: u32,
    /// A pair repeats the separator between its parts (RoBERTa's `</s></s>`).
    pub double_sep: bool,
}

impl Frame {
    /// The tokens between the two parts of a pair: `[SEP]`, or `</s></s>`.
    pub fn between(&self) -> Vec<u32> {
        if self.double_sep {
            vec![self.sep, self.sep]
        } else {
            vec![self.sep]
        }
    }
}

/// How a too-long input is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Truncation {
    /// Remove tokens from the longer of the two sentences first.
    #[default]
    LongestFirst,
    /// Only cut the first sentence.
    OnlyFirst,
    /// Only cut the second sentence.
    OnlySecond,
}

/// One encoded input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoding {
    /// Token ids, special tokens included.
    pub ids: Vec<u32>,
    /// Segment ids.
    pub type_ids: Vec<u32>,
    /// Byte offsets of each token in its own sentence (`(0, 0)` for special tokens).
    pub offsets: Vec<(usize, usize)>,
    /// Word index of each token within its sentence (`None` for special tokens).
    pub word_ids: Vec<Option<u32>>,
    /// Which sentence (0 or 1) each token came from (`None` for special tokens).
    pub sequence_ids: Vec<Option<usize>>,
    /// Whether each token is a special token.
    pub special: Vec<bool>,
}

/// A tokenizer with Kiln's conventions (no built-in padding; truncation set explicitly).
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    kind: TokenizerKind,
    source: PathBuf,
    /// Tokens were added after loading (see `extend.rs`).
    changed: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokenizer({:?}, {})", self.kind, self.source.display())
    }
}

impl Tokenizer {
    /// Loads the tokenizer of a model directory: `tokenizer.json`, else BERT's `vocab.txt`,
    /// else GPT-2's `vocab.json` + `merges.txt`. `None` when the directory has none of them.
    pub fn from_dir(dir: &Path) -> Result<Option<Self>> {
        load::from_dir(dir)
    }

    /// Loads a `tokenizer.json` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        load::from_tokenizer_json(path)
    }

    pub(crate) fn from_parts(inner: tokenizers::Tokenizer, source: PathBuf) -> Result<Self> {
        let mut inner = inner;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| tok_err(&source, e))?;
        let kind = match inner.get_model() {
            tokenizers::ModelWrapper::WordPiece(_) => TokenizerKind::WordPiece,
            tokenizers::ModelWrapper::BPE(_) => TokenizerKind::Bpe,
            tokenizers::ModelWrapper::Unigram(_) => TokenizerKind::Unigram,
            tokenizers::ModelWrapper::WordLevel(_) => TokenizerKind::WordLevel,
        };
        Ok(Tokenizer {
            inner,
            kind,
            source,
            changed: false,
        })
    }

    /// The tokenizer model kind.
    pub fn kind(&self) -> TokenizerKind {
        self.kind
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Sets truncation for every later `encode`; `None` disables it.
    pub fn set_truncation(&mut self, max_len: Option<usize>, strategy: Truncation) -> Result<()> {
        if let Some(n) = max_len {
            // Below this the tokenizers crate keeps the whole text (its room for text
            // underflows): a limit must leave at least one token of text.
            let min = self.special_tokens_added(false) + 1;
            let min = min.max(self.special_tokens_added(true));
            if n < min {
                return Err(Error::Input(format!(
                    "--max-length {n} leaves no room for text: {} adds {} special token(s) to each input; the minimum is {min}",
                    self.source.display(),
                    self.special_tokens_added(false)
                )));
            }
        }
        let params = max_len.map(|max_length| TruncationParams {
            max_length,
            strategy: match strategy {
                Truncation::LongestFirst => TruncationStrategy::LongestFirst,
                Truncation::OnlyFirst => TruncationStrategy::OnlyFirst,
                Truncation::OnlySecond => TruncationStrategy::OnlySecond,
            },
            stride: 0,
            direction: TruncationDirection::Right,
        });
        self.inner
            .with_truncation(params)
            .map_err(|e| tok_err(&self.source, e))?;
        Ok(())
    }

    /// The file the tokenizer was read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Special tokens added to one sentence (`pair`: to a pair), e.g. 2 and 3 for BERT.
    pub fn special_tokens_added(&self, pair: bool) -> usize {
        self.inner
            .get_post_processor()
            .map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, pair))
    }

    /// Encodes one sentence or a pair, with special tokens.
    pub fn encode(&self, a: &str, b: Option<&str>) -> Result<Encoding> {
        let enc = match b {
            Some(b) => self.inner.encode((a, b), true),
            None => self.inner.encode(a, true),
        }
        .map_err(|e| Error::Tokenizer {
            context: format!(
                "{} encoding {:?}",
                self.source.display(),
                truncate_for_msg(a)
            ),
            msg: e.to_string(),
        })?;
        Ok(convert(&enc))
    }

    /// Encodes many single sentences (in parallel).
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Encoding>> {
        let encs = self
            .inner
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| tok_err(&self.source, e))?;
        Ok(encs.iter().map(convert).collect())
    }

    /// Encodes a sentence given as words (pre-tokenized, e.g. CoNLL), with special tokens;
    /// `word_ids` then index into `words`.
    /// Byte-level BPE words are encoded as if each followed a space (transformers'
    /// `add_prefix_space=True`, which its tagging recipes require), so a word maps to the same
    /// pieces wherever it stands.
    pub fn encode_words(&self, words: &[&str]) -> Result<Encoding> {
        let spaced: Vec<String>;
        let words: Vec<&str> = if self.byte_level() {
            spaced = words.iter().map(|w| format!(" {w}")).collect();
            spaced.iter().map(String::as_str).collect()
        } else {
            words.to_vec()
        };
        let input = tokenizers::InputSequence::from(words.clone());
        let enc = self
            .inner
            .encode(tokenizers::EncodeInput::Single(input), true)
            .map_err(|e| Error::Tokenizer {
                context: format!(
                    "{} encoding words {:?}",
                    self.source.display(),
                    truncate_for_msg(&words.join(" "))
                ),
                msg: e.to_string(),
            })?;
        Ok(convert(&enc))
    }

    /// Whether the pre-tokenizer works on bytes (GPT-2 style), where a leading space is part
    /// of a word's first piece.
    fn byte_level(&self) -> bool {
        matches!(
            self.inner.get_pre_tokenizer(),
            Some(tokenizers::PreTokenizerWrapper::ByteLevel(_))
        )
    }

    /// Encodes text without special tokens (e.g. a generation prompt for GPT-2, a word to find).
    pub fn encode_plain(&self, text: &str) -> Result<Encoding> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| tok_err(&self.source, e))?;
        Ok(convert(&enc))
    }

    /// Turns ids back into text.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| tok_err(&self.source, e))
    }

    /// The id of a token string.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The string of a token id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The first of the candidate tokens present in the vocabulary.
    fn first_of(&self, candidates: &[&str]) -> Option<u32> {
        candidates.iter().find_map(|t| self.token_to_id(t))
    }

    /// The mask token id (`[MASK]` or `<mask>`).
    pub fn mask_id(&self) -> Option<u32> {
        self.first_of(&["[MASK]", "<mask>"])
    }

    /// The padding token id.
    pub fn pad_id(&self) -> Option<u32> {
        self.inner
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| self.first_of(&["[PAD]", "<pad>"]))
    }

    /// The tokens that frame an encoder's input: `[CLS] a [SEP] b [SEP]` (BERT, DistilBERT) or
    /// `<s> a </s></s> b </s>` (RoBERTa), as their tokenizers' post-processors add them.
    pub fn frame(&self) -> Option<Frame> {
        if let (Some(cls), Some(sep)) = (self.token_to_id("[CLS]"), self.token_to_id("[SEP]")) {
            return Some(Frame {
                cls,
                sep,
                double_sep: false,
            });
        }
        let (cls, sep) = (self.token_to_id("<s>")?, self.token_to_id("</s>")?);
        Some(Frame {
            cls,
            sep,
            double_sep: true,
        })
    }

    /// The end-of-text token id.
    pub fn eos_id(&self) -> Option<u32> {
        self.first_of(&["<|endoftext|>", "</s>", "[SEP]"])
    }

    /// Writes `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self
            .inner
            .to_string(true)
            .map_err(|e| tok_err(&self.source, e))?;
        crate::checkpoint::atomic_write(path, json.as_bytes())
    }

    /// The underlying `tokenizers` object.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

fn convert(e: &tokenizers::Encoding) -> Encoding {
    Encoding {
        ids: e.get_ids().to_vec(),
        type_ids: e.get_type_ids().to_vec(),
        offsets: e.get_offsets().to_vec(),
        word_ids: e.get_word_ids().to_vec(),
        sequence_ids: e.get_sequence_ids(),
        special: e
            .get_special_tokens_mask()
            .iter()
            .map(|&m| m != 0)
            .collect(),
    }
}

fn truncate_for_msg(s: &str) -> String {
    s.chars().take(40).collect()
}

pub(crate) fn tok_err(source: &Path, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer {
        context: source.display().to_string(),
        msg: e.to_string(),
    }
}

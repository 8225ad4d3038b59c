//! Training a tokenizer on a corpus with the `tokenizers` crate's trainers, set up the way the
//! matching model family expects: BERT-style WordPiece (CJK characters split into single
//! tokens, as Google's Chinese BERT does), GPT-2-style byte-level BPE, or a SentencePiece-style
//! Unigram model. The saved directory loads in transformers as `PreTrainedTokenizerFast`.

use super::reproducible::{Inner, Reproducible};
use super::{tok_err, Tokenizer};
use crate::checkpoint::atomic_write;
use crate::data::Corpus;
use crate::error::{Error, Result};
use std::path::Path;
use std::sync::mpsc;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::metaspace::Metaspace as MetaspaceDecoder;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::unigram::{Unigram, UnigramTrainer};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::normalizers::{Lowercase, NormalizerWrapper, Sequence, NFKC};
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, ModelWrapper};

/// The tokenizer model to train.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrainKind {
    /// WordPiece with BERT normalization and `[CLS] a [SEP] b [SEP]`.
    WordPiece,
    /// Byte-level BPE (GPT-2): every byte representable, no unknown token.
    Bpe,
    /// Unigram over Metaspace pieces (ALBERT / SentencePiece style) with `[CLS]`/`[SEP]`.
    Unigram,
}

impl std::str::FromStr for TrainKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "wordpiece" => Ok(TrainKind::WordPiece),
            "bpe" => Ok(TrainKind::Bpe),
            "unigram" => Ok(TrainKind::Unigram),
            _ => Err(Error::Input(format!(
                "unknown tokenizer kind \"{s}\": wordpiece, bpe or unigram"
            ))),
        }
    }
}

/// Training settings.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Model kind.
    pub kind: TrainKind,
    /// Target vocabulary size (special tokens included).
    pub vocab_size: usize,
    /// Lower-case the text first.
    pub lowercase: bool,
    /// Minimum pair/word frequency (WordPiece and BPE).
    pub min_frequency: u64,
    /// Show a progress bar.
    pub show_progress: bool,
}

/// The special tokens each kind gets, in id order.
pub fn special_tokens(kind: TrainKind) -> &'static [&'static str] {
    match kind {
        TrainKind::WordPiece => &["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        TrainKind::Bpe => &["<|endoftext|>"],
        TrainKind::Unigram => &["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"],
    }
}

/// Trains a tokenizer on `corpus` and writes it to `out` (tokenizer.json, tokenizer_config.json,
/// special_tokens_map.json, and vocab.txt or vocab.json + merges.txt).
pub fn train_tokenizer(corpus: &Corpus, opts: &TrainOptions, out: &Path) -> Result<Tokenizer> {
    if opts.vocab_size < special_tokens(opts.kind).len() + 1 {
        return Err(Error::Input(format!(
            "--vocab-size {} is too small",
            opts.vocab_size
        )));
    }
    let specials: Vec<AddedToken> = special_tokens(opts.kind)
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect();
    let ctx = |e: &dyn std::fmt::Display| tok_err(out, e);
    let (mut tok, inner): (tokenizers::Tokenizer, Inner) = match opts.kind {
        TrainKind::WordPiece => {
            let mut t = tokenizers::Tokenizer::new(
                WordPiece::builder()
                    .unk_token("[UNK]".into())
                    .build()
                    .map_err(|e| ctx(&e))?,
            );
            t.with_normalizer(Some(BertNormalizer::new(
                true,
                true,
                Some(opts.lowercase),
                opts.lowercase,
            )));
            t.with_pre_tokenizer(Some(BertPreTokenizer));
            t.with_decoder(Some(WordPieceDecoder::default()));
            // WordPieceTrainer is this BPE trainer with the `##` prefix, turned into WordPiece.
            let tr = BpeTrainer::builder()
                .vocab_size(opts.vocab_size)
                .min_frequency(opts.min_frequency)
                .special_tokens(specials)
                .continuing_subword_prefix("##".into())
                .show_progress(opts.show_progress)
                .build();
            (t, Inner::WordPiece(tr))
        }
        TrainKind::Bpe => {
            let mut t = tokenizers::Tokenizer::new(BPE::default());
            if opts.lowercase {
                t.with_normalizer(Some(Lowercase));
            }
            t.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
            t.with_post_processor(Some(ByteLevel::new(false, true, true)));
            t.with_decoder(Some(ByteLevelDecoder::default()));
            let tr = BpeTrainer::builder()
                .vocab_size(opts.vocab_size)
                .min_frequency(opts.min_frequency)
                .special_tokens(specials)
                .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
                .show_progress(opts.show_progress)
                .build();
            (t, Inner::Bpe(tr))
        }
        TrainKind::Unigram => {
            let mut t = tokenizers::Tokenizer::new(Unigram::default());
            let mut norms: Vec<NormalizerWrapper> = vec![NFKC.into()];
            if opts.lowercase {
                norms.push(Lowercase.into());
            }
            t.with_normalizer(Some(Sequence::new(norms)));
            t.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::Always, true)));
            t.with_decoder(Some(MetaspaceDecoder::new(
                '▁',
                PrependScheme::Always,
                true,
            )));
            let tr = UnigramTrainer::builder()
                .vocab_size(opts.vocab_size as u32)
                .special_tokens(specials)
                .unk_token(Some("<unk>".into()))
                .show_progress(opts.show_progress)
                .build()
                .map_err(|e| ctx(&e))?;
            // `<unk>` is the second special token.
            (t, Inner::Unigram(tr, 1))
        }
    };

    // Texts are streamed from a reader thread; a read error stops the stream and is reported.
    let (tx, rx) = mpsc::sync_channel::<String>(1024);
    let reader = {
        let corpus = corpus.clone();
        std::thread::spawn(move || {
            corpus.for_each_text(|t, _| {
                tx.send(t.to_string())
                    .map_err(|_| Error::Input("stopped".into()))
            })
        })
    };
    let mut trainer = Reproducible::new(inner, special_tokens(opts.kind).len(), opts.show_progress);
    let trained = tok
        .train(&mut trainer, rx.into_iter())
        .map(|_| ())
        .map_err(|e| ctx(&e));
    reader
        .join()
        .map_err(|_| Error::Input("the corpus reader thread panicked".into()))??;
    if trainer.words() == 0 {
        return Err(Error::Input(format!(
            "the corpus ({}) holds no text to train a tokenizer on",
            corpus
                .files()
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    trained?;

    if opts.kind != TrainKind::Bpe {
        let id = |t: &str| {
            tok.token_to_id(t).ok_or_else(|| Error::Tokenizer {
                context: out.display().to_string(),
                msg: format!("trained vocabulary lacks {t}"),
            })
        };
        let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
        let template = TemplateProcessing::builder()
            .try_single("[CLS] $A [SEP]")
            .and_then(|b| b.try_pair("[CLS] $A [SEP] $B:1 [SEP]:1"))
            .map_err(|e| ctx(&e))?
            .special_tokens(vec![("[CLS]", cls), ("[SEP]", sep)])
            .build()
            .map_err(|e| ctx(&e))?;
        tok.with_post_processor(Some(template));
    }
    save_tokenizer_dir(&tok, opts, out)?;
    Tokenizer::from_parts(tok, out.join("tokenizer.json"))
}

fn save_tokenizer_dir(tok: &tokenizers::Tokenizer, opts: &TrainOptions, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io("create directory", out, e))?;
    let json = tok.to_string(true).map_err(|e| tok_err(out, e))?;
    atomic_write(&out.join("tokenizer.json"), json.as_bytes())?;
    let (config, map) = match opts.kind {
        TrainKind::WordPiece => (
            serde_json::json!({
                "tokenizer_class": "BertTokenizer", "do_lower_case": opts.lowercase,
                "tokenize_chinese_chars": true, "unk_token": "[UNK]", "sep_token": "[SEP]",
                "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]",
                "model_max_length": 512,
            }),
            serde_json::json!({"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}),
        ),
        TrainKind::Bpe => (
            serde_json::json!({
                "tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>", "add_prefix_space": false, "model_max_length": 1024,
            }),
            serde_json::json!({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}),
        ),
        TrainKind::Unigram => (
            serde_json::json!({
                "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>", "sep_token": "[SEP]",
                "pad_token": "<pad>", "cls_token": "[CLS]", "mask_token": "[MASK]", "model_max_length": 512,
            }),
            serde_json::json!({"unk_token": "<unk>", "sep_token": "[SEP]", "pad_token": "<pad>", "cls_token": "[CLS]", "mask_token": "[MASK]"}),
        ),
    };
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    atomic_write(
        &out.join("tokenizer_config.json"),
        pretty(&config).as_bytes(),
    )?;
    atomic_write(
        &out.join("special_tokens_map.json"),
        pretty(&map).as_bytes(),
    )?;
    // The classic vocabulary files, for tools that read them instead of tokenizer.json.
    match tok.get_model() {
        ModelWrapper::WordPiece(wp) => {
            let mut vocab: Vec<(String, u32)> =
                tokenizers::Model::get_vocab(wp).into_iter().collect();
            vocab.sort_by_key(|(_, id)| *id);
            let text: String = vocab.into_iter().map(|(t, _)| t + "\n").collect();
            atomic_write(&out.join("vocab.txt"), text.as_bytes())?;
        }
        ModelWrapper::BPE(bpe) => {
            let files = tokenizers::Model::save(bpe, out, None).map_err(|e| tok_err(out, e))?;
            let _ = files;
        }
        _ => {}
    }
    Ok(())
}

//! Building a tokenizer from the files a model directory may hold.

use super::{tok_err, Tokenizer};
use crate::error::{Error, Result};
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;

pub(super) fn from_dir(dir: &Path) -> Result<Option<Tokenizer>> {
    let json = dir.join("tokenizer.json");
    let vocab_txt = dir.join("vocab.txt");
    let vocab_json = dir.join("vocab.json");
    let merges = dir.join("merges.txt");
    if json.is_file() {
        from_tokenizer_json(&json).map(Some)
    } else if vocab_txt.is_file() {
        bert_wordpiece(dir, &vocab_txt).map(Some)
    } else if vocab_json.is_file() && merges.is_file() {
        match roberta_settings(dir) {
            Some(add_prefix_space) => roberta_bpe(&vocab_json, &merges, add_prefix_space).map(Some),
            None => gpt2_bpe(&vocab_json, &merges).map(Some),
        }
    } else {
        Ok(None)
    }
}

pub(super) fn from_tokenizer_json(path: &Path) -> Result<Tokenizer> {
    let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| Error::Tokenizer {
        context: format!("loading {}", path.display()),
        msg: e.to_string(),
    })?;
    Tokenizer::from_parts(inner, path.to_path_buf())
}

/// BERT's classic `vocab.txt`: BERT normalization (lower-casing per tokenizer_config.json's
/// `do_lower_case`, default true; CJK characters split), WordPiece, `[CLS] a [SEP] b [SEP]`.
fn bert_wordpiece(dir: &Path, vocab: &Path) -> Result<Tokenizer> {
    let lowercase = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("do_lower_case").and_then(|b| b.as_bool()))
        .unwrap_or(true);
    let vocab_s = vocab
        .to_str()
        .ok_or_else(|| Error::Input(format!("non-UTF-8 path {}", vocab.display())))?;
    let wp = WordPiece::from_file(vocab_s)
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| tok_err(vocab, e))?;
    let mut inner = tokenizers::Tokenizer::new(wp);
    let id = |t: &str| {
        inner.token_to_id(t).ok_or_else(|| Error::Tokenizer {
            context: vocab.display().to_string(),
            msg: format!("vocabulary has no {t} token"),
        })
    };
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    inner.with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)));
    inner.with_pre_tokenizer(Some(BertPreTokenizer));
    let template = TemplateProcessing::builder()
        .try_single("[CLS] $A [SEP]")
        .and_then(|b| b.try_pair("[CLS] $A [SEP] $B:1 [SEP]:1"))
        .map_err(|e| tok_err(vocab, e))?
        .special_tokens(vec![("[CLS]", cls), ("[SEP]", sep)])
        .build()
        .map_err(|e| tok_err(vocab, e))?;
    inner.with_post_processor(Some(template));
    inner.with_decoder(Some(WordPieceDecoder::default()));
    Tokenizer::from_parts(inner, vocab.to_path_buf())
}

/// Whether `vocab.json` + `merges.txt` are RoBERTa's (`tokenizer_config.json` names a
/// `RobertaTokenizer`, or `config.json` a `roberta` / `xlm-roberta` model), and if so its
/// `add_prefix_space` (default false, as `RobertaTokenizer`'s).
fn roberta_settings(dir: &Path) -> Option<bool> {
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    };
    let tc = read("tokenizer_config.json");
    let class = tc
        .as_ref()
        .and_then(|v| v["tokenizer_class"].as_str().map(str::to_string));
    let model_type = read("config.json").and_then(|v| v["model_type"].as_str().map(str::to_string));
    let roberta = class.is_some_and(|c| c.starts_with("Roberta"))
        || model_type.is_some_and(|t| t == "roberta" || t == "xlm-roberta");
    roberta.then(|| {
        tc.and_then(|v| v["add_prefix_space"].as_bool())
            .unwrap_or(false)
    })
}

/// RoBERTa's `vocab.json` + `merges.txt`: GPT-2's byte-level BPE, framed `<s> a </s>` and
/// `<s> a </s></s> b </s>` (`RobertaProcessing`), with its special tokens (`<mask>` taking the
/// space before it, as `RobertaTokenizer` declares it).
fn roberta_bpe(vocab: &Path, merges: &Path, add_prefix_space: bool) -> Result<Tokenizer> {
    let mut inner = byte_level_bpe(vocab, merges)?;
    let id = |inner: &tokenizers::Tokenizer, tok: &str| {
        inner.token_to_id(tok).ok_or_else(|| Error::Tokenizer {
            context: vocab.display().to_string(),
            msg: format!("vocabulary has no {tok} token"),
        })
    };
    let (cls, sep) = (id(&inner, "<s>")?, id(&inner, "</s>")?);
    inner.with_pre_tokenizer(Some(ByteLevel::new(add_prefix_space, true, true)));
    inner.with_post_processor(Some(
        tokenizers::processors::roberta::RobertaProcessing::new(
            ("</s>".to_string(), sep),
            ("<s>".to_string(), cls),
        )
        .trim_offsets(true)
        .add_prefix_space(add_prefix_space),
    ));
    let mut special: Vec<tokenizers::AddedToken> = ["<s>", "</s>", "<pad>", "<unk>"]
        .iter()
        .filter(|t| inner.token_to_id(t).is_some())
        .map(|t| tokenizers::AddedToken::from(*t, true))
        .collect();
    if inner.token_to_id("<mask>").is_some() {
        special.push(tokenizers::AddedToken::from("<mask>", true).lstrip(true));
    }
    inner.add_special_tokens(&special);
    Tokenizer::from_parts(inner, vocab.to_path_buf())
}

/// GPT-2's `vocab.json` + `merges.txt`: byte-level BPE without a prefix space.
fn gpt2_bpe(vocab: &Path, merges: &Path) -> Result<Tokenizer> {
    let mut inner = byte_level_bpe(vocab, merges)?;
    // The special token is in vocab.json; mark it special so decoding can skip it.
    if inner.token_to_id("<|endoftext|>").is_some() {
        inner.add_special_tokens(&[tokenizers::AddedToken::from("<|endoftext|>", true)]);
    }
    Tokenizer::from_parts(inner, vocab.to_path_buf())
}

/// A byte-level BPE (GPT-2's pre-tokenizer, post-processor and decoder, no prefix space).
fn byte_level_bpe(vocab: &Path, merges: &Path) -> Result<tokenizers::Tokenizer> {
    let (v, m) = (
        vocab
            .to_str()
            .ok_or_else(|| Error::Input(format!("non-UTF-8 path {}", vocab.display())))?,
        merges
            .to_str()
            .ok_or_else(|| Error::Input(format!("non-UTF-8 path {}", merges.display())))?,
    );
    let bpe = BPE::from_file(v, m)
        .build()
        .map_err(|e| tok_err(vocab, e))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    inner.with_post_processor(Some(ByteLevel::new(false, true, true)));
    inner.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(inner)
}

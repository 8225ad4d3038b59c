//! Sequence generation, two ways, with one loss (next token on the target and its end token)
//! and one decoder (greedy or beam search over a KV cache):
//! - a decoder-only model (GPT-2): `source <eos> target <eos>` under the causal mask, the
//!   source as the prompt;
//! - an encoder used as a decoder (BERT, UniLM-style): `[CLS] source [SEP] target [SEP]`
//!   (segments 0 and 1) under the prefix mask — bidirectional over `[CLS] source [SEP]`, causal
//!   after — each target token predicted at the position before it through the masked-LM head
//!   (tied to the input embeddings; a new transform when the checkpoint has none). Saved as
//!   `BertForMaskedLM` with `"kiln_generation": "prefix_lm"` in config.json (docs/seq2seq.md).
//!
//! The metrics are sacreBLEU's corpus BLEU (with its Chinese tokenization when the references
//! are Chinese) and chrF.

use super::backprop::{counted_rows, lm_loss, IGNORE};
use super::config::FinetuneConfig;
use super::finetune::{pick_metric, ExampleTask, Order};
use crate::checkpoint::Pretrained;
use crate::data::records::Record;
use crate::error::{Error, Result};
use crate::heads::LmHead;
use crate::infer::generate::{GenerateOptions, Generator, Strategy};
use crate::metrics::translation::{corpus_bleu, corpus_chrf, BleuTokenize};
use crate::model::Batch;
use crate::tokenize::Tokenizer;

/// One source/target pair, encoded.
#[derive(Clone, Debug, PartialEq)]
pub struct Seq2SeqExample {
    /// The source text.
    pub source: String,
    /// The target text (empty when predicting).
    pub target: String,
    /// Source token ids (no special tokens), truncated to fit.
    pub src: Vec<u32>,
    /// Target token ids (no special tokens), truncated to `max_target_length`.
    pub tgt: Vec<u32>,
    /// The end token that separates source and target and ends the target.
    pub eos: u32,
    /// The start token in prefix (encoder) mode: `[CLS]`.
    pub cls: Option<u32>,
}

/// Lengths of encoded examples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lengths {
    /// Tokens of the whole `source <eos> target <eos>` sequence.
    pub max_length: usize,
    /// Target tokens kept (and the most generated).
    pub max_target_length: usize,
}

/// The end token that separates and ends the sequences.
pub fn eos_of(p: &Pretrained) -> Result<u32> {
    p.config()
        .eos_token_id
        .or_else(|| p.tokenizer.as_ref().and_then(|t| t.eos_id()))
        .ok_or_else(|| {
            Error::Input(
                "sequence generation needs an end token (eos_token_id in config.json, or <|endoftext|> / </s> in the tokenizer)".into(),
            )
        })
}

/// Reads `source`/`target` records (target optional when `need_target` is false) and encodes
/// them; the source is cut from its end when the pair does not fit.
pub fn encode_pairs(
    tok: &Tokenizer,
    records: &[Record],
    need_target: bool,
    len: &Lengths,
    eos: u32,
    cls: Option<u32>,
) -> Result<Vec<Seq2SeqExample>> {
    records
        .iter()
        .map(|r| {
            let source = r.text("source")?.to_string();
            let target = match r.fields.get("target") {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(_) => return Err(r.error("field \"target\" is not a string")),
                None if need_target => return Err(r.error("no field \"target\"")),
                None => String::new(),
            };
            let mut tgt = if target.is_empty() {
                Vec::new()
            } else {
                tok.encode_plain(&target)?.ids
            };
            tgt.truncate(len.max_target_length);
            let mut src = tok.encode_plain(&source)?.ids;
            let specials = 2 + usize::from(cls.is_some());
            let room = len.max_length.saturating_sub(tgt.len() + specials).max(1);
            src.truncate(room);
            if src.is_empty() {
                return Err(r.error("the source is empty"));
            }
            Ok(Seq2SeqExample {
                source,
                target,
                src,
                tgt,
                eos,
                cls,
            })
        })
        .collect()
}

/// A packed batch of `source <eos> target <eos>` and the next-token targets: only the
/// positions that predict a target token (or the final end token) count.
pub fn seq2seq_batch(examples: &[&Seq2SeqExample]) -> Result<(Batch, Vec<i64>)> {
    let mut ids: Vec<Vec<u32>> = Vec::with_capacity(examples.len());
    let mut types: Vec<Vec<u32>> = Vec::with_capacity(examples.len());
    let mut prefixes = Vec::with_capacity(examples.len());
    let mut targets = Vec::new();
    for e in examples {
        let mut s: Vec<u32> = e.cls.into_iter().collect();
        s.extend_from_slice(&e.src);
        s.push(e.eos);
        // The separator (the last prefix token) predicts the first target token.
        let first = s.len() - 1;
        prefixes.push(s.len());
        s.extend_from_slice(&e.tgt);
        s.push(e.eos);
        for i in 0..s.len() {
            targets.push(if i >= first && i + 1 < s.len() {
                s[i + 1] as i64
            } else {
                IGNORE
            });
        }
        let mut t = vec![0u32; first + 1];
        t.resize(s.len(), u32::from(e.cls.is_some()));
        types.push(t);
        ids.push(s);
    }
    let seqs: Vec<(&[u32], Option<&[u32]>)> = ids
        .iter()
        .zip(&types)
        .map(|(s, t)| (&s[..], Some(&t[..])))
        .collect();
    let mut b = Batch::packed(&seqs)?;
    if examples.iter().any(|e| e.cls.is_some()) {
        b.prefix_lens = Some(prefixes);
    }
    Ok((b, targets))
}

/// The encoder-as-decoder loss: [`seq2seq_batch`]'s targets through the masked-LM head at the
/// target positions (the batch carries each pair's prefix length).
pub fn prefix_lm_loss(
    p: &Pretrained,
    batch: &Batch,
    targets: &[i64],
    grads: &mut Pretrained,
    grad_scale: f32,
    dropout_seed: Option<u64>,
) -> Result<f32> {
    let (rows, kept) = counted_rows(targets);
    crate::train::backprop::mlm_loss(p, batch, &rows, &kept, grads, grad_scale, dropout_seed)
}

/// Whether `p` generates as an encoder under the prefix mask (BERT and its variants) rather
/// than as a causal LM.
pub fn is_prefix_lm(p: &Pretrained) -> bool {
    p.config().arch.is_encoder()
}

/// The start and separator tokens of an encoder's tokenizer: `[CLS]` / `[SEP]` (BERT,
/// DistilBERT) or `<s>` / `</s>` (RoBERTa).
fn cls_sep(p: &Pretrained) -> Result<(u32, u32)> {
    let f = p.tokenizer()?.frame().ok_or_else(|| {
        Error::Input(
            "an encoder generates with [CLS] source [SEP] target [SEP]: its tokenizer needs [CLS] and [SEP] (or <s> and </s>)".into(),
        )
    })?;
    Ok((f.cls, f.sep))
}

/// The (end, start) tokens of `p`'s sequences.
fn specials(p: &Pretrained) -> Result<(u32, Option<u32>)> {
    if is_prefix_lm(p) {
        let (c, s) = cls_sep(p)?;
        Ok((s, Some(c)))
    } else {
        Ok((eos_of(p)?, None))
    }
}

/// Generated targets for `examples`, in order (greedy with `num_beams` 1, else beam search).
pub fn generate_targets(
    p: &Pretrained,
    examples: &[Seq2SeqExample],
    num_beams: usize,
    length_penalty: f32,
    max_target_length: usize,
) -> Result<Vec<String>> {
    let (eos, _) = specials(p)?;
    let gen = if is_prefix_lm(p) {
        Generator::prefix_lm(p, eos)?
    } else {
        Generator::new(p)?
    };
    let tok = p.tokenizer()?;
    let opts = GenerateOptions {
        max_new_tokens: max_target_length,
        strategy: if num_beams > 1 {
            Strategy::Beam {
                num_beams,
                length_penalty,
            }
        } else {
            Strategy::Greedy
        },
        seed: 0,
    };
    examples
        .iter()
        .map(|e| {
            let mut prompt: Vec<u32> = e.cls.into_iter().collect();
            prompt.extend_from_slice(&e.src);
            prompt.push(e.eos);
            let mut out = gen.generate(&prompt, &opts, |_| {})?;
            if out.last() == Some(&eos) {
                out.pop();
            }
            let text = tok.decode(&out, true)?;
            // A byte-level BPE decodes the exact text; a WordPiece decoder spaces every token.
            Ok(if tok.kind() == crate::tokenize::TokenizerKind::WordPiece {
                join_cjk(&text)
            } else {
                text
            })
        })
        .collect()
}

/// Whether `c` is written without spaces around it (CJK ideographs, kana, hangul, and the
/// full-width punctuation that goes with them).
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3000..=0x303F | 0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF
        | 0xAC00..=0xD7AF | 0xF900..=0xFAFF | 0xFF00..=0xFFEF | 0x20000..=0x2FA1F)
}

/// Removes the spaces a WordPiece decoder puts between CJK characters ("我 们 走 。" ->
/// "我们走。"), keeping those between other words. BLEU's Chinese tokenization and chrF ignore
/// these spaces; a reader does not.
pub fn join_cjk(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == ' ' {
            let mut j = i;
            while j < chars.len() && chars[j] == ' ' {
                j += 1;
            }
            let before = out.chars().next_back();
            let after = chars.get(j).copied();
            let glue = before.is_some_and(is_cjk) || after.is_some_and(is_cjk);
            if !glue {
                out.push(' ');
            }
            i = j;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out.trim().to_string()
}

/// Held-out metrics: `valid_loss` (teacher-forced target loss), `bleu` and `chrf` (0–100) of
/// the generated targets.
pub fn evaluate_seq2seq(
    p: &Pretrained,
    examples: &[Seq2SeqExample],
    num_beams: usize,
    length_penalty: f32,
    max_target_length: usize,
) -> Result<serde_json::Value> {
    let decoding = (num_beams, length_penalty, max_target_length);
    evaluate_seq2seq_with(p, examples, decoding, &|_, _| {})
}

/// [`evaluate_seq2seq`] with (beams, length penalty, max target length), calling
/// `progress(done, total)` (in generated targets) as it goes.
pub fn evaluate_seq2seq_with(
    p: &Pretrained,
    examples: &[Seq2SeqExample],
    (num_beams, length_penalty, max_target_length): (usize, f32, usize),
    progress: &dyn Fn(usize, usize),
) -> Result<serde_json::Value> {
    let (mut loss, mut n) = (0.0f64, 0usize);
    let (h, v) = (p.config().hidden_size, p.config().vocab_size);
    let word = &p.model.embeddings.word;
    let project = |hs: &[f32], n: usize| -> Result<Vec<f32>> {
        match (&p.lm_head, &p.mlm_head) {
            (Some(l), _) if !is_prefix_lm(p) => l.forward(hs, n, word),
            (_, Some(m)) if is_prefix_lm(p) => m.forward(hs, n, word),
            _ => Err(Error::Input(
                "the model has no language-model head to generate with".into(),
            )),
        }
    };
    for chunk in examples.chunks(32) {
        let refs: Vec<&Seq2SeqExample> = chunk.iter().collect();
        let (b, t) = seq2seq_batch(&refs)?;
        // Forward only, and the vocabulary projection only at the target positions.
        let hidden = p.model.forward(&b, p.model.default_mask(), None)?;
        let (rows, kept) = counted_rows(&t);
        let hs: Vec<f32> = rows
            .iter()
            .flat_map(|&r| hidden.data()[r * h..(r + 1) * h].iter().copied())
            .collect();
        let logits = project(&hs, rows.len())?;
        let (l, _) = crate::engine::grad::cross_entropy(&logits, v, &kept, IGNORE, None)?;
        loss += l as f64 * rows.len() as f64;
        n += rows.len();
    }
    let mut hyps = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(16) {
        progress(hyps.len(), examples.len());
        hyps.extend(generate_targets(
            p,
            chunk,
            num_beams,
            length_penalty,
            max_target_length,
        )?);
    }
    let refs: Vec<String> = examples.iter().map(|e| e.target.clone()).collect();
    let tok = BleuTokenize::for_refs(&refs);
    let bleu = corpus_bleu(&hyps, &refs, tok);
    Ok(serde_json::json!({
        "valid_loss": loss / n.max(1) as f64,
        "bleu": bleu.score,
        "chrf": corpus_chrf(&hyps, &refs),
        "bleu_tokenize": if tok == BleuTokenize::Zh { "zh" } else { "13a" },
    }))
}

/// Lengths of a fine-tuning config for model `p`.
pub fn lengths_of(cfg: &FinetuneConfig, p: &Pretrained) -> Lengths {
    Lengths {
        max_length: cfg.max_length.min(p.config().max_positions),
        max_target_length: cfg.max_target_length,
    }
}

/// Encodes source/target records for `p`.
pub fn pairs_of(
    p: &Pretrained,
    records: &[Record],
    need_target: bool,
    len: &Lengths,
) -> Result<Vec<Seq2SeqExample>> {
    let (eos, cls) = specials(p)?;
    encode_pairs(p.tokenizer()?, records, need_target, len, eos, cls)
}

/// Prepares sequence generation: a causal LM (GPT-2; its LM head tied to the embeddings when
/// the checkpoint has none), or an encoder (BERT) with its masked-LM head (a new transform when
/// the checkpoint has none) under the prefix mask; and the encoded pairs.
pub(crate) fn prepare(
    p: &mut Pretrained,
    cfg: &FinetuneConfig,
    records: &[Record],
    valid: &[Record],
) -> Result<ExampleTask<Seq2SeqExample, i64>> {
    if p.task.is_some() {
        return Err(Error::Input(format!(
            "--task seq2seq: {} carries a task head; start from a language model or encoder",
            p.dir.display()
        )));
    }
    let loss: crate::train::finetune::LossFn<i64> = if is_prefix_lm(p) {
        cls_sep(p)?;
        if p.mlm_head.is_none() {
            new_prefix_lm_head(p, cfg.train.seed);
        }
        p.lm_head = None;
        // Saved as BertForMaskedLM, which has no pooler (transformers would list it as unexpected).
        p.pooler = None;
        p.model.config.raw["kiln_generation"] = "prefix_lm".into();
        Box::new(prefix_lm_loss)
    } else {
        if p.lm_head.is_none() {
            p.lm_head = Some(LmHead { weight: None });
        }
        Box::new(lm_loss)
    };
    let (eos, cls) = specials(p)?;
    let len = lengths_of(cfg, p);
    let tok = p.tokenizer()?.clone();
    let train = encode_pairs(&tok, records, true, &len, eos, cls)?;
    let valid = encode_pairs(&tok, valid, true, &len, eos, cls)?;
    let metric = pick_metric(
        cfg.metric.as_deref(),
        &["bleu", "chrf"],
        &["valid_loss"],
        "bleu",
    )?;
    let (beams, lp, mt) = (cfg.num_beams, cfg.length_penalty, cfg.max_target_length);
    Ok(ExampleTask {
        order: Order::new(train.len(), cfg.train.seed),
        train,
        valid,
        metric,
        micro: Box::new(seq2seq_batch),
        count: Box::new(|t| t.iter().filter(|&&x| x != IGNORE).count()),
        loss,
        evaluate: Box::new(move |p, e| evaluate_seq2seq(p, e, beams, lp, mt)),
        aux: None,
        sharded_eval: false,
    })
}

/// A masked-LM head for an encoder checkpoint that has none: a new transform (normal init),
/// norm 1/0, zero bias, the projection tied to the input embeddings.
fn new_prefix_lm_head(p: &mut Pretrained, seed: u64) {
    let cfg = p.config().clone();
    let (h, std) = (cfg.hidden_size, cfg.initializer_range as f32);
    let mut init =
        crate::model::init::Init::new(crate::engine::dropout::mix(seed ^ 0x5E95_E9A0), std);
    p.mlm_head = Some(crate::heads::MlmHead {
        transform: init.linear(h, h, std),
        activation: cfg.activation,
        norm: crate::model::init::Init::norm(h, cfg.layer_norm_eps),
        decoder: None,
        bias: crate::engine::Tensor::zeros(&[cfg.vocab_size]),
    });
}

#[cfg(test)]
mod tests {
    use super::join_cjk;

    #[test]
    fn spaces_around_cjk_go_and_the_others_stay() {
        assert_eq!(join_cjk("我  们   走   吧  。"), "我们走吧。");
        assert_eq!(join_cjk("我 喜 欢 tom 的 猫 ."), "我喜欢tom的猫.");
        assert_eq!(join_cjk("hello  world"), "hello world");
        assert_eq!(join_cjk(" 你好 , world "), "你好, world");
    }
}

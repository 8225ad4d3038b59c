//! New models with random weights, initialized as transformers initializes them
//! (`BertPreTrainedModel._init_weights`, `GPT2PreTrainedModel._init_weights`): weights
//! normal(0, initializer_range), biases zero, LayerNorm weight 1 / bias 0, the padding row of
//! BERT's word embeddings zero, and GPT-2's residual projections scaled by 1/sqrt(2·layers).

use super::arch::Arch;
use super::config::ModelConfig;
use super::{Block, Embeddings, Transformer};
use crate::checkpoint::Pretrained;
use crate::engine::{LayerNorm, Linear, Tensor};
use crate::error::{Error, Result};
use crate::heads::{LmHead, MlmHead};
use crate::tokenize::Tokenizer;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use std::path::PathBuf;

/// Layers and hidden width of the BERT miniature sizes (Turc et al., 2019), used for both
/// architectures; heads = hidden / 64 and the feed-forward width is 4 × hidden.
pub fn size_preset(name: &str) -> Result<(usize, usize)> {
    match name {
        "tiny" => Ok((2, 128)),
        "mini" => Ok((4, 256)),
        "small" => Ok((4, 512)),
        "medium" => Ok((8, 512)),
        "base" => Ok((12, 768)),
        _ => Err(Error::Input(format!(
            "unknown --size \"{name}\": tiny, mini, small, medium or base"
        ))),
    }
}

/// Shape choices for a new model; `None` takes the size preset's value.
#[derive(Clone, Debug, Default)]
pub struct InitShape {
    /// Blocks.
    pub layers: Option<usize>,
    /// Hidden width.
    pub hidden: Option<usize>,
    /// Attention heads.
    pub heads: Option<usize>,
    /// Feed-forward width.
    pub intermediate: Option<usize>,
    /// Learned positions.
    pub max_positions: Option<usize>,
    /// Width of the embedding tables when it differs from the hidden width (ELECTRA: they are
    /// projected up to it).
    pub embedding_size: Option<usize>,
    /// LSTM: the embedding and projection width (`--hidden` is the cell width there).
    pub proj: Option<usize>,
    /// LSTM: a backward stack beside the forward one (ELMo's biLM).
    pub bidirectional: bool,
}

/// Layers, cell width and projection width of the LSTM sizes: two layers as ELMo's, each
/// projected to the width of the BERT miniature of the same name (mini: 256).
pub fn lstm_size_preset(name: &str) -> Result<(usize, usize, usize)> {
    match name {
        "tiny" => Ok((2, 256, 128)),
        "mini" => Ok((2, 512, 256)),
        "small" => Ok((2, 1024, 512)),
        "medium" => Ok((2, 2048, 512)),
        "base" => Ok((2, 4096, 512)),
        _ => Err(Error::Input(format!(
            "unknown --size \"{name}\": tiny, mini, small, medium or base"
        ))),
    }
}

/// The config of a new `kiln_lstm` model.
fn lstm_config(size: &str, shape: &InitShape, tokenizer: &Tokenizer) -> Result<ModelConfig> {
    let (l, h, p) = lstm_size_preset(size)?;
    for (flag, given) in [
        ("--heads", shape.heads.is_some()),
        ("--intermediate", shape.intermediate.is_some()),
        ("--max-positions", shape.max_positions.is_some()),
        ("--embedding-size", shape.embedding_size.is_some()),
    ] {
        if given {
            return Err(Error::Input(format!(
                "{flag} does not apply to an LSTM (its sizes are --layers, --hidden for the cell width and --proj)"
            )));
        }
    }
    let eos = tokenizer.eos_id();
    let raw = serde_json::json!({
        "model_type": "kiln_lstm", "vocab_size": tokenizer.vocab_size(),
        "num_hidden_layers": shape.layers.unwrap_or(l), "hidden_size": shape.hidden.unwrap_or(h),
        "projection_size": shape.proj.unwrap_or(p), "bidirectional": shape.bidirectional,
        "residual": true, "dropout": 0.1, "pad_token_id": tokenizer.pad_id(),
        "bos_token_id": eos, "eos_token_id": eos,
    });
    ModelConfig::from_value(raw, std::path::Path::new("<kiln init>"))
}

/// Bytes of memory on this machine that a new allocation can still get (Linux
/// `MemAvailable`), if known.
fn available_memory() -> Option<u128> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Refuses a model too large to create here, with the figures, instead of aborting part-way
/// through the allocation. Creating and saving holds the weights about three times over (the
/// model, the named tensors and their serialized bytes).
fn refuse_unaffordable(cfg: &ModelConfig) -> Result<()> {
    let params = cfg.parameter_count();
    let need = params * 4 * 3;
    let gib = |b: u128| b as f64 / (1u128 << 30) as f64;
    let too_big_for_memory = available_memory().is_some_and(|free| need > free);
    if too_big_for_memory || params > usize::MAX as u128 / 16 {
        return Err(Error::Input(format!(
            "the model would have {params} parameters ({:.1} GiB in f32; creating and saving it needs about {:.1} GiB){}; choose smaller --layers, --hidden, --intermediate or --max-positions",
            gib(params * 4),
            gib(need),
            available_memory().map_or(String::new(), |m| format!(
                ", but this machine has {:.1} GiB available",
                gib(m)
            ))
        )));
    }
    Ok(())
}

/// The config of a new model of `arch` and `size` for `tokenizer`.
pub fn new_config(
    arch: Arch,
    size: &str,
    shape: &InitShape,
    tokenizer: &Tokenizer,
) -> Result<ModelConfig> {
    if arch == Arch::Lstm {
        return lstm_config(size, shape, tokenizer);
    }
    if shape.proj.is_some() || shape.bidirectional {
        return Err(Error::Input(format!(
            "--proj and --bidirectional are LSTM sizes; {} has --hidden and --heads",
            arch.model_type()
        )));
    }
    let (l, h) = size_preset(size)?;
    let hidden = shape.hidden.unwrap_or(h);
    let layers = shape.layers.unwrap_or(l);
    let heads = shape.heads.unwrap_or((hidden / 64).max(1));
    let inter = shape.intermediate.unwrap_or(4 * hidden);
    let max_pos = shape.max_positions.unwrap_or(512);
    let vocab = tokenizer.vocab_size();
    if shape.embedding_size.is_some() && !matches!(arch, Arch::Electra | Arch::Albert) {
        return Err(Error::Input(format!(
            "--embedding-size: {} embeddings are as wide as its hidden states; only electra and albert factorize them",
            arch.model_type()
        )));
    }
    if shape.embedding_size == Some(0) {
        return Err(Error::Input("--embedding-size must be positive".into()));
    }
    let raw = match arch {
        Arch::Bert => serde_json::json!({
            "model_type": "bert", "vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": layers,
            "num_attention_heads": heads, "intermediate_size": inter, "max_position_embeddings": max_pos,
            "pad_token_id": tokenizer.pad_id().unwrap_or(0),
        }),
        Arch::Gpt2 => {
            let eos = tokenizer.eos_id();
            serde_json::json!({
                "model_type": "gpt2", "vocab_size": vocab, "n_embd": hidden, "n_layer": layers, "n_head": heads,
                "n_inner": inter, "n_positions": max_pos, "bos_token_id": eos, "eos_token_id": eos,
            })
        }
        Arch::Roberta => {
            // Positions start after the pad row, as in every RoBERTa checkpoint (514 rows for 512).
            let pad = tokenizer.pad_id().unwrap_or(1);
            let id = |t: &str, d: u32| tokenizer.token_to_id(t).unwrap_or(d);
            serde_json::json!({
                "model_type": "roberta", "vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": layers,
                "num_attention_heads": heads, "intermediate_size": inter,
                "max_position_embeddings": max_pos + pad as usize + 1, "type_vocab_size": 1,
                "layer_norm_eps": 1e-5, "pad_token_id": pad, "bos_token_id": id("<s>", 0),
                "eos_token_id": id("</s>", 2),
            })
        }
        Arch::Electra => serde_json::json!({
            "model_type": "electra", "vocab_size": vocab, "hidden_size": hidden,
            "embedding_size": shape.embedding_size.unwrap_or(hidden), "num_hidden_layers": layers, "num_attention_heads": heads,
            "intermediate_size": inter, "max_position_embeddings": max_pos,
            "pad_token_id": tokenizer.pad_id().unwrap_or(0),
        }),
        Arch::Albert => {
            let id = |t: &str, d: u32| tokenizer.token_to_id(t).unwrap_or(d);
            serde_json::json!({
                "model_type": "albert", "vocab_size": vocab, "hidden_size": hidden,
                "embedding_size": shape.embedding_size.unwrap_or(hidden.min(128)),
                "num_hidden_layers": layers, "num_hidden_groups": 1, "inner_group_num": 1,
                "num_attention_heads": heads, "intermediate_size": inter,
                "max_position_embeddings": max_pos, "hidden_act": "gelu_new",
                "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
                "classifier_dropout_prob": 0.1, "pad_token_id": tokenizer.pad_id().unwrap_or(0),
                "bos_token_id": id("[CLS]", 2), "eos_token_id": id("[SEP]", 3),
            })
        }
        Arch::Lstm => unreachable!("handled above"),
        Arch::DistilBert => serde_json::json!({
            "model_type": "distilbert", "vocab_size": vocab, "dim": hidden, "n_layers": layers,
            "n_heads": heads, "hidden_dim": inter, "max_position_embeddings": max_pos,
            "pad_token_id": tokenizer.pad_id().unwrap_or(0),
        }),
    };
    ModelConfig::from_value(raw, std::path::Path::new("<kiln init>"))
}

/// Draws new weights as transformers' `_init_weights` does: normal(0, std) matrices, zero
/// biases, LayerNorm 1/0.
pub(crate) struct Init {
    rng: rand::rngs::StdRng,
    std: f32,
}

impl Init {
    /// A seeded generator with the config's `initializer_range`.
    pub(crate) fn new(seed: u64, std: f32) -> Self {
        Init {
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            std,
        }
    }
    pub(crate) fn normal(&mut self, shape: &[usize], std: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let d =
            Normal::new(0.0f32, std).unwrap_or_else(|_| Normal::new(0.0, 0.02).expect("valid std"));
        Tensor::new(
            shape.to_vec(),
            (0..n).map(|_| d.sample(&mut self.rng)).collect(),
        )
        .expect("shape matches")
    }
    pub(crate) fn linear(&mut self, out: usize, inp: usize, std: f32) -> Linear {
        Linear::new(self.normal(&[out, inp], std), Some(Tensor::zeros(&[out])))
    }
    pub(crate) fn norm(h: usize, eps: f64) -> LayerNorm {
        LayerNorm {
            weight: Tensor::new(vec![h], vec![1.0; h]).expect("shape matches"),
            bias: Tensor::zeros(&[h]),
            eps: eps as f32,
        }
    }
}

/// New LSTM weights as PyTorch initializes `nn.LSTM` (every tensor uniform in ±1/√H) and
/// `nn.Linear(H, P)` (±1/√H, its fan-in), except that the forget gates' input bias starts at 1 (Jozefowicz et al. 2015:
/// cells remember by default, which speeds early training); embeddings normal(0, std).
fn random_lstm(
    r: &mut Init,
    cfg: ModelConfig,
    shape: crate::model::lstm::LstmShape,
) -> Transformer {
    use crate::engine::lstm::LstmCell;
    use crate::model::lstm::{Lstm, LstmDirection, LstmLayer};
    use rand::Rng;
    let (h, p) = (shape.hidden, shape.proj);
    let mut uniform = |shape: &[usize], bound: f32| {
        let n: usize = shape.iter().product();
        Tensor::new(
            shape.to_vec(),
            (0..n).map(|_| r.rng.gen_range(-bound..=bound)).collect(),
        )
        .expect("shape matches")
    };
    // nn.LSTM's bound for all its tensors, and the projection's (fan-in H) too.
    let bh = 1.0 / (h as f32).sqrt();
    let mut direction = || {
        let mut b_ih = uniform(&[4 * h], bh);
        b_ih.data_mut()[h..2 * h].fill(1.0);
        let mut b_hh = uniform(&[4 * h], bh);
        b_hh.data_mut()[h..2 * h].fill(0.0);
        LstmDirection {
            cell: LstmCell {
                w_ih: uniform(&[4 * h, p], bh),
                w_hh: uniform(&[4 * h, h], bh),
                b_ih,
                b_hh,
            },
            proj: Linear::new(uniform(&[p, h], bh), Some(uniform(&[p], bh))),
        }
    };
    let layers = (0..shape.layers)
        .map(|_| LstmLayer {
            forward: direction(),
            backward: shape.bidirectional.then(&mut direction),
        })
        .collect();
    let word = r.normal(&[cfg.vocab_size, p], r.std);
    Transformer {
        config: cfg,
        embeddings: Embeddings {
            word: Linear::new(word, None),
            position: Tensor::zeros(&[0, p]),
            token_type: None,
            norm: None,
            project: None,
        },
        blocks: Vec::new(),
        final_norm: None,
        lstm: Some(Lstm { shape, layers }),
    }
}

/// A model with random weights for `cfg`, with the pre-training head of its architecture
/// (masked LM for BERT, causal LM for GPT-2), deterministic for a given `seed`.
pub fn random_model(
    cfg: ModelConfig,
    tokenizer: Tokenizer,
    tokenizer_dir: PathBuf,
    seed: u64,
) -> Result<Pretrained> {
    refuse_unaffordable(&cfg)?;
    let std = cfg.initializer_range as f32;
    if !(std > 0.0 && std.is_finite()) {
        return Err(Error::Input(format!(
            "initializer_range must be positive, got {std}"
        )));
    }
    let mut r = Init {
        rng: rand::rngs::StdRng::seed_from_u64(seed),
        std,
    };
    if let Some(shape) = cfg.lstm.clone() {
        return Ok(Pretrained {
            peft: None,
            dir: tokenizer_dir,
            model: random_lstm(&mut r, cfg, shape),
            pooler: None,
            rtd_head: None,
            mlm_head: None,
            lm_head: Some(LmHead { weight: None }),
            tokenizer: Some(tokenizer),
            sentence: None,
            task: None,
            unused_tensors: Vec::new(),
        });
    }
    let (h, i, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
    let e = cfg.embedding_size;
    let mut word = r.normal(&[cfg.vocab_size, e], std);
    if cfg.arch.is_encoder() {
        if let Some(p) = cfg.pad_token_id.filter(|&p| (p as usize) < cfg.vocab_size) {
            word.data_mut()[p as usize * e..(p as usize + 1) * e].fill(0.0);
        }
    }
    let embeddings = Embeddings {
        word: crate::engine::Linear::new(word, None),
        position: r.normal(&[cfg.position_rows(), e], std),
        token_type: (cfg.type_vocab_size > 0).then(|| r.normal(&[cfg.type_vocab_size, e], std)),
        norm: cfg.embedding_norm.then(|| Init::norm(e, eps)),
        project: (e != h || cfg.arch.names().always_project).then(|| r.linear(h, e, std)),
    };
    // GPT-2 scales the projections that write into the residual stream.
    let resid_std = if cfg.arch == Arch::Gpt2 {
        std / (2.0 * cfg.num_layers as f32).sqrt()
    } else {
        std
    };
    let blocks = (0..cfg.num_blocks())
        .map(|_| Block {
            qkv: r.linear(3 * h, h, r.std),
            attn_out: r.linear(h, h, resid_std),
            ln_attn: Init::norm(h, eps),
            ffn_in: r.linear(i, h, r.std),
            ffn_out: r.linear(h, i, resid_std),
            ln_ffn: Init::norm(h, eps),
            adapter_attn: None,
            adapter_ffn: None,
        })
        .collect();
    let final_norm = cfg.final_norm.then(|| Init::norm(h, eps));
    let (mlm_head, lm_head) = match cfg.arch {
        Arch::Bert | Arch::Roberta | Arch::DistilBert | Arch::Electra | Arch::Albert => (
            Some(MlmHead {
                transform: r.linear(e, h, std),
                // RoBERTa's and ELECTRA's heads use exact GELU whatever `hidden_act` says.
                activation: match cfg.arch.names().mlm {
                    Some(m) if m.gelu => crate::engine::Activation::GeluErf,
                    _ => cfg.activation,
                },
                norm: Init::norm(e, eps),
                decoder: None,
                bias: Tensor::zeros(&[cfg.vocab_size]),
            }),
            None,
        ),
        Arch::Gpt2 | Arch::Lstm => (None, Some(LmHead { weight: None })),
    };
    Ok(Pretrained {
        peft: None,
        dir: tokenizer_dir,
        model: Transformer {
            config: cfg,
            embeddings,
            blocks,
            final_norm,
            lstm: None,
        },
        pooler: None,
        rtd_head: None,
        mlm_head,
        lm_head,
        tokenizer: Some(tokenizer),
        sentence: None,
        task: None,
        unused_tensors: Vec::new(),
    })
}

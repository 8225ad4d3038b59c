//! Loading a model directory: config, weights (through the architecture's name table, with the
//! aliases real checkpoints use), task heads that are present, tokenizer and sentence-embedding
//! settings.

use super::sentence::SentenceConfig;
use super::weights::WeightStore;
use crate::engine::int8::Int8Weight;
use crate::engine::lstm::LstmCell;
use crate::engine::{LayerNorm, Linear, Tensor};
use crate::error::{Error, Result};
use crate::heads::{HeadKind, Labels, LmHead, MlmHead, Pooler, RtdHead, TaskHead};
use crate::model::arch::{NameTable, QkvNames};
use crate::model::lstm::{Lstm, LstmDirection, LstmLayer, LstmShape};
use crate::model::{Arch, Block, Embeddings, ModelConfig, Transformer};
use crate::tokenize::Tokenizer;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// A loaded model directory.
pub struct Pretrained {
    /// The directory the model came from.
    pub dir: PathBuf,
    /// The transformer core.
    pub model: Transformer,
    /// BERT pooler, if the checkpoint has one.
    pub pooler: Option<Pooler>,
    /// Masked-LM head, if the checkpoint has one.
    pub mlm_head: Option<MlmHead>,
    /// Causal-LM head (GPT-2; tied to the embeddings unless the checkpoint has its own).
    pub lm_head: Option<LmHead>,
    /// Replaced-token-detection head (ELECTRA's discriminator), if the checkpoint has one.
    pub rtd_head: Option<RtdHead>,
    /// Fine-tuning head (classification, tagging, QA), if the checkpoint has one.
    pub task: Option<TaskHead>,
    /// The tokenizer, when the directory has one.
    pub tokenizer: Option<Tokenizer>,
    /// sentence-transformers settings (pooling, normalization, max length), if any.
    pub sentence: Option<SentenceConfig>,
    /// Tensors in the checkpoint that Kiln did not use (e.g. heads of other tasks).
    pub unused_tensors: Vec<String>,
    /// LoRA / adapter state when the model carries parameter-efficient additions.
    pub peft: Option<crate::peft::PeftState>,
}

impl Pretrained {
    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        &self.model.config
    }

    /// The tokenizer, or an error naming the directory when it has none.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| Error::MissingFile {
            path: self.dir.join("tokenizer.json"),
            hint: "this command needs a tokenizer: tokenizer.json, vocab.txt (BERT) or vocab.json + merges.txt (GPT-2)".into(),
        })
    }

    /// Whether the model carries any head (its base-model tensors are then saved under the
    /// architecture's prefix, `bert.` / `electra.`, as transformers' task classes name them).
    pub fn has_head(&self) -> bool {
        self.mlm_head.is_some()
            || self.lm_head.is_some()
            || self.task.is_some()
            || self.rtd_head.is_some()
    }

    /// What head the model has, for messages: "a token-classification head (--task tag)".
    pub fn head_description(&self) -> String {
        if self.task.is_none() && self.rtd_head.is_some() {
            return "ELECTRA's replaced-token-detection head (a discriminator: fine-tune it with --task classify, tag or qa)".into();
        }
        match (&self.task, &self.mlm_head, &self.lm_head) {
            (Some(t), _, _) => match t.kind {
                HeadKind::Sequence => "a sequence-classification head (--task classify)".into(),
                HeadKind::Token => "a token-classification head (--task tag)".into(),
                HeadKind::Span => "an extractive-QA span head (--task qa)".into(),
            },
            (None, Some(_), _) => "a masked-LM head (kiln fill-mask, or --task seq2seq)".into(),
            (None, None, Some(_)) => "a causal-LM head (kiln generate, or --task seq2seq)".into(),
            (None, None, None) => "no head (a base model: kiln embed)".into(),
        }
    }

    /// Makes `linear` the fine-tuning head of `kind` for `labels`, with the dropout
    /// transformers puts before it, and drops the pre-training heads it replaces — and, for a
    /// token or span head, the pooler: BertForTokenClassification and BertForQuestionAnswering
    /// have none, and transformers warns about every unexpected tensor it finds.
    pub fn set_task_head(&mut self, kind: HeadKind, linear: Linear, labels: Labels) {
        if kind != HeadKind::Sequence {
            self.pooler = None;
        }
        let dropout = crate::heads::task::head_dropout(self.config(), kind);
        self.task = Some(TaskHead {
            kind,
            linear,
            labels,
            dropout,
        });
        self.mlm_head = None;
        self.lm_head = None;
        self.rtd_head = None;
    }
}

/// Loads the model directory `dir` (a transformers or sentence-transformers directory), or an
/// adapter directory (PEFT layout) together with the base model it names.
pub fn load(dir: &Path) -> Result<Pretrained> {
    if crate::peft::files::is_adapter_dir(dir) {
        let base = crate::peft::files::base_of(dir)?;
        let mut p = load(&base)?;
        crate::peft::files::load_adapter(&mut p, dir, "default")?;
        return Ok(p);
    }
    if !dir.is_dir() {
        return Err(Error::MissingFile {
            path: dir.to_path_buf(),
            hint: "expected a model directory holding config.json, model.safetensors and tokenizer.json".into(),
        });
    }
    let sentence = SentenceConfig::read(dir)?;
    // Old sentence-transformers layouts keep the transformer in a subfolder (`0_Transformer/`).
    let model_dir = match &sentence {
        Some(s) if !dir.join("config.json").exists() && s.transformer_path.is_some() => {
            dir.join(s.transformer_path.as_deref().unwrap_or(""))
        }
        _ => dir.to_path_buf(),
    };
    let config = ModelConfig::from_file(&model_dir.join("config.json"))?;
    let store = WeightStore::open_dir(&model_dir)?;
    let mut r = Reader {
        store: &store,
        names: config.arch.names(),
        arch: config.arch,
        dir: &model_dir,
        used: HashSet::new(),
    };
    let model = load_transformer(&mut r, &config)?;
    let h = config.hidden_size;
    let eps = config.layer_norm_eps as f32;

    let pooler = match r.names.pooler {
        Some(p) if r.find(&format!("{}.weight", p.module), p.in_base).is_some() => Some(Pooler {
            dense: r.linear(p.module, p.in_base, h, h)?,
            activation: p.activation,
        }),
        _ => None,
    };
    let mlm_head = match r.names.mlm {
        Some(m) if r.find(&format!("{}.weight", m.transform), false).is_some() => {
            // It maps back to the tables' width (ELECTRA's generator: embedding_size).
            let e = config.embedding_size;
            let transform = r.linear(m.transform, false, e, h)?;
            let norm = r.layer_norm(m.norm, false, e, eps)?;
            // The output bias, or (older checkpoints) the decoder's own bias.
            let decoder_bias = format!("{}.bias", m.decoder.trim_end_matches(".weight"));
            let bias = match r.find(m.bias, false) {
                Some(_) => r.tensor(m.bias, false, &[config.vocab_size])?,
                None => r.tensor(&decoder_bias, false, &[config.vocab_size])?,
            };
            let decoder = match r.find(m.decoder, false) {
                Some(_) => {
                    let d = r.tensor(m.decoder, false, &[config.vocab_size, e])?;
                    (!config.tie_word_embeddings).then_some(d)
                }
                None => None,
            };
            if let Some(b) = r.find(&decoder_bias, false) {
                r.used.insert(b);
            }
            Some(MlmHead {
                transform,
                activation: if m.gelu {
                    crate::engine::Activation::GeluErf
                } else {
                    config.activation
                },
                norm,
                decoder,
                bias,
            })
        }
        _ => None,
    };
    let rtd_head = match r.names.rtd {
        Some(m) if r.find(&format!("{m}.dense.weight"), false).is_some() => Some(RtdHead {
            dense: r.linear(&format!("{m}.dense"), false, h, h)?,
            activation: config.activation,
            prediction: r.linear(&format!("{m}.dense_prediction"), false, 1, h)?,
        }),
        _ => None,
    };
    let task = load_task_head(&mut r, &config)?;
    let lm_head = if matches!(config.arch, Arch::Gpt2 | Arch::Lstm) && task.is_none() {
        match r.find("lm_head.weight", false) {
            Some(_) => {
                let w = r.tensor("lm_head.weight", false, &[config.vocab_size, h])?;
                Some(LmHead {
                    weight: (!config.tie_word_embeddings).then_some(w),
                })
            }
            None if config.tie_word_embeddings => Some(LmHead { weight: None }),
            None => None,
        }
    } else {
        None
    };

    let ignored = r.names.ignored_suffixes;
    let unused_tensors: Vec<String> = store
        .names()
        .into_iter()
        .filter(|n| !r.used.contains(n) && !ignored.iter().any(|s| n.ends_with(s)))
        .collect();
    refuse_unused_own(r.names, &unused_tensors, &model_dir)?;
    let tokenizer = Tokenizer::from_dir(&model_dir)?;
    if let Some(t) = &tokenizer {
        // Ids past the embedding table would fail on the first input that has them.
        if t.vocab_size() > config.vocab_size {
            return Err(Error::Config {
                path: model_dir.join("config.json"),
                field: "vocab_size".into(),
                msg: format!(
                    "the tokenizer ({}) has {} tokens but the model only {} embeddings; they were not made for each other",
                    t.source().display(),
                    t.vocab_size(),
                    config.vocab_size
                ),
            });
        }
    }
    Ok(Pretrained {
        dir: dir.to_path_buf(),
        model,
        pooler,
        mlm_head,
        lm_head,
        rtd_head,
        task,
        tokenizer,
        sentence,
        unused_tensors,
        peft: None,
    })
}

/// Unused tensors of the base model's own modules (embeddings, blocks, final norm) mean that
/// config.json describes a smaller model than the weights (e.g. fewer layers): computing with
/// it would silently drop them. Heads of other tasks stay allowed (listed by `kiln info`).
fn refuse_unused_own(names: &NameTable, unused: &[String], dir: &Path) -> Result<()> {
    let module = |tensor: &'static str| tensor.rsplit_once('.').map_or(tensor, |(m, _)| m);
    let mut roots: Vec<&str> = vec![
        names.layer.trim_end_matches('.'),
        module(names.word_embeddings),
        module(names.position_embeddings),
    ];
    roots.extend(names.token_type_embeddings.map(module));
    roots.extend(names.embeddings_norm);
    roots.extend(names.final_norm);
    let own: Vec<&String> = unused
        .iter()
        .filter(|n| {
            let local = n.strip_prefix(names.base_prefix).unwrap_or(n);
            roots.iter().any(|r| {
                local
                    .strip_prefix(r)
                    .is_some_and(|rest| rest.starts_with('.'))
            })
        })
        .collect();
    if own.is_empty() {
        return Ok(());
    }
    // A block's tensors are named together: `bert.encoder.layer.2.*`.
    let mut groups: Vec<String> = Vec::new();
    for n in &own {
        let local = n.strip_prefix(names.base_prefix).unwrap_or(n);
        let g = match local.strip_prefix(names.layer) {
            Some(rest) => {
                let block = rest.split('.').next().unwrap_or("");
                format!("{}{block}.*", &n[..n.len() - rest.len()])
            }
            None => n.to_string(),
        };
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    let mut shown: Vec<String> = groups.iter().take(6).cloned().collect();
    if groups.len() > 6 {
        shown.push(format!("and {} more", groups.len() - 6));
    }
    Err(Error::Config {
        path: dir.join("config.json"),
        field: "num_hidden_layers / sizes".into(),
        msg: format!(
            "the weights hold {} tensor(s) of the model's own layers that this config does not use ({}); the config does not match the weights",
            own.len(),
            shown.join(", ")
        ),
    })
}

/// The fine-tuning head named by `architectures` in config.json, when its weights are there.
fn load_task_head(r: &mut Reader<'_>, config: &ModelConfig) -> Result<Option<TaskHead>> {
    let kind = config.raw["architectures"]
        .as_array()
        .and_then(|a| a.first())
        .and_then(|n| n.as_str())
        .and_then(HeadKind::from_architecture);
    let Some(kind) = kind else {
        return Ok(None);
    };
    let module = kind.module(config.arch);
    // A pooler of the classification head itself (RoBERTa's `classifier.dense`) comes with it.
    let wname = format!("{module}.weight");
    let Some(found) = r.find(&wname, false) else {
        return Ok(None);
    };
    let shape = r.store.shape(&found).unwrap_or(&[]).to_vec();
    let h = config.hidden_size;
    if shape.len() != 2 || shape[1] != h {
        return Err(Error::TensorShape {
            path: r.store.path_of(&found).to_path_buf(),
            name: found,
            found: shape,
            expected: vec![0, h],
        });
    }
    let outputs = shape[0];
    // Task heads are nn.Linear even in GPT-2 (no Conv1D transpose).
    let weight = r.tensor(&wname, false, &[outputs, h])?;
    let bname = format!("{module}.bias");
    let bias = match r.find(&bname, false) {
        Some(_) => Some(r.tensor(&bname, false, &[outputs])?),
        None => None,
    };
    let labels = match kind {
        HeadKind::Span => Labels {
            names: vec!["start".into(), "end".into()],
            regression: false,
            integer: false,
        },
        _ => Labels::from_config(&config.raw).unwrap_or(Labels {
            names: (0..outputs).map(|i| format!("LABEL_{i}")).collect(),
            regression: false,
            integer: false,
        }),
    };
    let dropout = crate::heads::task::head_dropout(config, kind);
    let head = TaskHead {
        kind,
        linear: Linear::new(weight, bias),
        labels,
        dropout,
    };
    head.check().map_err(|e| Error::Config {
        path: r.dir.join("config.json"),
        field: "id2label".into(),
        msg: e.to_string(),
    })?;
    Ok(Some(head))
}

fn load_transformer(r: &mut Reader<'_>, cfg: &ModelConfig) -> Result<Transformer> {
    if let Some(shape) = &cfg.lstm {
        return load_lstm(r, cfg, shape);
    }
    let n = r.names;
    let h = cfg.hidden_size;
    let eps = cfg.layer_norm_eps as f32;
    // The tables are `embedding_size` wide (the hidden width but for ELECTRA).
    let e = cfg.embedding_size;
    let embeddings = Embeddings {
        word: r.table(n.word_embeddings, cfg.vocab_size, e)?,
        position: r.tensor(n.position_embeddings, true, &[cfg.position_rows(), e])?,
        token_type: match n.token_type_embeddings {
            Some(name) if cfg.type_vocab_size > 0 => {
                Some(r.tensor(name, true, &[cfg.type_vocab_size, e])?)
            }
            _ => None,
        },
        norm: match n.embeddings_norm {
            Some(m) => Some(r.layer_norm(m, true, e, eps)?),
            None => None,
        },
        project: match n.embeddings_project {
            Some(m) if e != h || n.always_project => Some(r.linear(m, true, h, e)?),
            _ => None,
        },
    };
    let mut blocks = Vec::with_capacity(cfg.num_blocks());
    for l in 0..cfg.num_blocks() {
        let p = n.block(l, cfg);
        // A pruned block is narrower: its own heads and feed-forward width.
        let (w, i) = (cfg.attention_width_at(l), cfg.intermediate_at(l));
        let qkv = match n.qkv {
            QkvNames::Separate(names) => {
                let parts = names
                    .iter()
                    .map(|m| r.linear(&format!("{p}{m}"), true, w, h))
                    .collect::<Result<Vec<_>>>()?;
                fuse_rows(&parts)?
            }
            QkvNames::Fused(m) => r.linear(&format!("{p}{m}"), true, 3 * w, h)?,
        };
        blocks.push(Block {
            qkv,
            attn_out: r.linear(&format!("{p}{}", n.attn_out), true, h, w)?,
            ln_attn: r.layer_norm(&format!("{p}{}", n.ln_attn), true, h, eps)?,
            ffn_in: r.linear(&format!("{p}{}", n.ffn_in), true, i, h)?,
            ffn_out: r.linear(&format!("{p}{}", n.ffn_out), true, h, i)?,
            ln_ffn: r.layer_norm(&format!("{p}{}", n.ln_ffn), true, h, eps)?,
            adapter_attn: None,
            adapter_ffn: None,
        });
    }
    let final_norm = match n.final_norm {
        Some(m) if cfg.final_norm => Some(r.layer_norm(m, true, h, eps)?),
        _ => None,
    };
    Ok(Transformer {
        config: cfg.clone(),
        embeddings,
        blocks,
        final_norm,
        lstm: None,
    })
}

/// An LSTM backbone: its embedding table and every layer's `nn.LSTM` and projection, under the
/// names `docs/lstm.md` lists.
fn load_lstm(r: &mut Reader<'_>, cfg: &ModelConfig, shape: &LstmShape) -> Result<Transformer> {
    use crate::model::arch::lstm::{direction_names, layer_prefix};
    let (h, p) = (shape.hidden, shape.proj);
    let embeddings = Embeddings {
        word: r.table(r.names.word_embeddings, cfg.vocab_size, p)?,
        position: Tensor::zeros(&[0, p]),
        token_type: None,
        norm: None,
        project: None,
    };
    let mut direction = |l: usize, d: usize| -> Result<LstmDirection> {
        let (suffix, proj) = direction_names(d);
        let pre = layer_prefix(l);
        let mut t = |name: &str, shape: &[usize]| {
            r.tensor(&format!("{pre}lstm.{name}{suffix}"), true, shape)
        };
        let cell = LstmCell {
            w_ih: t("weight_ih", &[4 * h, p])?,
            w_hh: t("weight_hh", &[4 * h, h])?,
            b_ih: t("bias_ih", &[4 * h])?,
            b_hh: t("bias_hh", &[4 * h])?,
        };
        Ok(LstmDirection {
            cell,
            proj: r.linear(&format!("{pre}{proj}"), true, p, h)?,
        })
    };
    let layers = (0..shape.layers)
        .map(|l| {
            Ok(LstmLayer {
                forward: direction(l, 0)?,
                backward: if shape.bidirectional {
                    Some(direction(l, 1)?)
                } else {
                    None
                },
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Transformer {
        config: cfg.clone(),
        embeddings,
        blocks: Vec::new(),
        final_norm: None,
        lstm: Some(Lstm {
            shape: shape.clone(),
            layers,
        }),
    })
}

/// Stacks linears that share an input into one (q, k, v -> qkv) so one GEMM computes them all.
pub(crate) fn fuse_rows(parts: &[Linear]) -> Result<Linear> {
    let bias = if parts.iter().all(|l| l.bias.is_some()) {
        let b: Vec<f32> = parts
            .iter()
            .flat_map(|l| l.bias.as_ref().map_or(&[][..], |b| b.data()).to_vec())
            .collect();
        Some(Tensor::new(vec![b.len()], b)?)
    } else {
        None
    };
    let int8: Vec<&Int8Weight> = parts.iter().filter_map(|l| l.int8.as_ref()).collect();
    // Parts fuse in int8 when they all are, with one smoothing (they share their input).
    if int8.len() == parts.len() && int8.iter().all(|q| q.smooth == int8[0].smooth) {
        let q = int8;
        let k = q[0].in_features();
        if q.iter().any(|w| w.in_features() != k) {
            return Err(Error::shape("fuse_rows", "int8 parts of different widths"));
        }
        let n = q.iter().map(|w| w.out_features()).sum();
        let data = q.iter().flat_map(|w| w.data.iter().copied()).collect();
        let scale = q.iter().flat_map(|w| w.scale.iter().copied()).collect();
        return Ok(Linear::quantized(
            Int8Weight::from_parts(data, scale, n, k).with_smooth(q[0].smooth.clone()),
            bias,
        ));
    }
    // f32 (or mixed: any int8 part dequantized).
    let w: Vec<std::borrow::Cow<Tensor>> = parts.iter().map(|l| l.f32_weight()).collect();
    let w: Vec<&Tensor> = w.iter().map(|c| c.as_ref()).collect();
    Ok(Linear::new(Tensor::concat_rows(&w)?, bias))
}

/// Resolves Kiln's slot names to the tensors present in a checkpoint.
struct Reader<'a> {
    store: &'a WeightStore,
    names: &'static NameTable,
    arch: Arch,
    dir: &'a Path,
    used: HashSet<String>,
}

impl Reader<'_> {
    /// The names a tensor may have: with and without the base-model prefix, and the legacy
    /// `gamma`/`beta` spellings of LayerNorm parameters.
    fn candidates(&self, name: &str, base: bool) -> Vec<String> {
        let forms = if base {
            vec![
                format!("{}{name}", self.names.base_prefix),
                name.to_string(),
            ]
        } else {
            vec![name.to_string()]
        };
        let mut out = Vec::new();
        for f in forms {
            out.push(f.clone());
            if let Some(s) = f.strip_suffix(".weight") {
                out.push(format!("{s}.gamma"));
            } else if let Some(s) = f.strip_suffix(".bias") {
                out.push(format!("{s}.beta"));
            }
        }
        out
    }

    fn find(&self, name: &str, base: bool) -> Option<String> {
        self.candidates(name, base)
            .into_iter()
            .find(|c| self.store.contains(c))
    }

    fn tensor(&mut self, name: &str, base: bool, shape: &[usize]) -> Result<Tensor> {
        let Some(found) = self.find(name, base) else {
            let tried = self.candidates(name, base);
            return Err(Error::MissingTensor {
                path: self.weights_path(),
                name: tried[0].clone(),
                tried: tried[1..].join(", "),
                arch: self.arch.model_type().into(),
            });
        };
        let stored = self.store.shape(&found).unwrap_or(&[]).to_vec();
        if stored != shape {
            return Err(Error::TensorShape {
                path: self.store.path_of(&found).to_path_buf(),
                name: found,
                found: stored,
                expected: shape.to_vec(),
            });
        }
        let t = self.store.get(&found)?;
        self.used.insert(found);
        Ok(t)
    }

    /// A linear layer `[out, in]`; Conv1D checkpoints store `[in, out]` and are transposed here.
    /// A quantized layer (`module.weight_scale` present) is int8 `[out, in]` in every
    /// architecture.
    fn linear(&mut self, module: &str, base: bool, out: usize, inp: usize) -> Result<Linear> {
        let bias = match self.find(&format!("{module}.bias"), base) {
            Some(_) => Some(self.tensor(&format!("{module}.bias"), base, &[out])?),
            None => None,
        };
        if self.find(&format!("{module}.weight_scale"), base).is_some() {
            let scale = self.tensor(&format!("{module}.weight_scale"), base, &[out])?;
            let Some(wname) = self.find(&format!("{module}.weight"), base) else {
                return Err(Error::MissingTensor {
                    path: self.weights_path(),
                    name: format!("{module}.weight"),
                    tried: "an int8 weight beside its weight_scale".into(),
                    arch: self.arch.model_type().into(),
                });
            };
            let data = self.store.get_i8(&wname, &[out, inp])?;
            self.used.insert(wname);
            let smooth = match self.find(&format!("{module}.input_smooth"), base) {
                Some(_) => Some(
                    self.tensor(&format!("{module}.input_smooth"), base, &[inp])?
                        .into_data(),
                ),
                None => None,
            };
            return Ok(Linear::quantized(
                Int8Weight::from_parts(data, scale.into_data(), out, inp).with_smooth(smooth),
                bias,
            ));
        }
        let weight = if self.names.conv1d {
            self.tensor(&format!("{module}.weight"), base, &[inp, out])?
                .transpose2d()?
        } else {
            self.tensor(&format!("{module}.weight"), base, &[out, inp])?
        };
        Ok(Linear::new(weight, bias))
    }

    /// An embedding table `[rows, h]` (base model), as a bias-free layer: f32, or int8 with
    /// `<name>_scale` (`...weight_scale`, a scale per row) beside it. Never Conv1D-transposed.
    fn table(&mut self, name: &str, rows: usize, h: usize) -> Result<Linear> {
        let scale_name = format!("{name}_scale");
        if let Some(found_scale) = self.find(&scale_name, true) {
            let scale = self.tensor(&scale_name, true, &[rows])?;
            let wname = found_scale.trim_end_matches("_scale").to_string();
            let data = self.store.get_i8(&wname, &[rows, h])?;
            self.used.insert(wname);
            return Ok(Linear::quantized(
                Int8Weight::from_parts(data, scale.into_data(), rows, h),
                None,
            ));
        }
        Ok(Linear::new(self.tensor(name, true, &[rows, h])?, None))
    }

    fn layer_norm(&mut self, module: &str, base: bool, h: usize, eps: f32) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: self.tensor(&format!("{module}.weight"), base, &[h])?,
            bias: self.tensor(&format!("{module}.bias"), base, &[h])?,
            eps,
        })
    }

    fn weights_path(&self) -> PathBuf {
        let single = self.dir.join("model.safetensors");
        if single.exists() {
            single
        } else {
            self.dir.join("model.safetensors.index.json")
        }
    }
}

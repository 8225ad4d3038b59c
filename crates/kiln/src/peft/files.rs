//! Adapter directories in PEFT's layout: `adapter_config.json` and `adapter_model.safetensors`
//! holding only what was trained, under the names PEFT's `save_pretrained` writes
//! (`base_model.model.<module>.lora_A.weight`, the task head and other trained base tensors as
//! `base_model.model.<tensor name>`). Bottleneck adapters use the same layout with
//! `peft_type: "BOTTLENECK"` (Kiln's own; see docs/peft.md). Kiln adds `task_head.json`: the
//! head's labels (`id2label`, ...), which PEFT does not keep.

use super::bottleneck::Bottleneck;
use super::lora::Lora;
use super::targets::{adapter_module, linear, linear_mut, lora_sites, matches, module_prefix};
use super::{put_parts, stash_active, Method, PeftConfig, PeftState, Placement};
use crate::checkpoint::weights::write_safetensors;
use crate::checkpoint::{atomic_write, read_json, Pretrained, SaveDtype, WeightStore};
use crate::engine::{Activation, Linear, Tensor};
use crate::error::{Error, Result};
use crate::heads::{HeadKind, Labels, Pooler, TaskHead};
use crate::model::arch::{Arch, QkvNames};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// The adapter's settings file.
pub const CONFIG: &str = "adapter_config.json";
/// The adapter's tensors.
pub const WEIGHTS: &str = "adapter_model.safetensors";
/// Kiln's record of the task head's labels.
pub const HEAD: &str = "task_head.json";
/// PEFT's prefix of every tensor name.
const PREFIX: &str = "base_model.model.";

/// Whether `dir` is an adapter directory (rather than a model directory).
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(CONFIG).is_file() && !dir.join("config.json").is_file()
}

/// PEFT's task type for the model's head.
fn task_type(p: &Pretrained) -> &'static str {
    match p.task.as_ref().map(|t| t.kind) {
        Some(HeadKind::Sequence) => "SEQ_CLS",
        Some(HeadKind::Token) => "TOKEN_CLS",
        Some(HeadKind::Span) => "QUESTION_ANS",
        None if p.lm_head.is_some() => "CAUSAL_LM",
        None => "FEATURE_EXTRACTION",
    }
}

/// What kind of base tensor a `train_extra` word selects, by Hugging Face name (`pooler`: the
/// pooler module of the architecture, e.g. `bert.pooler.dense`, RoBERTa's `classifier.dense`,
/// DistilBERT's `pre_classifier`).
fn extra_selects(word: &str, name: &str, arch: Arch, prefix: &str) -> bool {
    match word {
        "bias" => name.ends_with(".bias"),
        "layernorm" => crate::train::optim::is_norm(name),
        "pooler" => arch
            .names()
            .pooler
            .is_some_and(|pn| name.starts_with(&format!("{}.", pn.path(prefix)))),
        _ => false,
    }
}

/// The name PEFT's `modules_to_save` gives a head module: its top module (RoBERTa's and
/// ELECTRA's `classifier`, which holds `dense` and `out_proj`; PEFT saves it whole).
fn top_module(module: &str) -> String {
    module.split('.').next().unwrap_or(module).to_string()
}

/// The module names PEFT's `modules_to_save` needs for the extras (besides the task head).
fn extra_modules(arch: Arch, extras: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for e in extras {
        match (e.as_str(), arch) {
            ("layernorm", Arch::Bert | Arch::Roberta | Arch::Electra | Arch::Albert) => {
                out.push("LayerNorm".to_string())
            }
            ("layernorm", Arch::DistilBert) => {
                out.extend(["sa_layer_norm", "output_layer_norm", "LayerNorm"].map(String::from));
            }
            ("layernorm", Arch::Gpt2) => {
                out.extend(["ln_1", "ln_2", "ln_f"].map(String::from));
            }
            ("pooler", _) => match arch.names().pooler {
                Some(pn) if !pn.in_base => out.push(top_module(pn.module)),
                _ => out.push("pooler".to_string()),
            },
            _ => {}
        }
    }
    out
}

/// The tensors an adapter file holds, under PEFT's names: the LoRA / adapter weights of `p`,
/// its task head, and the base tensors `extras` selects. Also names a gradient container
/// ([`crate::train::backprop::zeros_like`]) the same way.
pub fn adapter_tensors(p: &Pretrained, extras: &[String]) -> Result<BTreeMap<String, Tensor>> {
    let arch = p.config().arch;
    let mut tensors = BTreeMap::new();
    for s in lora_sites(p) {
        if let Some(l) = linear(p, &s) {
            for piece in l.lora.iter().filter(|x| x.offset == s.offset) {
                tensors.insert(
                    format!("{PREFIX}{}.lora_A.weight", s.module),
                    piece.a.clone(),
                );
                tensors.insert(
                    format!("{PREFIX}{}.lora_B.weight", s.module),
                    piece.b.clone(),
                );
            }
        }
    }
    for (i, b) in p.model.blocks.iter().enumerate() {
        for (ad, after_ffn) in [(&b.adapter_attn, false), (&b.adapter_ffn, true)] {
            if let Some(a) = ad {
                let m = adapter_module(p, i, after_ffn);
                put_linear(&mut tensors, &format!("{PREFIX}{m}.down"), &a.down);
                put_linear(&mut tensors, &format!("{PREFIX}{m}.up"), &a.up);
            }
        }
    }
    if let Some(t) = &p.task {
        let m = t.kind.module(arch);
        put_linear(&mut tensors, &format!("{PREFIX}{m}"), &t.linear);
    }
    if !extras.is_empty() {
        let head = p.task.as_ref().map(|t| t.kind.module(arch));
        let prefix = crate::peft::targets::module_prefix(p);
        for (name, t) in crate::checkpoint::named_tensors(p)? {
            let is_head = head.is_some_and(|h| name.starts_with(&format!("{h}.")));
            if !is_head && extras.iter().any(|e| extra_selects(e, &name, arch, prefix)) {
                tensors.insert(format!("{PREFIX}{name}"), t);
            }
        }
    }
    Ok(tensors)
}

/// Saves the active adapter of `p` (only its trained tensors) into `dir`; every file atomic.
pub fn save_adapter(p: &Pretrained, dir: &Path) -> Result<()> {
    let st = p
        .peft
        .as_ref()
        .ok_or_else(|| Error::Input("the model carries no adapter to save".into()))?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    let arch = p.config().arch;
    let extras = &st.config.train_extra;
    let tensors = adapter_tensors(p, extras)?;
    write_safetensors(&dir.join(WEIGHTS), &tensors, SaveDtype::F32)?;
    let mut modules_to_save: Vec<String> = Vec::new();
    if let Some(t) = &p.task {
        modules_to_save.push(top_module(t.kind.module(arch)));
    }
    for m in extra_modules(arch, extras) {
        if !modules_to_save.contains(&m) {
            modules_to_save.push(m);
        }
    }

    let base = st.base.display().to_string();
    let c = &st.config;
    let modules = if modules_to_save.is_empty() {
        serde_json::Value::Null
    } else {
        modules_to_save.into()
    };
    let bias = if extras.iter().any(|e| e == "bias") {
        "all"
    } else {
        "none"
    };
    let config = match c.method {
        Method::Lora => serde_json::json!({
            "peft_type": "LORA",
            "task_type": task_type(p),
            "base_model_name_or_path": base,
            "r": c.lora_r,
            "lora_alpha": c.lora_alpha,
            "lora_dropout": c.lora_dropout,
            "target_modules": c.lora_targets,
            "modules_to_save": modules,
            "bias": bias,
            "fan_in_fan_out": arch.names().conv1d,
            "inference_mode": true,
            "init_lora_weights": true,
            "use_rslora": st.rslora,
            "use_dora": false,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "revision": null,
        }),
        _ => serde_json::json!({
            "peft_type": "BOTTLENECK",
            "kiln_layout": 1,
            "task_type": task_type(p),
            "base_model_name_or_path": base,
            "adapter_size": c.adapter_size,
            "placement": c.adapter_placement,
            "non_linearity": c.adapter_activation,
            "modules_to_save": modules,
            "bias": bias,
            "train_extra": c.train_extra,
        }),
    };
    write_json(&dir.join(CONFIG), &config)?;
    if let Some(t) = &p.task {
        let mut head = serde_json::json!({
            "architectures": [crate::checkpoint::save::architecture_name(p)],
        });
        if t.kind != HeadKind::Span {
            t.labels.write(&mut head);
        }
        write_json(&dir.join(HEAD), &head)?;
    }
    Ok(())
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    atomic_write(path, text.as_bytes())
}

fn put_linear(out: &mut BTreeMap<String, Tensor>, module: &str, l: &Linear) {
    out.insert(format!("{module}.weight"), l.weight.clone());
    if let Some(b) = &l.bias {
        out.insert(format!("{module}.bias"), b.clone());
    }
}

/// The base model directory an adapter names (`base_model_name_or_path`): as given, or
/// relative to the adapter's parent directory.
pub fn base_of(dir: &Path) -> Result<PathBuf> {
    let path = dir.join(CONFIG);
    let raw = read_json(&path)?;
    let given = raw["base_model_name_or_path"].as_str().unwrap_or("");
    let candidates = [
        PathBuf::from(given),
        dir.parent().unwrap_or(Path::new(".")).join(given),
    ];
    candidates
        .into_iter()
        .find(|c| !given.is_empty() && c.join("config.json").is_file())
        .ok_or_else(|| Error::Config {
            path,
            field: "base_model_name_or_path".into(),
            msg: format!(
                "\"{given}\" is not a local model directory; give the base model with --model"
            ),
        })
}

/// Reads the adapter in `dir` into `p` as the adapter `name` and makes it active; adapters
/// loaded before stay loaded (see [`super::use_adapter`]).
pub fn load_adapter(p: &mut Pretrained, dir: &Path, name: &str) -> Result<()> {
    let cfg_path = dir.join(CONFIG);
    if !cfg_path.is_file() {
        return Err(Error::MissingFile {
            path: cfg_path,
            hint: "an adapter directory holds adapter_config.json and adapter_model.safetensors"
                .into(),
        });
    }
    let raw = read_json(&cfg_path)?;
    let field_err = |field: &str, msg: String| Error::Config {
        path: cfg_path.clone(),
        field: field.into(),
        msg,
    };
    let method = match raw["peft_type"].as_str() {
        Some("LORA") => Method::Lora,
        Some("BOTTLENECK") => Method::Adapter,
        other => {
            return Err(field_err(
                "peft_type",
                format!("{other:?}: Kiln reads LORA and BOTTLENECK adapters"),
            ))
        }
    };
    for flag in ["use_dora", "lora_bias"] {
        if raw[flag].as_bool() == Some(true) {
            return Err(field_err(flag, "is not supported by Kiln".into()));
        }
    }
    if let Some(prior) = &p.peft {
        if prior.name == name || prior.stash.contains_key(name) {
            return Err(Error::Input(format!(
                "an adapter named \"{name}\" is already loaded"
            )));
        }
    }
    let store = WeightStore::open_files(&[dir.join(WEIGHTS)])?;
    let prior = stash_active(p);
    let result = install(p, dir, &raw, method, &store);
    match result {
        Ok(mut st) => {
            st.name = name.to_string();
            if let Some((mut old, parts)) = prior {
                if !old.config.train_extra.is_empty() || !st.config.train_extra.is_empty() {
                    return Err(Error::Input(format!(
                        "{}: adapters that also train base tensors (bias, layernorm, pooler) cannot share a base model with other adapters; load it alone",
                        dir.display()
                    )));
                }
                st.stash.append(&mut old.stash);
                st.stash.insert(old.name.clone(), parts);
            }
            p.peft = Some(st);
            Ok(())
        }
        Err(e) => {
            if let Some((old, parts)) = prior {
                put_parts(p, parts);
                p.peft = Some(old);
            }
            Err(for_another_base(e, dir, p.config().hidden_size))
        }
    }
}

/// A tensor of the wrong shape usually means an adapter made for another base model: say so,
/// with the hidden size it was made for when the differing dimension is the base's width.
fn for_another_base(e: Error, dir: &Path, hidden: usize) -> Error {
    let Error::TensorShape {
        name,
        found,
        expected,
        ..
    } = &e
    else {
        return e;
    };
    let differs = found
        .iter()
        .zip(expected)
        .find(|(f, &x)| **f != x && x == hidden);
    let why = match differs {
        Some((f, _)) => {
            format!("made for a base with hidden size {f}, this base has {hidden}")
        }
        None => format!("made for another base model (tensor `{name}` has shape {found:?}, this base needs {expected:?})"),
    };
    Error::Input(format!(
        "adapter {} was {why}; give the base model it was trained on with --model",
        dir.display()
    ))
}

/// Finds an adapter tensor by its name relative to the base model (`encoder.layer.0...`),
/// with or without the base-model prefix (PEFT names it after the class it wrapped).
fn find(store: &WeightStore, base_prefix: &str, rel: &str) -> Option<String> {
    [
        format!("{PREFIX}{base_prefix}{rel}"),
        format!("{PREFIX}{rel}"),
    ]
    .into_iter()
    .find(|k| store.contains(k))
}

fn get(
    store: &WeightStore,
    used: &mut HashSet<String>,
    key: &str,
    shape: &[usize],
) -> Result<Tensor> {
    let t = store.get(key)?;
    if t.shape() != shape {
        return Err(Error::TensorShape {
            path: store.path_of(key).to_path_buf(),
            name: key.into(),
            found: t.shape().to_vec(),
            expected: shape.to_vec(),
        });
    }
    used.insert(key.to_string());
    Ok(t)
}

fn install(
    p: &mut Pretrained,
    dir: &Path,
    raw: &serde_json::Value,
    method: Method,
    store: &WeightStore,
) -> Result<PeftState> {
    let arch = p.config().arch;
    let base_prefix = arch.names().base_prefix;
    let wpath = dir.join(WEIGHTS);
    let mut used = HashSet::new();
    let strings = |v: &serde_json::Value| -> Vec<String> {
        match v {
            serde_json::Value::String(s) => vec![s.clone()],
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect(),
            _ => Vec::new(),
        }
    };
    let modules_to_save = strings(&raw["modules_to_save"]);
    let mut train_extra = Vec::new();
    if raw["bias"].as_str().is_some_and(|b| b != "none") {
        train_extra.push("bias".to_string());
    }
    if modules_to_save
        .iter()
        .any(|m| ["LayerNorm", "ln_1", "ln_2", "ln_f"].contains(&m.as_str()))
    {
        train_extra.push("layernorm".to_string());
    }
    // The pooler: BERT's and ALBERT's `pooler`, or the head module that holds it (RoBERTa's
    // and ELECTRA's `classifier`, DistilBERT's `pre_classifier`: PEFT saves them whole).
    let pooler_module = arch.names().pooler.map(|pn| match pn.in_base {
        true => "pooler".to_string(),
        false => top_module(pn.module),
    });
    // PEFT matches `modules_to_save` by suffix: its default `classifier` also takes
    // DistilBERT's `pre_classifier`.
    if pooler_module.is_some_and(|pm| modules_to_save.iter().any(|m| pm.ends_with(m.as_str()))) {
        train_extra.push("pooler".to_string());
    }
    let mut config = PeftConfig {
        method,
        train_extra,
        ..PeftConfig::default()
    };
    let rslora = raw["use_rslora"].as_bool().unwrap_or(false);

    // The task head first: it decides the module names' prefix of what follows.
    let kind = match raw["task_type"].as_str() {
        Some("SEQ_CLS") => Some(HeadKind::Sequence),
        Some("TOKEN_CLS") => Some(HeadKind::Token),
        Some("QUESTION_ANS") => Some(HeadKind::Span),
        _ => None,
    };
    if let Some(kind) = kind {
        let module = kind.module(arch);
        let wkey = format!("{PREFIX}{module}.weight");
        if store.contains(&wkey) {
            let shape = store.shape(&wkey).unwrap_or(&[]).to_vec();
            let h = p.config().hidden_size;
            if shape.len() != 2 || shape[1] != h {
                return Err(Error::TensorShape {
                    path: wpath.clone(),
                    name: wkey,
                    found: shape,
                    expected: vec![0, h],
                });
            }
            let weight = get(store, &mut used, &wkey, &shape)?;
            let bkey = format!("{PREFIX}{module}.bias");
            let bias = if store.contains(&bkey) {
                Some(get(store, &mut used, &bkey, &[shape[0]])?)
            } else {
                None
            };
            let head_path = dir.join(HEAD);
            let labels = if kind == HeadKind::Span {
                Some(Labels {
                    names: vec!["start".into(), "end".into()],
                    regression: false,
                    integer: false,
                })
            } else if head_path.is_file() {
                Labels::from_config(&read_json(&head_path)?)
            } else {
                Labels::from_config(&p.config().raw)
            };
            let labels = labels
                .filter(|l| l.outputs() == shape[0] || kind == HeadKind::Span)
                .unwrap_or(Labels {
                    names: (0..shape[0]).map(|i| format!("LABEL_{i}")).collect(),
                    regression: false,
                    integer: false,
                });
            let head = TaskHead {
                kind,
                linear: Linear::new(weight, bias),
                labels,
                dropout: crate::heads::task::head_dropout(p.config(), kind),
            };
            head.check().map_err(|e| Error::Config {
                path: head_path.clone(),
                field: "id2label".into(),
                msg: e.to_string(),
            })?;
            p.task = Some(head);
            p.mlm_head = None;
            p.lm_head = None;
            p.rtd_head = None;
            // The base model's own pooler (BERT's `pooler.dense`, ALBERT's `pooler`), absent
            // from a masked-LM base: one trained with the adapter (modules_to_save) fills it in
            // below.
            let base_pooler = arch.names().pooler.filter(|n| n.in_base);
            if let (HeadKind::Sequence, Some(pn), None) = (kind, base_pooler, &p.pooler) {
                let h = p.config().hidden_size;
                p.pooler = Some(Pooler {
                    dense: Linear::new(Tensor::zeros(&[h, h]), Some(Tensor::zeros(&[h]))),
                    activation: pn.activation,
                });
                let weight = format!("{}.weight", pn.module);
                let key = find(store, base_prefix, &weight);
                if key.is_none() {
                    return Err(Error::MissingTensor {
                        path: wpath,
                        name: format!("{PREFIX}{base_prefix}{weight}"),
                        tried: "the base model has no pooler either".into(),
                        arch: arch.model_type().into(),
                    });
                }
            }
        }
    }
    let prefix = module_prefix(p);

    match method {
        Method::Lora => {
            let alpha = raw["lora_alpha"].as_f64().unwrap_or(8.0) as f32;
            let dropout = raw["lora_dropout"].as_f64().unwrap_or(0.0) as f32;
            let alpha_pattern = raw["alpha_pattern"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            let mut r_seen = None;
            for s in lora_sites(p) {
                let rel = s
                    .module
                    .strip_prefix(prefix)
                    .unwrap_or(&s.module)
                    .to_string();
                let ka = find(store, base_prefix, &format!("{rel}.lora_A.weight"));
                let kb = find(store, base_prefix, &format!("{rel}.lora_B.weight"));
                let (ka, kb) = match (ka, kb) {
                    (None, None) => continue,
                    (Some(a), Some(b)) => (a, b),
                    (a, _) => {
                        return Err(Error::MissingTensor {
                            path: wpath.clone(),
                            name: format!(
                                "{PREFIX}{rel}.{}",
                                if a.is_some() {
                                    "lora_B.weight"
                                } else {
                                    "lora_A.weight"
                                }
                            ),
                            tried: "LoRA needs both A and B".into(),
                            arch: arch.model_type().into(),
                        })
                    }
                };
                let inp = linear(p, &s).map_or(0, |l| l.in_features());
                let r = store
                    .shape(&ka)
                    .and_then(|sh| sh.first().copied())
                    .unwrap_or(0);
                let a = get(store, &mut used, &ka, &[r, inp])?;
                let b = get(store, &mut used, &kb, &[s.len, r])?;
                let alpha = alpha_pattern
                    .iter()
                    .find(|(k, _)| matches(k, &s.module))
                    .and_then(|(_, v)| v.as_f64())
                    .map_or(alpha, |v| v as f32);
                let scale = if rslora {
                    alpha / (r as f32).sqrt()
                } else {
                    alpha / r as f32
                };
                r_seen.get_or_insert(r);
                if let Some(l) = linear_mut(p, &s) {
                    l.lora.push(Lora {
                        a,
                        b,
                        scale,
                        dropout,
                        offset: s.offset,
                        merged: false,
                    });
                }
            }
            config.lora_r = raw["r"]
                .as_u64()
                .map_or(r_seen.unwrap_or(8), |r| r as usize);
            config.lora_alpha = alpha;
            config.lora_dropout = dropout;
            config.lora_targets = strings(&raw["target_modules"]);
        }
        Method::Adapter => {
            config.adapter_size = raw["adapter_size"].as_u64().unwrap_or(64) as usize;
            config.adapter_placement = match raw["placement"].as_str() {
                Some("pfeiffer") => Placement::Pfeiffer,
                _ => Placement::Houlsby,
            };
            config.adapter_activation = raw["non_linearity"].as_str().unwrap_or("relu").into();
            let act =
                Activation::from_hf(&config.adapter_activation).ok_or_else(|| Error::Config {
                    path: dir.join(CONFIG),
                    field: "non_linearity".into(),
                    msg: format!("\"{}\" (relu, gelu, gelu_new)", config.adapter_activation),
                })?;
            let h = p.config().hidden_size;
            let m = config.adapter_size;
            for i in 0..p.model.blocks.len() {
                for after_ffn in [false, true] {
                    let module = adapter_module(p, i, after_ffn);
                    let rel = module.strip_prefix(prefix).unwrap_or(&module).to_string();
                    let Some(kd) = find(store, base_prefix, &format!("{rel}.down.weight")) else {
                        continue;
                    };
                    let key = |s: &str| format!("{}{s}", kd.trim_end_matches("down.weight"));
                    let ad = Bottleneck {
                        down: Linear::new(
                            get(store, &mut used, &kd, &[m, h])?,
                            Some(get(store, &mut used, &key("down.bias"), &[m])?),
                        ),
                        up: Linear::new(
                            get(store, &mut used, &key("up.weight"), &[h, m])?,
                            Some(get(store, &mut used, &key("up.bias"), &[h])?),
                        ),
                        activation: act,
                    };
                    let b = &mut p.model.blocks[i];
                    if after_ffn {
                        b.adapter_ffn = Some(ad);
                    } else {
                        b.adapter_attn = Some(ad);
                    }
                }
            }
        }
        Method::Full => {}
    }

    // Trained base tensors (biases, norms, pooler).
    let mut rest: Vec<String> = store
        .names()
        .into_iter()
        .filter(|k| !used.contains(k))
        .collect();
    if !rest.is_empty() {
        let mut slots = extra_slots(p);
        rest.retain(|k| {
            let rel = k.strip_prefix(PREFIX).unwrap_or(k);
            let alt = rel.strip_prefix(base_prefix).unwrap_or(rel);
            match slots.iter_mut().find(|(n, _)| {
                let n_rel = n.strip_prefix(base_prefix).unwrap_or(n);
                n_rel == alt
            }) {
                Some((_, dst)) => match store.get(k) {
                    Ok(t) if t.numel() == dst.len() => {
                        dst.copy_from_slice(t.data());
                        false
                    }
                    _ => true,
                },
                None => true,
            }
        });
        for b in &mut p.model.blocks {
            for l in [&mut b.qkv, &mut b.attn_out, &mut b.ffn_in, &mut b.ffn_out] {
                l.weights_changed();
            }
        }
        if let Some(pl) = &mut p.pooler {
            pl.dense.weights_changed();
        }
    }
    if let Some(k) = rest.first() {
        return Err(Error::Input(format!(
            "{}: tensor `{k}` is neither a LoRA/adapter weight, the task head, nor a bias, LayerNorm or pooler tensor of this {} model",
            wpath.display(),
            arch.model_type()
        )));
    }
    Ok(PeftState {
        config,
        rslora,
        base: p.dir.canonicalize().unwrap_or_else(|_| p.dir.clone()),
        name: "default".into(),
        stash: BTreeMap::new(),
    })
}

/// The base tensors an adapter may train besides its own (biases, norms, pooler), by Hugging
/// Face name (with the base prefix), as mutable views into the model.
fn extra_slots(p: &mut Pretrained) -> Vec<(String, &mut [f32])> {
    let cfg = p.config().clone();
    let n = cfg.arch.names();
    let prefix = n.base_prefix;
    let h = cfg.hidden_size;
    let mut out: Vec<(String, &mut [f32])> = Vec::new();
    fn norm<'a>(
        out: &mut Vec<(String, &'a mut [f32])>,
        m: String,
        ln: &'a mut crate::engine::LayerNorm,
    ) {
        out.push((format!("{m}.weight"), ln.weight.data_mut()));
        out.push((format!("{m}.bias"), ln.bias.data_mut()));
    }
    fn bias<'a>(out: &mut Vec<(String, &'a mut [f32])>, m: String, l: &'a mut Linear) {
        if let Some(b) = &mut l.bias {
            out.push((format!("{m}.bias"), b.data_mut()));
        }
    }
    let blocks: Vec<String> = (0..p.model.blocks.len())
        .map(|l| format!("{prefix}{}", n.block(l, p.config())))
        .collect();
    let m = &mut p.model;
    if let (Some(ln), Some(name)) = (&mut m.embeddings.norm, n.embeddings_norm) {
        norm(&mut out, format!("{prefix}{name}"), ln);
    }
    for (b, at) in m.blocks.iter_mut().zip(&blocks) {
        match n.qkv {
            QkvNames::Separate(parts) => {
                if let Some(qb) = &mut b.qkv.bias {
                    for (part, chunk) in parts.iter().zip(qb.data_mut().chunks_mut(h)) {
                        out.push((format!("{at}{part}.bias"), chunk));
                    }
                }
            }
            QkvNames::Fused(name) => bias(&mut out, format!("{at}{name}"), &mut b.qkv),
        }
        bias(&mut out, format!("{at}{}", n.attn_out), &mut b.attn_out);
        norm(&mut out, format!("{at}{}", n.ln_attn), &mut b.ln_attn);
        bias(&mut out, format!("{at}{}", n.ffn_in), &mut b.ffn_in);
        bias(&mut out, format!("{at}{}", n.ffn_out), &mut b.ffn_out);
        norm(&mut out, format!("{at}{}", n.ln_ffn), &mut b.ln_ffn);
    }
    if let (Some(ln), Some(name)) = (&mut m.final_norm, n.final_norm) {
        norm(&mut out, format!("{prefix}{name}"), ln);
    }
    if let (Some(pl), Some(name)) = (&mut p.pooler, n.pooler) {
        let d = &mut pl.dense;
        out.push((format!("{}.weight", name.path(prefix)), d.weight.data_mut()));
        if let Some(b) = &mut d.bias {
            out.push((format!("{}.bias", name.path(prefix)), b.data_mut()));
        }
    }
    out
}

//! int8 quantization of a model (`kiln quantize`): every linear layer of the transformer blocks
//! becomes int8 with a scale per output channel (weights symmetric; activations quantized per
//! token row at run time by the kernel, `engine/int8.rs`), and the word embeddings int8 with a
//! scale per row, except what the user keeps in f32. Position embeddings, LayerNorms, the
//! pooler and task heads stay f32. The layout on disk is described in docs/quantization.md.

use crate::checkpoint::Pretrained;
use crate::error::{Error, Result};
use crate::model::config::KILN_INT8;
use crate::peft::targets::{linear_mut, lora_sites, matches, Site, Slot};

/// What to quantize.
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    /// Module names kept in f32, matched as `--lora-targets` are (a name selects every module
    /// whose full name equals it or ends with `.name`); the word embeddings are
    /// `word_embeddings` (BERT) or `wte` (GPT-2). BERT's query, key and value are one fused
    /// layer in Kiln: keeping any of them keeps all three.
    pub keep_f32: Vec<String>,
    /// Texts to calibrate on: each block layer is then measured on the inputs the f32 model
    /// gives it, smoothed (SmoothQuant) where that lowers its output error, and kept in f32
    /// when its error stays above `max_error`. Empty: plain int8, nothing measured.
    pub calibration: Vec<String>,
    /// SmoothQuant's migration strength α (0: weights take none of the activations'
    /// difficulty, 1: all of it).
    pub alpha: f32,
    /// With calibration: a layer whose relative output error stays above this is kept in f32.
    pub max_error: Option<f32>,
}

impl QuantizeOptions {
    /// No kept layers, no calibration, α = 0.5.
    pub fn plain() -> Self {
        QuantizeOptions {
            keep_f32: Vec::new(),
            calibration: Vec::new(),
            alpha: 0.5,
            max_error: None,
        }
    }
}

/// One linear layer of the blocks (or the word embeddings) after quantization.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerReport {
    /// Its module names (three for BERT's fused query/key/value).
    pub modules: Vec<String>,
    /// Whether it is int8 now (else it was kept in f32 by `keep_f32`).
    pub int8: bool,
    /// ‖W − Ŵ‖ / ‖W‖ of the int8 weight Ŵ (0 when kept).
    pub weight_error: f32,
    /// With calibration: the relative output error of plain int8 and of smoothed int8 on the
    /// calibration inputs.
    pub output_error: Option<(f32, f32)>,
    /// Whether SmoothQuant smoothing was applied.
    pub smoothed: bool,
    /// Why the layer stayed f32, when it did.
    pub kept_because: Option<String>,
}

/// Quantizes the linear layers of `p`'s blocks in place and marks its config
/// (`quantization_config`); returns a report per layer.
pub fn quantize(p: &mut Pretrained, opts: &QuantizeOptions) -> Result<Vec<LayerReport>> {
    if p.model.lstm.is_some() {
        return Err(Error::Input(format!(
            "{}: int8 quantization covers the attention blocks' linear layers; an LSTM (kiln_lstm) is not quantized yet",
            p.dir.display()
        )));
    }
    if p.config().is_quantized() || p.model.blocks.iter().any(|b| b.qkv.int8.is_some()) {
        return Err(Error::Input(format!(
            "{} is already quantized (kiln_int8); quantize the f32 model",
            p.dir.display()
        )));
    }
    if p.peft.is_some() {
        return Err(Error::Input(
            "the model carries an adapter: quantize the base model, then load the adapter on it (or merge it first)".into(),
        ));
    }
    let sites: Vec<Site> = lora_sites(p)
        .into_iter()
        .filter(|s| s.slot != Slot::Pooler)
        .collect();
    let names = p.config().arch.names();
    let table = format!(
        "{}{}",
        crate::peft::targets::module_prefix(p),
        names.word_embeddings.trim_end_matches(".weight")
    );
    for k in &opts.keep_f32 {
        if !sites.iter().any(|s| matches(k, &s.module)) && !matches(k, &table) {
            return Err(Error::Input(format!(
                "--keep-f32: \"{k}\" matches no linear module of the blocks nor the word embeddings (named like {} and {table})",
                sites.first().map_or("?", |s| s.module.as_str())
            )));
        }
    }
    // One report per Kiln layer: the sites of a (block, slot) pair are one fused layer.
    let mut groups: Vec<(Site, Vec<String>)> = Vec::new();
    for s in sites {
        match groups
            .iter_mut()
            .find(|(g, _)| g.layer == s.layer && g.slot == s.slot)
        {
            Some((_, names)) => names.push(s.module.clone()),
            None => {
                let m = s.module.clone();
                groups.push((s, vec![m]));
            }
        }
    }
    // The inputs every layer sees, measured once on the f32 model.
    let inputs = if opts.calibration.is_empty() {
        None
    } else {
        Some(super::calibrate::layer_inputs(p, &opts.calibration, 4096)?)
    };
    let mut report = Vec::with_capacity(groups.len());
    for (site, modules) in groups {
        let named = modules
            .iter()
            .any(|m| opts.keep_f32.iter().any(|k| matches(k, m)));
        let l = linear_mut(p, &site).ok_or_else(|| Error::Input("no such layer".into()))?;
        let w = l.weight.clone();
        let mut r = LayerReport {
            modules,
            int8: false,
            weight_error: 0.0,
            output_error: None,
            smoothed: false,
            kept_because: named.then(|| "--keep-f32".to_string()),
        };
        if !named {
            let slot = match site.slot {
                Slot::Qkv => 0,
                Slot::AttnOut => 1,
                Slot::FfnIn => 2,
                _ => 3,
            };
            match inputs.as_ref().map(|i| &i[site.layer][slot]) {
                Some(x) if !x.is_empty() => {
                    let c = super::calibrate::calibrate(&w, x, opts.alpha)?;
                    let best = c.plain_error.min(c.smoothed_error);
                    r.output_error = Some((c.plain_error, c.smoothed_error));
                    match opts.max_error.filter(|&m| best > m) {
                        Some(m) => {
                            r.kept_because = Some(format!(
                                "output error {:.2} % above --max-error {:.2} %",
                                100.0 * best,
                                100.0 * m
                            ))
                        }
                        None => {
                            r.smoothed = c.smoothed;
                            l.int8 = Some(c.weight);
                            l.weight = crate::engine::Tensor::zeros(&[0]);
                            l.weights_changed();
                        }
                    }
                }
                _ => l.quantize(),
            }
            if l.int8.is_some() {
                r.int8 = true;
                r.weight_error = relative_error(&w, &l.f32_weight());
            }
        }
        report.push(r);
    }
    // The word embeddings: a scale per row (gathered rows are dequantized; a tied output
    // projection runs through the int8 kernel).
    let keep_table = opts.keep_f32.iter().any(|k| matches(k, &table));
    let word = &mut p.model.embeddings.word;
    let weight_error = if keep_table {
        0.0
    } else {
        let w = word.weight.clone();
        word.quantize();
        relative_error(&w, &word.f32_weight())
    };
    report.push(LayerReport {
        modules: vec![table],
        int8: !keep_table,
        weight_error,
        output_error: None,
        smoothed: false,
        kept_because: keep_table.then(|| "--keep-f32".to_string()),
    });
    let kept: Vec<&String> = report
        .iter()
        .filter(|r| !r.int8)
        .flat_map(|r| &r.modules)
        .collect();
    let smoothed: Vec<&String> = report
        .iter()
        .filter(|r| r.smoothed)
        .flat_map(|r| &r.modules)
        .collect();
    p.model.config.raw["quantization_config"] = serde_json::json!({
        "quant_method": KILN_INT8,
        "weights": "int8, symmetric, one scale per output channel (<module>.weight I8 [out, in], <module>.weight_scale F32 [out])",
        "activations": "u8 per token row with a zero point, quantized at run time",
        "accumulation": "int32",
        "modules_in_f32": kept,
        "smoothquant": {
            "alpha": opts.alpha,
            "modules": smoothed,
            "input_smooth": "<module>.input_smooth F32 [in]: activations are multiplied by it before quantization",
        },
        "also_f32": "position and segment embeddings, layer norms, pooler, task heads and untied language-model heads",
    });
    Ok(report)
}

/// ‖W − Ŵ‖ / ‖W‖.
fn relative_error(w: &crate::engine::Tensor, q: &crate::engine::Tensor) -> f32 {
    let (mut err2, mut norm2) = (0.0f64, 0.0f64);
    for (&a, &b) in w.data().iter().zip(q.data()) {
        err2 += ((a - b) as f64).powi(2);
        norm2 += (a as f64).powi(2);
    }
    (err2 / norm2.max(1e-30)).sqrt() as f32
}

/// Turns every int8 layer of `p` back into f32 (the weights the int8 values stand for) and drops
/// `quantization_config`: what `kiln convert` writes, a model transformers loads.
pub fn dequantize(p: &mut Pretrained) {
    for b in &mut p.model.blocks {
        for l in [&mut b.qkv, &mut b.attn_out, &mut b.ffn_in, &mut b.ffn_out] {
            l.dequantize();
        }
    }
    p.model.embeddings.word.dequantize();
    if let Some(o) = p.model.config.raw.as_object_mut() {
        o.remove("quantization_config");
    }
}

/// An error when `p` has int8 layers: they cannot be trained (adapters on them can).
pub fn refuse_training(p: &Pretrained, what: &str) -> Result<()> {
    if p.config().is_quantized() {
        return Err(Error::Input(format!(
            "{} is quantized (int8): {what} would change its int8 weights; train LoRA or adapters on it (--method lora|adapter), or use the f32 model",
            p.dir.display()
        )));
    }
    Ok(())
}

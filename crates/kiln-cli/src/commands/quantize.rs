//! `kiln quantize`.

use anyhow::{bail, Context, Result};
use kiln::compress::{quantize, QuantizeOptions};
use std::path::PathBuf;

/// Quantize a model to int8: every linear layer of the transformer blocks int8 with a scale per
/// output channel, activations quantized per token row at run time, int32 accumulation; the
/// word embeddings int8 with a scale per row (a tied output projection runs in int8 too).
/// Position embeddings, layer norms, the pooler and task heads stay f32. The output is a model
/// directory every command runs (docs/quantization.md); `kiln convert` turns it back into f32.
#[derive(clap::Args)]
pub struct Args {
    /// The model directory to quantize, or a hub id.
    #[arg(long)]
    model: PathBuf,
    /// The directory to write (a new model directory).
    #[arg(long)]
    out: PathBuf,
    /// Comma-separated module names to keep in f32, matched as --lora-targets are (a name
    /// selects every module whose full name equals it or ends with .name); the word embeddings
    /// are word_embeddings (BERT) or wte (GPT-2).
    #[arg(long, value_delimiter = ',')]
    keep_f32: Vec<String>,
    /// Texts to calibrate on, a few hundred of the task's kind: a text file (one per line) or
    /// task data (JSONL, CSV, TSV: the text, sentence-pair, word-list, question/context or
    /// source fields; the first 512 records). Each layer is measured on the inputs the f32
    /// model gives it, smoothed (SmoothQuant) where that lowers its output error, and kept in
    /// f32 when the error stays above --max-error.
    #[arg(long, value_name = "FILE")]
    calibration: Option<PathBuf>,
    /// SmoothQuant's migration strength alpha in [0, 1] [default: 0.5].
    #[arg(long, default_value_t = 0.5)]
    smooth_alpha: f32,
    /// With --calibration: keep a layer in f32 when its relative output error stays above this
    /// fraction (e.g. 0.05) [default: never].
    #[arg(long)]
    max_error: Option<f32>,
}

pub fn run(a: Args) -> Result<()> {
    let dir = super::resolve(&a.model)?;
    if a.out.exists() && a.out.canonicalize().ok() == dir.canonicalize().ok() {
        bail!(
            "--out {} is the --model directory; choose another",
            a.out.display()
        );
    }
    let mut p = super::load(&a.model)?;
    if !(0.0..=1.0).contains(&a.smooth_alpha) {
        bail!("--smooth-alpha must be in [0, 1], got {}", a.smooth_alpha);
    }
    if a.max_error.is_some() && a.calibration.is_none() {
        bail!("--max-error needs --calibration data to measure the error on");
    }
    let calibration = match &a.calibration {
        Some(f) => calibration_texts(f)?,
        None => Vec::new(),
    };
    let opts = QuantizeOptions {
        keep_f32: a.keep_f32.iter().map(|s| s.trim().to_string()).collect(),
        calibration,
        alpha: a.smooth_alpha,
        max_error: a.max_error,
    };
    let report = quantize(&mut p, &opts)?;
    for r in &report {
        let name = r.modules.join(" + ");
        let measured = r.output_error.map_or(String::new(), |(plain, smooth)| {
            format!(
                "; output error plain {:.2} %, smoothed {:.2} %",
                100.0 * plain,
                100.0 * smooth
            )
        });
        match &r.kept_because {
            None => eprintln!(
                "int8{}  {name}  (weight error {:.2} %{measured})",
                if r.smoothed { " smoothed" } else { "" },
                100.0 * r.weight_error
            ),
            Some(why) => eprintln!("f32   {name}  ({why}{measured})"),
        }
    }
    kiln::checkpoint::save(&p, &a.out, kiln::checkpoint::SaveDtype::F32)
        .with_context(|| format!("cannot save to {}", a.out.display()))?;
    let bytes =
        |d: &std::path::Path| std::fs::metadata(d.join("model.safetensors")).map_or(0, |m| m.len());
    let (before, after) = (bytes(&dir), bytes(&a.out));
    eprintln!(
        "{} of {} layers int8 (block linear layers and word embeddings); model.safetensors {:.1} MB -> {:.1} MB; model in {}",
        report.iter().filter(|r| r.int8).count(),
        report.len(),
        before as f64 / 1e6,
        after as f64 / 1e6,
        a.out.display()
    );
    Ok(())
}

/// Calibration texts are at most this many (more adds time, not accuracy).
const CALIBRATION_TEXTS: usize = 512;

/// The texts of a calibration file: its lines, or the text fields of task data.
fn calibration_texts(path: &std::path::Path) -> Result<Vec<String>> {
    let texts: Vec<String> = match kiln::data::records::Format::of(path) {
        Ok(_) => kiln::data::read_records(path, true)?
            .records
            .iter()
            .take(CALIBRATION_TEXTS)
            .filter_map(|r| {
                let s = |k: &str| r.fields.get(k).and_then(|v| v.as_str());
                if let Some(words) = r.fields.get("tokens").and_then(|v| v.as_array()) {
                    let w: Vec<&str> = words.iter().filter_map(|x| x.as_str()).collect();
                    return Some(w.join(" "));
                }
                match (s("text"), s("text_a"), s("question"), s("source")) {
                    (Some(t), _, _, _) => Some(t.to_string()),
                    (_, Some(a), _, _) => Some(format!("{a} {}", s("text_b").unwrap_or(""))),
                    (_, _, Some(q), _) => Some(format!("{q} {}", s("context").unwrap_or(""))),
                    (_, _, _, Some(src)) => Some(src.to_string()),
                    _ => None,
                }
            })
            .collect(),
        Err(_) => crate::io::read_lines(Some(path))?
            .into_iter()
            .take(CALIBRATION_TEXTS)
            .collect(),
    };
    let texts: Vec<String> = texts.into_iter().filter(|t| !t.trim().is_empty()).collect();
    anyhow::ensure!(
        !texts.is_empty(),
        "--calibration {}: no text found (give text lines, or JSONL/CSV/TSV with a text field)",
        path.display()
    );
    Ok(texts)
}

//! `kiln predict` and `kiln eval`: a fine-tuned model (or a base model with adapters) on data
//! records, through the library's [`Predictor`].

use super::finetune::{DataArgs, GenArgs, QaArgs};
use crate::io::Output;
use crate::progress::Items;
use anyhow::Result;
use kiln::data::records::{DataFile, Invalid, Record, STDIN};
use kiln::infer::{Predictor, TaskForm};
use kiln::train::FinetuneConfig;
use std::path::{Path, PathBuf};

/// The model to run and the task form.
#[derive(clap::Args, Clone)]
pub struct ModelArgs {
    /// The fine-tuned model directory (or the base model of --adapter), or a hub id.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    adapters: AdapterArgs,
    /// classify, tag, qa or seq2seq [default: what the model's head does: a sequence head
    /// classifies, a token head tags, a span head answers questions, a language-model head
    /// generates (seq2seq)]; for `kiln eval` also lm: held-out loss and perplexity of a
    /// language model on a text corpus.
    #[arg(long, value_parser = ["classify", "tag", "qa", "seq2seq", "lm"])]
    task: Option<String>,
}

/// The model of the flags, with its adapters.
fn load(m: &ModelArgs) -> Result<kiln::checkpoint::Pretrained> {
    m.adapters.load(&m.model)
}

/// The predictor for the flags.
fn predictor<'a>(
    p: &'a kiln::checkpoint::Pretrained,
    m: &ModelArgs,
    d: &DataArgs,
    qa: &QaArgs,
    gen: &GenArgs,
) -> Result<Predictor<'a>> {
    let mut c = FinetuneConfig::default();
    d.apply(&mut c);
    qa.apply(&mut c);
    gen.apply(&mut c);
    let form: Option<TaskForm> = m.task.as_deref().map(str::parse).transpose()?;
    Ok(Predictor::new(p, form, c, d.max_length())?)
}

/// Reads the records of `data` (`None` or `-`: standard input, JSON lines; SQuAD JSON too for
/// QA), saying how many malformed lines --skip-invalid passed over.
fn read_input(data: Option<&Path>, d: &DataArgs, form: TaskForm) -> Result<DataFile> {
    let path = data.unwrap_or(Path::new(STDIN));
    let f = if form == TaskForm::Qa {
        kiln::train::qa::read_qa_data(path, d.skip_invalid())?
    } else {
        kiln::data::read_records(path, d.skip_invalid())?
    };
    if f.skipped() > 0 {
        eprintln!(
            "{}: skipped {} malformed line(s)",
            path.display(),
            f.skipped()
        );
    }
    Ok(f)
}

/// Score a fine-tuned model on labelled data with the task's metrics (every metric 0–100).
#[derive(clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Labelled data (JSONL, CSV, TSV or CoNLL; .gz accepted) [default: standard input, JSON
    /// lines; also `-`].
    #[arg(long)]
    data: Option<PathBuf>,
    #[command(flatten)]
    fields: DataArgs,
    #[command(flatten)]
    qa: QaArgs,
    #[command(flatten)]
    gen: GenArgs,
    /// Print one JSON object (metric names as keys) instead of text.
    #[arg(long)]
    json: bool,
    /// lm: tokens per evaluated sequence [default: 128].
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// lm: sequences evaluated, from the start of the corpus [default: 256].
    #[arg(long, default_value_t = 256)]
    eval_sequences: usize,
}

/// `kiln eval --task lm`: loss and perplexity on a corpus, as pre-training evaluates.
fn eval_lm(p: &kiln::checkpoint::Pretrained, a: &EvalArgs) -> Result<serde_json::Value> {
    let data = a
        .data
        .clone()
        .ok_or_else(|| anyhow::anyhow!("--task lm: give the corpus with --data"))?;
    let cfg = kiln::train::PretrainConfig {
        objective: if p.mlm_head.is_some() {
            kiln::train::Objective::Mlm
        } else if p.config().lstm.as_ref().is_some_and(|l| l.bidirectional) {
            kiln::train::Objective::Bilm
        } else {
            kiln::train::Objective::Clm
        },
        corpus: vec![data.clone()],
        valid: vec![data],
        text_field: a.fields.text_field().unwrap_or("text").to_string(),
        seq_len: a.seq_len,
        eval_sequences: a.eval_sequences,
        ..Default::default()
    };
    anyhow::ensure!(a.seq_len >= 4, "--seq-len must be at least 4");
    anyhow::ensure!(a.eval_sequences >= 1, "--eval-sequences must be at least 1");
    Ok(kiln::train::evaluate_corpus(p, &cfg)?)
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let p = load(&a.model)?;
    if a.model.task.as_deref() == Some("lm") {
        let m = eval_lm(&p, &a)?;
        return print_metrics(&m, a.json);
    }
    let pr = predictor(&p, &a.model, &a.fields, &a.qa, &a.gen)?;
    let data = read_input(a.data.as_deref(), &a.fields, pr.form())?;
    anyhow::ensure!(
        !data.records.is_empty(),
        "{}: no examples to score",
        a.data.as_deref().unwrap_or(Path::new(STDIN)).display()
    );
    let bar = Items::new(None, "");
    let m = pr.evaluate(&data.records, &|done, total| bar.set(done, total))?;
    drop(bar);
    print_metrics(&m, a.json)
}

/// Metrics as one JSON object, or a line each.
fn print_metrics(m: &serde_json::Value, json: bool) -> Result<()> {
    let mut out = Output::open(None)?;
    if json {
        out.line(&m.to_string())?;
    } else if let Some(o) = m.as_object() {
        for (k, v) in o {
            match v.as_f64() {
                Some(x) if k != "examples" && k != "sequences" => {
                    out.line(&format!("{k:>10}  {x:.4}"))?
                }
                _ => out.line(&format!("{k:>10}  {v}"))?,
            }
        }
    }
    out.finish()
}

/// Predict with a fine-tuned model: one JSON line per input record, in order (each with the
/// input's `id` when it has one). With --skip-invalid a line that cannot be read or predicted
/// gets {"line": N, "error": "..."} in its place, so outputs stay aligned with inputs.
#[derive(clap::Args)]
pub struct PredictArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Input data with the training data's fields, labels not needed (JSONL, CSV, TSV or
    /// CoNLL; .gz accepted) [default: standard input, JSON lines; also `-`].
    #[arg(long)]
    input: Option<PathBuf>,
    /// Output file [default: standard output].
    #[arg(long)]
    output: Option<PathBuf>,
    #[command(flatten)]
    fields: DataArgs,
    #[command(flatten)]
    qa: QaArgs,
    #[command(flatten)]
    gen: GenArgs,
}

/// The answer in place of a record or line that could not be used.
fn error_line(line: usize, id: Option<&serde_json::Value>, msg: &str) -> serde_json::Value {
    let mut o = serde_json::Map::new();
    if let Some(id) = id {
        o.insert("id".into(), id.clone());
    }
    o.insert("line".into(), line.into());
    o.insert("error".into(), msg.into());
    o.into()
}

/// Answers for a chunk of records; with `skip_invalid`, a record that fails (bad fields, too
/// long, ...) is answered with an error object instead of stopping the run. A model whose
/// output is not finite stops it either way.
fn predict_chunk(
    pr: &Predictor,
    chunk: &[Record],
    skip_invalid: bool,
) -> Result<Vec<serde_json::Value>> {
    match pr.predict(chunk) {
        Ok(v) => Ok(v),
        Err(e) if !skip_invalid || matches!(e, kiln::Error::NonFinite(_)) => Err(e.into()),
        Err(_) => chunk
            .iter()
            .map(|r| match pr.predict(std::slice::from_ref(r)) {
                Ok(mut v) => Ok(v.remove(0)),
                Err(e @ kiln::Error::NonFinite(_)) => Err(e.into()),
                Err(e) => {
                    // The message names the file and line; the object says the line itself.
                    let msg = e.to_string();
                    let prefix = format!("{} line {}: ", r.path.display(), r.line);
                    let msg = msg.strip_prefix(&prefix).unwrap_or(&msg);
                    Ok(error_line(r.line, r.fields.get("id"), msg))
                }
            })
            .collect(),
    }
}

pub fn predict(a: PredictArgs) -> Result<()> {
    let p = load(&a.model)?;
    let pr = predictor(&p, &a.model, &a.fields, &a.qa, &a.gen)?;
    let data = read_input(a.input.as_deref(), &a.fields, pr.form())?;
    let skip = a.fields.skip_invalid();
    let mut out = Output::open(a.output.as_deref())?;
    let mut invalid = data.invalid.iter().peekable();
    // Lines --skip-invalid passed over are answered in their place.
    let mut flush_invalid = |before: usize, out: &mut Output| -> Result<()> {
        while let Some(Invalid { line, msg }) = invalid.next_if(|i| i.line < before) {
            out.line(&error_line(*line, None, msg).to_string())?;
        }
        Ok(())
    };
    // Generation is slow per record: small chunks keep the progress moving.
    let size = if pr.form() == TaskForm::Seq2seq {
        16
    } else {
        256
    };
    let bar = Items::new(
        Some((data.records.len() + data.invalid.len()) as u64),
        "inputs",
    );
    for chunk in data.records.chunks(size) {
        let answers = predict_chunk(&pr, chunk, skip)?;
        for (r, ans) in chunk.iter().zip(answers) {
            flush_invalid(r.line, &mut out)?;
            out.line(&ans.to_string())?;
        }
        bar.inc(chunk.len());
    }
    flush_invalid(usize::MAX, &mut out)?;
    out.finish()
}

/// Adapters on a base model: `--adapter DIR`, or several `--adapter NAME=DIR` with `--use NAME`.
#[derive(clap::Args, Clone)]
pub struct AdapterArgs {
    /// An adapter directory (LoRA or bottleneck, PEFT layout) for the --model base; repeat as
    /// NAME=DIR to load several.
    #[arg(long = "adapter")]
    adapter: Vec<String>,
    /// Which of several loaded adapters runs [default: the first].
    #[arg(long = "use")]
    use_name: Option<String>,
}

impl AdapterArgs {
    /// The base model with the adapters loaded and the chosen one active.
    pub fn load(&self, model: &std::path::Path) -> Result<kiln::checkpoint::Pretrained> {
        let mut p = super::load(model)?;
        let mut first = None;
        for (i, spec) in self.adapter.iter().enumerate() {
            let (name, dir) = match spec.split_once('=') {
                Some((n, d)) if !n.is_empty() => (n.to_string(), PathBuf::from(d)),
                _ if self.adapter.len() == 1 => ("default".to_string(), PathBuf::from(spec)),
                _ => anyhow::bail!(
                    "--adapter {spec}: name each of several adapters, as NAME=DIR (adapter {})",
                    i + 1
                ),
            };
            kiln::peft::files::load_adapter(&mut p, &dir, &name)?;
            first.get_or_insert(name);
        }
        match (&self.use_name, first) {
            (Some(n), Some(_)) => kiln::peft::use_adapter(&mut p, n)?,
            (Some(n), None) => {
                anyhow::bail!("--use {n}: give the adapters with --adapter NAME=DIR")
            }
            (None, Some(f)) => kiln::peft::use_adapter(&mut p, &f)?,
            (None, None) => {}
        }
        Ok(p)
    }
}

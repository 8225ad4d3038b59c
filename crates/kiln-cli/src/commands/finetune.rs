//! `kiln finetune`, `kiln eval` and `kiln predict`.

use super::train_args::{stop_on_ctrl_c, TrainArgs};
use crate::io::Output;
use crate::progress::Reporter;
use anyhow::{Context, Result};
use kiln::train::classify::{encode_examples, evaluate_examples, read_data, Fields};
use kiln::train::tag::{encode_tag_examples, evaluate_tags, predict_tags, TagExample};
use kiln::train::{finetune, FinetuneConfig};
use std::path::PathBuf;

/// Which fields of the data hold the inputs and the label.
#[derive(clap::Args, Clone)]
pub struct DataArgs {
    /// Field of the text [default: text, or text_a when the data has that].
    #[arg(long)]
    text_field: Option<String>,
    /// Field of the second text of a sentence pair [default: text_b when the data has it].
    #[arg(long)]
    text_b_field: Option<String>,
    /// Field of the label [default: label].
    #[arg(long)]
    label_field: Option<String>,
    /// Tagging: field holding the list of words [default: tokens].
    #[arg(long)]
    tokens_field: Option<String>,
    /// Tagging: field holding the list of tags, e.g. ner or pos [default: tags].
    #[arg(long)]
    tag_field: Option<String>,
    /// Tokens per example (QA: per window); longer inputs are truncated [default: 128; qa: 384].
    #[arg(long)]
    max_length: Option<usize>,
    /// Count and skip malformed lines instead of stopping at the first.
    #[arg(long)]
    skip_invalid: bool,
}

/// Extractive QA settings.
#[derive(clap::Args, Clone)]
pub struct QaArgs {
    /// QA: tokens shared by neighbouring windows of a long context [default: 128].
    #[arg(long)]
    doc_stride: Option<usize>,
    /// QA: longest answer in tokens [default: 30].
    #[arg(long)]
    max_answer_length: Option<usize>,
    /// QA: allow "no answer" (SQuAD 2.0), predicted when the [CLS] score beats the best span by
    /// more than this.
    #[arg(long)]
    null_threshold: Option<f32>,
}

impl QaArgs {
    fn apply(&self, c: &mut FinetuneConfig) {
        if let Some(v) = self.doc_stride {
            c.doc_stride = v;
        }
        if let Some(v) = self.max_answer_length {
            c.max_answer_length = v;
        }
        if self.null_threshold.is_some() {
            c.null_threshold = self.null_threshold;
        }
    }
}

/// Sequence-generation settings.
#[derive(clap::Args, Clone)]
pub struct GenArgs {
    /// seq2seq: target tokens kept in training, and most tokens generated [default: 64].
    #[arg(long)]
    max_target_length: Option<usize>,
    /// seq2seq: beam search with this many beams (1: greedy) [default: 1].
    #[arg(long)]
    num_beams: Option<usize>,
    /// seq2seq: beam scores are divided by length^PENALTY [default: 1.0].
    #[arg(long)]
    length_penalty: Option<f32>,
}

impl GenArgs {
    fn apply(&self, c: &mut FinetuneConfig) {
        if let Some(v) = self.max_target_length {
            c.max_target_length = v;
        }
        if let Some(v) = self.num_beams {
            c.num_beams = v;
        }
        if let Some(v) = self.length_penalty {
            c.length_penalty = v;
        }
    }
}

/// Parameter-efficient fine-tuning: LoRA or bottleneck adapters on a frozen base model.
#[derive(clap::Args, Clone)]
pub struct PeftArgs {
    /// full (every weight), lora, or adapter [default: full].
    #[arg(long, value_parser = ["full", "lora", "adapter"])]
    method: Option<String>,
    /// LoRA rank r [default: 8].
    #[arg(long)]
    lora_r: Option<usize>,
    /// LoRA alpha; the bypass is scaled by alpha / r [default: 8].
    #[arg(long)]
    lora_alpha: Option<f32>,
    /// Dropout on the LoRA input in training [default: 0].
    #[arg(long)]
    lora_dropout: Option<f32>,
    /// Comma-separated module names LoRA adapts, matched as PEFT's target_modules (a name
    /// selects every module whose full name equals it or ends with .name; all-linear: all)
    /// [default: query,value for BERT, c_attn for GPT-2].
    #[arg(long, value_delimiter = ',')]
    lora_targets: Option<Vec<String>>,
    /// Bottleneck width of adapters [default: 64].
    #[arg(long)]
    adapter_size: Option<usize>,
    /// houlsby (after attention and feed-forward outputs) or pfeiffer (after feed-forward only)
    /// [default: houlsby].
    #[arg(long, value_parser = ["houlsby", "pfeiffer"])]
    adapter_placement: Option<String>,
    /// Adapter nonlinearity: relu, gelu or gelu_new [default: relu].
    #[arg(long)]
    adapter_activation: Option<String>,
    /// Comma-separated base tensors to train as well: bias, layernorm, pooler.
    #[arg(long, value_delimiter = ',')]
    train_extra: Option<Vec<String>>,
}

impl PeftArgs {
    fn apply(&self, c: &mut kiln::peft::PeftConfig) {
        use kiln::peft::{Method, Placement};
        match self.method.as_deref() {
            Some("lora") => c.method = Method::Lora,
            Some("adapter") => c.method = Method::Adapter,
            Some("full") => c.method = Method::Full,
            _ => {}
        }
        if let Some(v) = self.lora_r {
            c.lora_r = v;
        }
        if let Some(v) = self.lora_alpha {
            c.lora_alpha = v;
        }
        if let Some(v) = self.lora_dropout {
            c.lora_dropout = v;
        }
        if let Some(v) = &self.lora_targets {
            c.lora_targets = v.iter().map(|s| s.trim().to_string()).collect();
        }
        if let Some(v) = self.adapter_size {
            c.adapter_size = v;
        }
        match self.adapter_placement.as_deref() {
            Some("pfeiffer") => c.adapter_placement = Placement::Pfeiffer,
            Some("houlsby") => c.adapter_placement = Placement::Houlsby,
            _ => {}
        }
        if let Some(v) = &self.adapter_activation {
            c.adapter_activation = v.clone();
        }
        if let Some(v) = &self.train_extra {
            c.train_extra = v.iter().map(|s| s.trim().to_lowercase()).collect();
        }
    }
}

/// Fine-tune a pretrained model on labelled data (JSONL, CSV, TSV or CoNLL; .gz accepted).
/// --task classify: one label per text or text pair, cross-entropy, or mean squared error
/// with --regression. --task tag: a tag per word (--tokens-field / --tag-field lists; CoNLL
/// files give `tokens`, `tags` = last column, `col1`, `col2`, …), the first piece of each word
/// carrying its tag. With --valid the output directory holds the best model by --metric;
/// checkpoints go to OUT/checkpoint-STEP/, metrics to OUT/metrics.jsonl. With --method lora or
/// adapter the base stays frozen and OUT holds only the adapter (adapter_config.json +
/// adapter_model.safetensors, PEFT's layout); use it with --model BASE --adapter OUT.
#[derive(clap::Args)]
pub struct Args {
    /// The pretrained model directory.
    #[arg(long)]
    model: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Settings from a TOML file (keys = flag names with `_`; `train_file`, `valid_file`);
    /// flags given here override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The task form: classify, tag, qa or seq2seq.
    #[arg(long)]
    task: Option<String>,
    /// Training data.
    #[arg(long)]
    train: Option<PathBuf>,
    /// Validation data (evaluated every --eval-every steps and at the end).
    #[arg(long)]
    valid: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    /// Label names in id order, a JSON list or {"label": [...]} [default: those in the data].
    #[arg(long)]
    labels: Option<PathBuf>,
    /// The label is a real value (one output, mean squared error).
    #[arg(long)]
    regression: bool,
    /// Tagging: train every word piece on its word's tag, not only the first.
    #[arg(long)]
    label_all_pieces: bool,
    /// Validation metric that picks the best model [default: accuracy; pearson for regression].
    #[arg(long)]
    metric: Option<String>,
    /// Stop after this many evaluations without a better metric.
    #[arg(long)]
    patience: Option<u64>,
    /// Evaluate during training on only the first N validation examples (a large seq2seq set
    /// is decoded in full at every evaluation otherwise).
    #[arg(long, value_name = "N")]
    max_eval_samples: Option<usize>,
    /// Add the training texts' words that the tokenizer only knows as its unknown token (e.g.
    /// Chinese characters for an English vocabulary) as new tokens, with new embedding rows.
    #[arg(long)]
    extend_vocab: bool,
    #[command(flatten)]
    qa: QaArgs,
    #[command(flatten)]
    gen: GenArgs,
    #[command(flatten)]
    peft: PeftArgs,
    #[command(flatten)]
    train_args: TrainArgs,
    /// Continue from the latest checkpoint in --out.
    #[arg(long)]
    resume: bool,
}

pub fn run(a: Args) -> Result<()> {
    let mut c = match &a.config {
        Some(path) => FinetuneConfig::from_toml(path)?,
        None => FinetuneConfig::default(),
    };
    a.train_args.apply(&mut c.train);
    a.peft.apply(&mut c.peft);
    a.qa.apply(&mut c);
    a.gen.apply(&mut c);
    if let Some(t) = &a.task {
        c.task = t.clone();
    }
    if let Some(t) = &a.train {
        c.train_file = t.clone();
    }
    if a.valid.is_some() {
        c.valid_file = a.valid.clone();
    }
    let d = &a.data;
    if d.text_field.is_some() {
        c.text_field = d.text_field.clone();
    }
    if d.text_b_field.is_some() {
        c.text_b_field = d.text_b_field.clone();
    }
    if let Some(l) = &d.label_field {
        c.label_field = l.clone();
    }
    if let Some(m) = d.max_length {
        c.max_length = m;
    } else if c.task == "qa" && c.max_length == FinetuneConfig::default().max_length {
        // QA windows hold a question and a long context: transformers' run_qa.py uses 384.
        c.max_length = 384;
    }
    if let Some(f) = &d.tokens_field {
        c.tokens_field = f.clone();
    }
    if let Some(f) = &d.tag_field {
        c.tag_field = f.clone();
    }
    c.label_all_pieces |= a.label_all_pieces;
    c.skip_invalid |= d.skip_invalid;
    if a.labels.is_some() {
        c.labels = a.labels.clone();
    }
    c.regression |= a.regression;
    c.extend_vocab |= a.extend_vocab;
    if a.metric.is_some() {
        c.metric = a.metric.clone();
    }
    if a.patience.is_some() {
        c.patience = a.patience;
    }
    if a.max_eval_samples.is_some() {
        c.max_eval_samples = a.max_eval_samples;
    }
    let stop = stop_on_ctrl_c();
    let mut progress = Reporter::new();
    let summary = finetune(
        &a.model,
        &a.out,
        &c,
        a.resume,
        &stop,
        super::train_args::report_started,
        |p| progress.step(p),
    )
    .with_context(|| format!("fine-tuning into {}", a.out.display()))?;
    progress.finish(&summary, &a.out);
    let adapter = a.out.join(kiln::peft::files::WEIGHTS);
    if let Ok(m) = std::fs::metadata(&adapter) {
        eprintln!(
            "adapter {} on disk: {:.1} KiB",
            adapter.display(),
            m.len() as f64 / 1024.0
        );
    }
    if let Some((step, v)) = summary.best {
        eprintln!(
            "best {} {v:.4} at step {step}{}",
            summary.metric.as_deref().unwrap_or("metric"),
            if summary.early_stopped {
                " (stopped early)"
            } else {
                ""
            }
        );
    }
    if summary.interrupted {
        std::process::exit(130);
    }
    Ok(())
}

fn check_task(task: &str) -> Result<()> {
    anyhow::ensure!(
        ["classify", "tag", "qa", "seq2seq"].contains(&task),
        "--task: \"{task}\" is not a task form (classify, tag, qa, seq2seq)"
    );
    Ok(())
}

/// The records of an eval/predict data file (SQuAD JSON too for `qa`), saying how many
/// malformed lines --skip-invalid passed over.
fn read_input(
    data: &std::path::Path,
    d: &DataArgs,
    qa: bool,
) -> Result<Vec<kiln::data::records::Record>> {
    let f = if qa {
        kiln::train::qa::read_qa_data(data, d.skip_invalid)?
    } else {
        read_data(data, d.skip_invalid)?
    };
    report_skipped(data, f.skipped);
    Ok(f.records)
}

fn report_skipped(data: &std::path::Path, skipped: usize) {
    if skipped > 0 {
        eprintln!("{}: skipped {skipped} malformed line(s)", data.display());
    }
}

/// Source/target pairs for eval/predict, and the generation settings.
fn seq2seq_pairs(
    p: &kiln::checkpoint::Pretrained,
    data: &std::path::Path,
    d: &DataArgs,
    gen: &GenArgs,
    need_target: bool,
) -> Result<(Vec<kiln::train::seq2seq::Seq2SeqExample>, FinetuneConfig)> {
    let mut c = FinetuneConfig::default();
    if let Some(m) = d.max_length {
        c.max_length = m;
    } else {
        c.max_length = p.config().max_positions;
    }
    gen.apply(&mut c);
    let len = kiln::train::seq2seq::lengths_of(&c, p);
    let records = read_input(data, d, false)?;
    let pairs = kiln::train::seq2seq::pairs_of(p, &records, need_target, &len)?;
    Ok((pairs, c))
}

/// QA windows and decoding for eval/predict, from the flags and the model.
fn qa_features(
    p: &kiln::checkpoint::Pretrained,
    data: &std::path::Path,
    d: &DataArgs,
    qa: &QaArgs,
) -> Result<(Vec<kiln::train::qa::QaFeature>, kiln::infer::qa::Decode)> {
    kiln::infer::qa::span_head(p)?;
    let mut c = FinetuneConfig {
        max_length: d.max_length.unwrap_or(384),
        ..FinetuneConfig::default()
    };
    qa.apply(&mut c);
    let w = kiln::train::qa::windows_of(&c, p);
    let f = kiln::train::qa::features_of(p, &read_input(data, d, true)?, &w)?;
    Ok((f, kiln::train::qa::decode_of(&c)))
}

fn tag_examples(
    p: &kiln::checkpoint::Pretrained,
    data: &std::path::Path,
    d: &DataArgs,
    with_tags: bool,
) -> Result<Vec<TagExample>> {
    let head = kiln::infer::tag::token_head(p)?;
    let records = read_input(data, d, false)?;
    let max_len = d.max_length.unwrap_or(128).min(p.config().max_positions);
    Ok(encode_tag_examples(
        p.tokenizer()?,
        &records,
        d.tokens_field.as_deref().unwrap_or("tokens"),
        d.tag_field.as_deref().unwrap_or("tags"),
        with_tags.then_some(&head.labels),
        max_len,
        false,
    )?)
}

/// Score a fine-tuned model on labelled data with the task's metrics.
#[derive(clap::Args)]
pub struct EvalArgs {
    /// The fine-tuned model directory (or the base model of --adapter).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    adapters: AdapterArgs,
    /// The task form: classify or tag.
    #[arg(long, default_value = "classify")]
    task: String,
    /// Labelled data (JSONL, CSV or TSV; .gz accepted).
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    fields: DataArgs,
    #[command(flatten)]
    qa: QaArgs,
    #[command(flatten)]
    gen: GenArgs,
    /// Print one JSON object (metric names as keys) instead of text.
    #[arg(long)]
    json: bool,
}

fn load_examples(
    p: &kiln::checkpoint::Pretrained,
    data: &std::path::Path,
    d: &DataArgs,
    with_labels: bool,
) -> Result<Vec<kiln::train::classify::Example>> {
    let head = kiln::infer::classify::sequence_head(p)?;
    let records = read_input(data, d, false)?;
    let fields = Fields::resolve(
        d.text_field.as_deref(),
        d.text_b_field.as_deref(),
        d.label_field.as_deref().unwrap_or("label"),
        records.first(),
    );
    let max_len = d.max_length.unwrap_or(128).min(p.config().max_positions);
    Ok(encode_examples(
        p.tokenizer()?,
        &records,
        &fields,
        with_labels.then_some(&head.labels),
        max_len,
    )?)
}

pub fn eval(a: EvalArgs) -> Result<()> {
    check_task(&a.task)?;
    let p = a.adapters.load(&a.model)?;
    let (mut m, n) = if a.task == "seq2seq" {
        let (pairs, c) = seq2seq_pairs(&p, &a.data, &a.fields, &a.gen, true)?;
        let m = kiln::train::seq2seq::evaluate_seq2seq(
            &p,
            &pairs,
            c.num_beams,
            c.length_penalty,
            c.max_target_length,
        )?;
        (m, pairs.len())
    } else if a.task == "qa" {
        let (f, d) = qa_features(&p, &a.data, &a.fields, &a.qa)?;
        let questions = f
            .windows(2)
            .filter(|w| !std::sync::Arc::ptr_eq(&w[0].example, &w[1].example))
            .count()
            + usize::from(!f.is_empty());
        (kiln::train::qa::evaluate_qa(&p, &f, &d)?, questions)
    } else if a.task == "tag" {
        let ex = tag_examples(&p, &a.data, &a.fields, true)?;
        (evaluate_tags(&p, &ex)?, ex.len())
    } else {
        let ex = load_examples(&p, &a.data, &a.fields, true)?;
        (evaluate_examples(&p, &ex)?, ex.len())
    };
    if let Some(o) = m.as_object_mut() {
        // On its own data the loss is just the loss.
        if let Some(l) = o.remove("valid_loss") {
            o.insert("loss".into(), l);
        }
        o.insert("examples".into(), n.into());
    }
    if a.json {
        println!("{m}");
    } else if let Some(o) = m.as_object() {
        for (k, v) in o {
            match v.as_f64() {
                Some(x) if k != "examples" => println!("{k:>10}  {x:.4}"),
                _ => println!("{k:>10}  {v}"),
            }
        }
    }
    Ok(())
}

/// Predict with a fine-tuned model: one JSON line per input line, in order.
#[derive(clap::Args)]
pub struct PredictArgs {
    /// The fine-tuned model directory (or the base model of --adapter).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    adapters: AdapterArgs,
    /// The task form: classify or tag.
    #[arg(long, default_value = "classify")]
    task: String,
    /// Input data with the training data's fields (labels not needed).
    #[arg(long)]
    input: PathBuf,
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

pub fn predict(a: PredictArgs) -> Result<()> {
    check_task(&a.task)?;
    let p = a.adapters.load(&a.model)?;
    if a.task == "seq2seq" {
        let (pairs, c) = seq2seq_pairs(&p, &a.input, &a.fields, &a.gen, false)?;
        let mut out = Output::open(a.output.as_deref())?;
        for chunk in pairs.chunks(16) {
            let preds = kiln::train::seq2seq::generate_targets(
                &p,
                chunk,
                c.num_beams,
                c.length_penalty,
                c.max_target_length,
            )?;
            for pred in preds {
                out.line(&serde_json::json!({ "prediction": pred }).to_string())?;
            }
        }
        return out.finish();
    }
    if a.task == "qa" {
        let (f, d) = qa_features(&p, &a.input, &a.fields, &a.qa)?;
        let mut out = Output::open(a.output.as_deref())?;
        let (answers, _) = kiln::train::qa::answer_questions(&p, &f, &d)?;
        for (ex, ans) in answers {
            // Unicode character offsets into the context, end exclusive; -1 for no answer.
            let (start, end) = ans.span.map_or((-1i64, -1i64), |(s, e)| {
                (ex.char_offset(s) as i64, ex.char_offset(e) as i64)
            });
            let line = serde_json::json!({
                "id": ex.id,
                "answer": kiln::train::qa::answer_text(&ex, &ans),
                "start": start,
                "end": end,
                "score": ans.probability,
            });
            out.line(&line.to_string())?;
        }
        return out.finish();
    }
    if a.task == "tag" {
        let head = kiln::infer::tag::token_head(&p)?;
        let examples = tag_examples(&p, &a.input, &a.fields, false)?;
        let mut out = Output::open(a.output.as_deref())?;
        for chunk in examples.chunks(256) {
            for tags in predict_tags(&p, chunk)? {
                let names: Vec<&str> = tags
                    .iter()
                    .map(|&i| head.labels.names[i].as_str())
                    .collect();
                out.line(&serde_json::json!({ "tags": names }).to_string())?;
            }
        }
        return out.finish();
    }
    let head = kiln::infer::classify::sequence_head(&p)?;
    let examples = load_examples(&p, &a.input, &a.fields, false)?;
    let mut out = Output::open(a.output.as_deref())?;
    for chunk in examples.chunks(64) {
        let refs: Vec<&kiln::train::classify::Example> = chunk.iter().collect();
        let batch = kiln::train::classify::batch_of(&refs)?;
        let logits = kiln::infer::classify::sequence_logits(&p, &batch)?;
        for c in kiln::infer::classify::predictions(head, &logits) {
            let line = if head.labels.regression {
                serde_json::json!({ "label": c.score, "score": c.score })
            } else {
                serde_json::json!({
                    "label": head.labels.json(c.label),
                    "score": c.score,
                    "probabilities": c.probabilities,
                })
            };
            out.line(&line.to_string())?;
        }
    }
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
            kiln::peft::files::load_adapter(&mut p, &dir, &name)
                .with_context(|| format!("cannot load adapter {}", dir.display()))?;
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

/// Fold a LoRA adapter into its base model's weights and save a plain transformers model.
#[derive(clap::Args)]
pub struct MergeArgs {
    /// The base model directory.
    #[arg(long)]
    model: PathBuf,
    /// The LoRA adapter directory.
    #[arg(long)]
    adapter: PathBuf,
    /// Output model directory.
    #[arg(long)]
    out: PathBuf,
}

pub fn merge(a: MergeArgs) -> Result<()> {
    let mut p = super::load(&a.model)?;
    kiln::peft::files::load_adapter(&mut p, &a.adapter, "default")
        .with_context(|| format!("cannot load adapter {}", a.adapter.display()))?;
    kiln::peft::merge_and_unload(&mut p)?;
    kiln::checkpoint::save(&p, &a.out, kiln::checkpoint::SaveDtype::F32)
        .with_context(|| format!("cannot save {}", a.out.display()))?;
    eprintln!("merged model in {}", a.out.display());
    Ok(())
}

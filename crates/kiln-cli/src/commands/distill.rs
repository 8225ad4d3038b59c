//! `kiln distill`: a student trained on a fine-tuned teacher's soft targets.

use super::finetune::RunArgs;
use anyhow::{bail, Result};
use kiln::compress::distill::DistillConfig;
use kiln::train::{FinetuneConfig, Objective, PretrainConfig};
use std::path::PathBuf;

/// Distil a fine-tuned teacher into a smaller student (knowledge distillation): the student
/// learns the teacher's softened output distributions (`--alpha-kd` × T² × KL at
/// `--temperature` T) and, where the data has them, the gold labels (`--alpha-ce` ×
/// cross-entropy). The student is the teacher cut to some of its blocks (`--student-layers
/// 0,2,4`: embeddings, those blocks and the head copied, as DistilBERT was initialised) or any
/// model directory with the teacher's tokenizer (`--student DIR`; a new head unless it has the
/// teacher's). `--unlabeled FILE` adds texts without labels, learnt from the teacher alone.
/// Every `finetune` flag applies (--task classify|tag|qa, --train, --valid, --epochs, --lr,
/// --config, --resume, --method lora, …); OUT is a normal model directory. --task mlm distils a
/// masked-LM teacher on a corpus (--train: text, JSONL or .gz; --valid: held-out text;
/// --max-length: tokens per sequence), as DistilBERT was trained.
#[derive(clap::Args)]
pub struct Args {
    /// The fine-tuned teacher model directory (or hub id).
    #[arg(long)]
    teacher: PathBuf,
    /// The student: the teacher cut to these blocks (0-based, increasing, comma-separated).
    #[arg(long, value_delimiter = ',', conflicts_with = "student")]
    student_layers: Option<Vec<usize>>,
    /// The student: a model directory (or hub id) read with the teacher's tokenizer.
    #[arg(long)]
    student: Option<PathBuf>,
    /// Weight of the soft-target loss T² × KL(teacher ‖ student) [default: 1].
    #[arg(long)]
    alpha_kd: Option<f32>,
    /// Weight of the cross-entropy on gold labels [default: 0].
    #[arg(long)]
    alpha_ce: Option<f32>,
    /// Softmax temperature of the soft targets [default: 2].
    #[arg(long)]
    temperature: Option<f32>,
    /// Weight of the loss between mapped hidden states (block outputs; a narrower student's
    /// through a learned projection to the teacher's width, trained with it and not saved)
    /// [default: 0].
    #[arg(long)]
    alpha_hidden: Option<f32>,
    /// The hidden-state loss: cosine (1 - cos per token, DistilBERT) or mse (TinyBERT)
    /// [default: cosine].
    #[arg(long, value_parser = ["cosine", "mse"])]
    hidden_loss: Option<String>,
    /// Weight of the KL between mapped blocks' attention distributions, query by query and
    /// head by head (MiniLM, TinyBERT; equal head counts, any widths) [default: 0].
    #[arg(long)]
    alpha_attn: Option<f32>,
    /// Texts without labels (classify: a text field; tag: a word list), learnt from the
    /// teacher's soft targets alone.
    #[arg(long)]
    unlabeled: Option<PathBuf>,
    /// Unlabelled examples used per labelled one (the first of the file) [default: 1].
    #[arg(long)]
    unlabeled_ratio: Option<f32>,
    #[command(flatten)]
    run: RunArgs,
}

pub fn run(a: Args) -> Result<()> {
    let mut c = a.run.config()?;
    let teacher = super::resolve(&a.teacher)?;
    let mut d = c.distill.take().unwrap_or_default();
    d.teacher = teacher.clone();
    if let Some(l) = a.student_layers {
        d.student_layers = l;
    }
    for (v, field) in [
        (a.alpha_kd, &mut d.alpha_kd),
        (a.alpha_ce, &mut d.alpha_ce),
        (a.temperature, &mut d.temperature),
        (a.unlabeled_ratio, &mut d.unlabeled_ratio),
        (a.alpha_hidden, &mut d.alpha_hidden),
        (a.alpha_attn, &mut d.alpha_attn),
    ] {
        if let Some(v) = v {
            *field = v;
        }
    }
    if let Some(h) = a.hidden_loss {
        d.hidden_loss = h;
    }
    if a.unlabeled.is_some() {
        d.unlabeled = a.unlabeled;
    }
    let student = match (&a.student, d.student_layers.is_empty()) {
        (Some(s), _) => super::resolve(s)?,
        (None, false) => teacher,
        (None, true) => bail!(
            "give the student: --student-layers 0,2,4 (the teacher cut to those blocks) or --student DIR"
        ),
    };
    if c.task == "mlm" {
        return mlm(&a.run, &student, c, d);
    }
    c.distill = Some(d);
    a.run.execute(&student, c)
}

/// `--task mlm`: task-agnostic distillation on a corpus (--train, --valid as held-out text),
/// run as masked-LM pre-training of the student with the teacher's soft targets.
fn mlm(
    run: &RunArgs,
    student: &std::path::Path,
    c: FinetuneConfig,
    d: DistillConfig,
) -> Result<()> {
    if c.train_file.as_os_str().is_empty() {
        bail!("--train: give the corpus to distil on (text lines, JSONL or .gz)");
    }
    let pc = PretrainConfig {
        train: c.train,
        objective: Objective::Mlm,
        corpus: vec![c.train_file],
        valid: c.valid_file.into_iter().collect(),
        text_field: run.text_field().unwrap_or("text").to_string(),
        seq_len: c.max_length,
        distill: Some(d),
        ..PretrainConfig::default()
    };
    super::pretrain::execute(student, run.out(), &pc, run.resume(), "distilling")
}

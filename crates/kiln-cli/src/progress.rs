//! Training progress: a live bar (step, loss, lr, tokens/s, ETA) on a terminal, plain periodic
//! lines otherwise, and an end-of-run summary.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln::train::Progress;
use std::io::IsTerminal;
use std::time::Instant;

/// Follows one training run.
pub struct Reporter {
    bar: Option<ProgressBar>,
    start: Instant,
    tokens: u64,
    first_step: Option<u64>,
    /// Smoothed tokens/s for the bar.
    rate: f64,
    last: Instant,
    /// The newest evaluation line seen.
    pub last_eval: Option<serde_json::Value>,
    /// A rank other than 0 of a distributed run: rank 0 shows the progress.
    quiet: bool,
}

impl Reporter {
    /// A bar when standard error is a terminal, plain lines otherwise.
    pub fn new() -> Self {
        let quiet = !kiln::train::distributed::world().is_root();
        let bar = (std::io::stderr().is_terminal() && !quiet).then(|| {
            let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(4));
            b.set_style(
                ProgressStyle::with_template(
                    "{bar:30.cyan/blue} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b
        });
        Reporter {
            bar,
            start: Instant::now(),
            tokens: 0,
            first_step: None,
            rate: 0.0,
            last: Instant::now(),
            last_eval: None,
            quiet,
        }
    }

    /// Takes one step's report.
    pub fn step(&mut self, p: &Progress) {
        if self.quiet {
            return;
        }
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64().max(1e-9);
        self.last = now;
        if self.first_step.is_none() {
            // A resumed run starts part-way: the ETA counts from here.
            self.first_step = Some(p.step - 1);
            self.start = now - std::time::Duration::from_secs_f64(dt);
            if let Some(b) = &self.bar {
                b.set_length(p.total_steps);
                b.set_position(p.step - 1);
                b.reset_eta();
            }
        }
        self.tokens += p.tokens as u64;
        let r = p.tokens as f64 / dt;
        self.rate = if self.rate == 0.0 {
            r
        } else {
            0.9 * self.rate + 0.1 * r
        };
        if let Some(m) = p.metrics {
            if m.get("valid_loss").is_some() {
                self.last_eval = Some(m.clone());
            }
        }
        match &self.bar {
            Some(b) => {
                b.set_position(p.step);
                b.set_message(format!(
                    "loss {:.4}  lr {:.2e}  {:.0} tok/s",
                    p.loss, p.lr, self.rate
                ));
                if let Some(m) = p.metrics.filter(|m| m.get("valid_loss").is_some()) {
                    b.println(format!("step {}: {}", p.step, eval_text(m)));
                }
            }
            None => {
                if let Some(m) = p.metrics {
                    eprintln!("{m}");
                }
            }
        }
    }

    /// Clears the bar and prints the end-of-run summary.
    pub fn finish(&mut self, summary: &kiln::train::Summary, out: &std::path::Path) {
        if self.quiet {
            return;
        }
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if summary.already_finished {
            eprintln!(
                "{}: the run already finished at step {} of {}; nothing to do (raise --max-steps or --epochs to train further)",
                out.display(),
                summary.step,
                summary.total_steps
            );
            return;
        }
        let secs = self.start.elapsed().as_secs_f64();
        let steps = summary.step - self.first_step.unwrap_or(summary.step);
        eprintln!(
            "{} at step {}/{}: {steps} steps in {}, {:.0} tokens/s, final train loss {:.4}{}",
            if summary.interrupted {
                "stopped"
            } else {
                "done"
            },
            summary.step,
            summary.total_steps,
            clock(secs),
            self.tokens as f64 / secs.max(1e-9),
            summary.loss,
            self.last_eval
                .as_ref()
                .map_or(String::new(), |m| format!("; {}", eval_text(m))),
        );
        if summary.interrupted {
            eprintln!("checkpoint written; continue with --resume");
        } else {
            eprintln!("model in {}", out.display());
        }
    }
}

fn eval_text(m: &serde_json::Value) -> String {
    let mut parts = Vec::new();
    for (k, name) in [
        ("valid_loss", "valid loss"),
        ("perplexity", "perplexity"),
        ("mlm_accuracy", "MLM accuracy"),
    ] {
        if let Some(v) = m[k].as_f64() {
            parts.push(format!("{name} {v:.4}"));
        }
    }
    parts.join(", ")
}

fn clock(secs: f64) -> String {
    let s = secs.round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// A bar over the items of an inference command (lines, examples) on a terminal, so a long
/// input shows how far it has got; nothing when standard error is not a terminal.
pub struct Items {
    bar: Option<ProgressBar>,
}

impl Items {
    /// A bar for `total` items (unknown: a counter); `what` names them.
    pub fn new(total: Option<u64>, what: &str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr_with_hz(4));
            let template = match total {
                Some(_) => format!(
                    "{{bar:30.cyan/blue}} {{pos}}/{{len}} {what} [{{elapsed_precise}} < {{eta_precise}}]"
                ),
                None => format!("{{spinner}} {{pos}} {what} [{{elapsed_precise}}]"),
            };
            b.set_style(
                ProgressStyle::with_template(&template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b
        });
        Items { bar }
    }

    /// `done` of `total` (the total may be refined as the work is split up).
    pub fn set(&self, done: usize, total: usize) {
        if let Some(b) = &self.bar {
            b.set_length(total as u64);
            b.set_position(done as u64);
        }
    }

    /// `n` more items done.
    pub fn inc(&self, n: usize) {
        if let Some(b) = &self.bar {
            b.inc(n as u64);
        }
    }
}

impl Drop for Items {
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

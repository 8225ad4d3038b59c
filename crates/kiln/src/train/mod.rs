//! Training: backward passes of the whole model, optimizer, learning-rate schedule, gradient
//! clipping, checkpoints, the shared training loop and the tasks it runs (pre-training).

pub mod auxiliary;
pub mod backprop;
pub mod classify;
pub mod config;
pub mod distill;
pub mod distributed;
pub mod electra;
pub mod finetune;
pub mod lstm;
pub mod optim;
pub mod outdir;
pub mod pretrain;
pub mod qa;
pub mod schedule;
pub mod seq2seq;
pub mod state;
pub mod tag;
pub mod trainer;

pub use config::{FinetuneConfig, Objective, PretrainConfig, TrainConfig};
pub use finetune::finetune;
pub use optim::{clip_grad_norm, AdamW, Param};
pub use pretrain::{evaluate_corpus, pretrain};
pub use schedule::{Schedule, ScheduleKind};
pub use trainer::{Progress, Started, Summary, Task};

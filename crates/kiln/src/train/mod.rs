//! Training: backward passes of the whole model, optimizer, learning-rate schedule, gradient
//! clipping, checkpoints and the pre-training loop.

pub mod backprop;
pub mod config;
pub mod optim;
pub mod schedule;
pub mod state;
pub mod trainer;

pub use config::{Objective, PretrainConfig};
pub use optim::{clip_grad_norm, AdamW, Param};
pub use schedule::{Schedule, ScheduleKind};
pub use trainer::{pretrain, Progress, Summary};

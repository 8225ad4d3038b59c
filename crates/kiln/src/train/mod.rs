//! Training: optimizer, learning-rate schedule, gradient clipping. (The trainer that drives
//! pre-training and fine-tuning builds on these.)

pub mod backprop;
pub mod optim;
pub mod schedule;

pub use optim::{clip_grad_norm, AdamW, Param};
pub use schedule::{Schedule, ScheduleKind};

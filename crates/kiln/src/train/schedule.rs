//! Learning-rate schedules: linear warmup, then linear or cosine decay to a floor
//! (transformers `optimization.py`: `get_linear_schedule_with_warmup`,
//! `get_cosine_schedule_with_warmup`, with a minimum-ratio floor).

use crate::error::{Error, Result};

/// The decay after warmup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleKind {
    /// Straight line from the peak to the floor.
    Linear,
    /// Half a cosine wave from the peak to the floor.
    Cosine,
    /// Stay at the peak.
    Constant,
}

impl std::str::FromStr for ScheduleKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "linear" => Ok(ScheduleKind::Linear),
            "cosine" => Ok(ScheduleKind::Cosine),
            "constant" => Ok(ScheduleKind::Constant),
            _ => Err(Error::Input(format!(
                "unknown --schedule \"{s}\": linear, cosine or constant"
            ))),
        }
    }
}

/// A learning-rate schedule over `total_steps` optimizer steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// Peak learning rate.
    pub peak: f32,
    /// Steps of linear warmup from 0 to the peak.
    pub warmup_steps: u64,
    /// Total optimizer steps.
    pub total_steps: u64,
    /// Decay shape.
    pub kind: ScheduleKind,
    /// Final learning rate as a fraction of the peak.
    pub floor_ratio: f32,
}

impl Schedule {
    /// Learning rate used for optimizer step `step` (0-based).
    pub fn lr(&self, step: u64) -> f32 {
        // Phase 1: warmup, rising linearly from 0.
        if step < self.warmup_steps {
            return self.peak * step as f32 / self.warmup_steps.max(1) as f32;
        }
        // Phase 2: decay from the peak towards the floor.
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f32;
        let progress = ((step - self.warmup_steps) as f32 / span).min(1.0);
        let shape = match self.kind {
            ScheduleKind::Linear => 1.0 - progress,
            ScheduleKind::Cosine => 0.5 * (1.0 + (std::f32::consts::PI * progress).cos()),
            ScheduleKind::Constant => 1.0,
        };
        self.peak * (self.floor_ratio + (1.0 - self.floor_ratio) * shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        let s = Schedule {
            peak: 1.0,
            warmup_steps: 10,
            total_steps: 110,
            kind: ScheduleKind::Linear,
            floor_ratio: 0.0,
        };
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(5) - 0.5).abs() < 1e-6);
        assert!((s.lr(10) - 1.0).abs() < 1e-6);
        assert!((s.lr(60) - 0.5).abs() < 1e-6);
        assert_eq!(s.lr(110), 0.0);
        assert_eq!(s.lr(500), 0.0);
        let c = Schedule {
            kind: ScheduleKind::Cosine,
            floor_ratio: 0.1,
            ..s
        };
        assert!((c.lr(60) - (0.1 + 0.9 * 0.5)).abs() < 1e-6);
        assert!((c.lr(110) - 0.1).abs() < 1e-6);
    }
}

//! Learning-rate schedules as pure functions of the global step, so a resumed run needs to
//! store nothing but the step.
//!
//! "steps" (the seed): lr divided by 10 at each of `lr_steps`, after an optional linear warmup.
//! "poly" (arcface_torch's PolyScheduler): linear warmup over `warmup` steps, then
//! lr · (1 − (step − warmup) / (total − warmup))².

use crate::config::LrSchedule;

#[derive(Debug, Clone)]
pub struct Schedule {
    pub kind: LrSchedule,
    pub base_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
    pub lr_steps: Vec<usize>,
}

impl Schedule {
    /// The learning rate for (0-based) global step `step`.
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.base_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.kind {
            LrSchedule::Steps => {
                let passed = self.lr_steps.iter().filter(|&&s| step >= s).count();
                self.base_lr * 0.1f64.powi(passed as i32)
            }
            LrSchedule::Poly => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
                self.base_lr * (1.0 - progress).powi(2)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(kind: LrSchedule, warmup: usize) -> Schedule {
        Schedule {
            kind,
            base_lr: 0.1,
            warmup_steps: warmup,
            total_steps: 100,
            lr_steps: vec![30, 60],
        }
    }

    #[test]
    fn steps_divide_by_ten() {
        let s = schedule(LrSchedule::Steps, 0);
        assert_eq!(s.lr(0), 0.1);
        assert_eq!(s.lr(29), 0.1);
        assert!((s.lr(30) - 0.01).abs() < 1e-15);
        assert!((s.lr(99) - 0.001).abs() < 1e-15);
    }

    #[test]
    fn warmup_is_linear_then_poly_decays_to_zero() {
        let s = schedule(LrSchedule::Poly, 10);
        assert!((s.lr(0) - 0.01).abs() < 1e-12);
        assert!((s.lr(9) - 0.1).abs() < 1e-12);
        assert!((s.lr(10) - 0.1).abs() < 1e-12);
        assert!((s.lr(55) - 0.1 * 0.25).abs() < 1e-12);
        assert_eq!(s.lr(100), 0.0);
    }
}

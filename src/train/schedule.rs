//! Learning-rate schedules as pure functions of the global step, so a resumed run needs to
//! store nothing but the step.
//!
//! "steps" (the seed): lr divided by 10 at each of `lr_steps`, after an optional linear warmup
//! (step s < w trains at base · (s + 1)/w).
//!
//! "poly": arcface_torch's `PolynomialLRWarmup` (lr_scheduler.py) as train_v2.py drives it,
//! one `scheduler.step()` after each optimizer step, so that step l trains at the rate left by
//! l scheduler steps: the constructor's full base rate at l = 0, base · l/w for 1 ≤ l ≤ w, then
//! base · (1 − (l − w)/(t − w))^power up to l = t and 0 after, with t the total steps and w the
//! warmup steps. PyTorch reaches the decay by multiplying the previous rate by the ratio of two
//! consecutive factors; the product telescopes to this closed form (the tests compare the two
//! step by step).

use crate::config::LrSchedule;

#[derive(Debug, Clone)]
pub struct Schedule {
    pub kind: LrSchedule,
    pub base_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
    pub lr_steps: Vec<usize>,
    /// The "poly" decay's power (arcface_torch: 1).
    pub poly_power: f64,
}

impl Schedule {
    /// The learning rate for (0-based) global step `step`.
    pub fn lr(&self, step: usize) -> f64 {
        match self.kind {
            LrSchedule::Steps => {
                if step < self.warmup_steps {
                    return self.base_lr * (step + 1) as f64 / self.warmup_steps as f64;
                }
                let passed = self.lr_steps.iter().filter(|&&s| step >= s).count();
                self.base_lr * 0.1f64.powi(passed as i32)
            }
            LrSchedule::Poly => self.poly(step),
        }
    }

    fn poly(&self, step: usize) -> f64 {
        let (w, t) = (self.warmup_steps, self.total_steps);
        if step == 0 {
            return self.base_lr;
        }
        if step <= w {
            return self.base_lr * step as f64 / w as f64;
        }
        if step >= t {
            return 0.0;
        }
        let progress = (step - w) as f64 / (t - w) as f64;
        self.base_lr * (1.0 - progress).powf(self.poly_power)
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
            poly_power: 1.0,
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
    fn poly_starts_at_the_base_rate_warms_up_then_decays_linearly_to_zero() {
        let s = schedule(LrSchedule::Poly, 10);
        assert_eq!(s.lr(0), 0.1);
        assert!((s.lr(1) - 0.01).abs() < 1e-12);
        assert!((s.lr(10) - 0.1).abs() < 1e-12);
        assert!((s.lr(55) - 0.05).abs() < 1e-12);
        assert!((s.lr(99) - 0.1 / 90.0).abs() < 1e-12);
        assert_eq!(s.lr(100), 0.0);
        let squared = Schedule {
            poly_power: 2.0,
            ..s
        };
        assert!((squared.lr(55) - 0.025).abs() < 1e-12);
    }
}

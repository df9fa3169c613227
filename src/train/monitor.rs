//! What a person watches during training: a progress bar (step, epoch, loss, img/s, ETA), log
//! lines every `frequent` steps to the terminal and to `<output>/training.log`, and TensorBoard
//! scalars in `<output>/tensorboard`.
//!
//! A write to the log or to TensorBoard that fails (a full disk) is said once on the terminal and
//! that file is no longer written; training goes on, since these are for watching it. What must
//! not be lost, the checkpoints, stop training when they cannot be written (`checkpoint.rs`).

use std::fs::File;
use std::io::Write;
use std::path::Path;

use indicatif::ProgressBar;

use super::tensorboard::EventFile;
use crate::eval::embed::TargetResult;
use crate::model::NormStatistics;

pub struct Monitor {
    pub bar: ProgressBar,
    /// None once a write failed.
    log: Option<(File, std::path::PathBuf)>,
    /// None once a write failed.
    tensorboard: Option<EventFile>,
}

impl Monitor {
    pub fn new(output: &Path, total_steps: usize, start_step: usize) -> anyhow::Result<Monitor> {
        let tb_dir = output.join("tensorboard");
        std::fs::create_dir_all(&tb_dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", tb_dir.display()))?;
        let log_path = output.join("training.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", log_path.display()))?;
        let mut events = EventFile::create(&tb_dir)?;
        // The resumed run logs from the step after its checkpoint's: the earlier run's lines of
        // that step stay, later ones go.
        events.start_at(start_step + 1)?;
        let bar = crate::progress::bar(total_steps as u64, "train");
        bar.set_position(start_step as u64);
        bar.reset_eta();
        Ok(Monitor {
            bar,
            log: Some((log, log_path)),
            tensorboard: Some(events),
        })
    }

    /// A line for the terminal (above the bar) and the log file.
    pub fn line(&mut self, text: &str) {
        self.say(text);
        if let Some((log, path)) = &mut self.log
            && let Err(e) = writeln!(log, "{text}")
        {
            let warning = format!("{}: {e}; the log is no longer written", path.display());
            self.log = None;
            self.say(&warning);
        }
    }

    /// A line for the terminal only.
    fn say(&self, text: &str) {
        // indicatif drops println on a hidden bar (stderr not a terminal): logs still want it.
        if self.bar.is_hidden() {
            println!("{text}");
        } else {
            self.bar.println(text);
        }
    }

    pub fn scalar(&mut self, tag: &str, value: f64, step: usize) {
        if let Some(events) = &mut self.tensorboard {
            let result = events.scalar(tag, value as f32, step);
            self.tensorboard_result(result);
        }
    }

    /// Stops writing TensorBoard after its first failed write, saying so on the log.
    fn tensorboard_result(&mut self, result: anyhow::Result<()>) {
        if let Err(e) = result {
            self.tensorboard = None;
            self.line(&format!("{e:#}; TensorBoard scalars are no longer written"));
        }
    }

    /// A finished step: the bar, and every `frequent` steps the log line and TensorBoard's
    /// scalars (flushed, so the curve grows as training goes).
    #[allow(clippy::too_many_arguments)]
    pub fn train_step(
        &mut self,
        step: usize,
        total_steps: usize,
        epoch: usize,
        lr: f64,
        loss: f64,
        grad_norm: f64,
        img_per_s: f64,
        frequent: usize,
    ) {
        self.bar.set_position(step as u64);
        self.bar
            .set_message(format!("epoch {epoch} loss {loss:.4} {img_per_s:.1} img/s"));
        if !step.is_multiple_of(frequent) {
            return;
        }
        self.scalar("train/loss", loss, step);
        self.scalar("train/lr", lr, step);
        self.scalar("train/img_per_s", img_per_s, step);
        self.scalar("train/grad_norm", grad_norm, step);
        self.line(&format!(
            "step {step}/{total_steps} epoch {epoch} loss {loss:.4} lr {lr:.5} grad_norm {grad_norm:.3} {img_per_s:.1} img/s"
        ));
        self.flush();
    }

    /// AdaFace's running mean and std of the feature norms (None: another head), as TensorBoard
    /// scalars every `frequent` steps: where the margins' quality scale sits.
    pub fn norm_statistics(&mut self, step: usize, frequent: usize, norms: Option<NormStatistics>) {
        if let Some(norms) = norms.filter(|_| step.is_multiple_of(frequent)) {
            self.scalar("train/adaface_norm_mean", norms.mean, step);
            self.scalar("train/adaface_norm_std", norms.std, step);
        }
    }

    pub fn validation(&mut self, step: usize, results: &[TargetResult]) {
        for r in results {
            let tag = |what: &str| format!("val/{}/{what}", r.name);
            self.scalar(&tag("accuracy"), r.accuracy, step);
            self.scalar(&tag("std"), r.std, step);
            self.scalar(&tag("xnorm"), r.xnorm, step);
            self.scalar(&tag("tar_at_far_1e-3"), r.tar_at_far_1e3, step);
            self.line(&format!(
                "[{}][{step}] XNorm {:.5}  Accuracy-Flip {:.5}+-{:.5}  threshold {:.3}  TAR@FAR=1e-3 {:.5}",
                r.name, r.xnorm, r.accuracy, r.std, r.threshold, r.tar_at_far_1e3
            ));
        }
        self.flush();
    }

    pub fn flush(&mut self) {
        if let Some(events) = &mut self.tensorboard {
            let result = events.flush();
            self.tensorboard_result(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log on a full disk (`/dev/full`): the first failed line is said and the log dropped;
    /// nothing panics, and later lines still reach the terminal.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_log_that_cannot_be_written_is_dropped() {
        let full = Path::new("/dev/full");
        let file = std::fs::OpenOptions::new().append(true).open(full).unwrap();
        let mut monitor = Monitor {
            bar: ProgressBar::hidden(),
            log: Some((file, full.to_path_buf())),
            tensorboard: None,
        };
        monitor.line("step 1");
        assert!(monitor.log.is_none());
        monitor.line("step 2");
        monitor.scalar("train/loss", 1.0, 2);
        monitor.flush();
    }
}

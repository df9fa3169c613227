//! What a person watches during training: a progress bar (step, epoch, loss, img/s, ETA), log
//! lines every `frequent` steps to the terminal and to `<output>/training.log`, and TensorBoard
//! scalars in `<output>/tensorboard`.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use indicatif::ProgressBar;
use tensorboard_rs::summary_writer::SummaryWriter;

use crate::eval::embed::TargetResult;

pub struct Monitor {
    pub bar: ProgressBar,
    log: File,
    tensorboard: SummaryWriter,
}

impl Monitor {
    pub fn new(output: &Path, total_steps: usize, start_step: usize) -> anyhow::Result<Monitor> {
        let tb_dir = output.join("tensorboard");
        std::fs::create_dir_all(&tb_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(output.join("training.log"))
            .map_err(|e| anyhow::anyhow!("{}: {e}", output.join("training.log").display()))?;
        let bar = crate::progress::bar(total_steps as u64, "train");
        bar.set_position(start_step as u64);
        bar.reset_eta();
        Ok(Monitor {
            bar,
            log,
            tensorboard: SummaryWriter::new(tb_dir),
        })
    }

    /// A line for the terminal (above the bar) and the log file.
    pub fn line(&mut self, text: &str) {
        // indicatif drops println on a hidden bar (stderr not a terminal): logs still want it.
        if self.bar.is_hidden() {
            println!("{text}");
        } else {
            self.bar.println(text);
        }
        let _ = writeln!(self.log, "{text}");
    }

    pub fn scalar(&mut self, tag: &str, value: f64, step: usize) {
        self.tensorboard.add_scalar(tag, value as f32, step);
    }

    pub fn step(&mut self, step: usize, epoch: usize, loss: f64, img_per_s: f64) {
        self.bar.set_position(step as u64);
        self.bar
            .set_message(format!("epoch {epoch} loss {loss:.4} {img_per_s:.1} img/s"));
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
        self.tensorboard.flush();
        let _ = self.log.flush();
    }
}

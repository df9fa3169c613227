//! The other implementations, timed by their own scripts in the same call as ours so that a
//! ratio compares like with like: arcface_torch's PartialFC_V2 in PyTorch
//! (scripts/bench_partial_fc.py) and onnxruntime (scripts/bench_onnxruntime.py).

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::{HeadBenchOptions, InferThroughput};

/// PyTorch's numbers for one sample rate (scripts/bench_partial_fc.py's JSON).
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct TorchHead {
    pub head_ms: f64,
    pub optimizer_ms: f64,
    pub step_ms: f64,
    pub threads: usize,
    pub torch: String,
}

/// scripts/bench_partial_fc.py on `device` ("cpu", "cuda:0") with the same sizes; Python from
/// ARCFACE_TORCH_PYTHON, else the venv of scripts/setup-libtorch.sh (VIRTUAL_ENV), else python3.
pub fn pytorch_head(o: &HeadBenchOptions, device: &str) -> Result<TorchHead> {
    let python = std::env::var("ARCFACE_TORCH_PYTHON")
        .ok()
        .or_else(|| {
            std::env::var("VIRTUAL_ENV")
                .ok()
                .map(|v| format!("{v}/bin/python"))
        })
        .unwrap_or_else(|| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_partial_fc.py");
    let output = std::process::Command::new(&python)
        .arg(&script)
        .args(["--classes", &o.classes.to_string()])
        .args(["--embedding", &o.embedding_size.to_string()])
        .args(["--batch", &o.batch.to_string()])
        .args(["--sample-rate", &o.sample_rate.to_string()])
        .args(["--steps", &o.steps.to_string()])
        .args(["--warmup", &o.warmup.to_string()])
        .args(["--device", device])
        .arg("--json")
        .output()
        .with_context(|| format!("running {python} {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed (is torch installed for {python}? set ARCFACE_TORCH_PYTHON): {}",
            script.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let line = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(line.trim())
        .with_context(|| format!("{}: unexpected output `{}`", script.display(), line.trim()))
}

/// scripts/bench_onnxruntime.py on `file`, timed as [`super::infer`] times ours; Python from
/// ARCFACE_PYTHON, else python3.
pub fn onnxruntime(file: &Path, batch: usize, seconds: f64) -> Result<InferThroughput> {
    let python = std::env::var("ARCFACE_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_onnxruntime.py");
    let output = std::process::Command::new(&python)
        .arg(&script)
        .arg(file)
        .args([
            "--batch",
            &batch.to_string(),
            "--seconds",
            &seconds.to_string(),
        ])
        .output()
        .with_context(|| format!("running {python} {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed (is onnxruntime installed for {python}? set ARCFACE_PYTHON): {}",
            script.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let line = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(line.trim())
        .with_context(|| format!("{}: unexpected output `{}`", script.display(), line.trim()))
}

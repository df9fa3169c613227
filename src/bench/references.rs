//! The other implementations, timed by their own scripts in the same call as ours so that a
//! ratio compares like with like: arcface_torch's PartialFC_V2 in PyTorch
//! (scripts/bench_partial_fc.py) and onnxruntime (scripts/bench_onnxruntime.py).

use std::ffi::OsString;
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
    let args: Vec<OsString> = [
        "--classes".to_string(),
        o.classes.to_string(),
        "--embedding".into(),
        o.embedding_size.to_string(),
        "--batch".into(),
        o.batch.to_string(),
        "--sample-rate".into(),
        o.sample_rate.to_string(),
        "--steps".into(),
        o.steps.to_string(),
        "--warmup".into(),
        o.warmup.to_string(),
        "--device".into(),
        device.to_string(),
        "--json".into(),
    ]
    .map(OsString::from)
    .into();
    let hint = format!("is torch installed for {python}? set ARCFACE_TORCH_PYTHON");
    run_script(&python, "bench_partial_fc.py", &args, &hint)
}

/// scripts/bench_onnxruntime.py on `file`, timed as [`super::infer`] times ours; Python from
/// ARCFACE_PYTHON, else python3.
pub fn onnxruntime(file: &Path, batch: usize, seconds: f64) -> Result<InferThroughput> {
    let python = std::env::var("ARCFACE_PYTHON").unwrap_or_else(|_| "python3".into());
    let args = [
        file.as_os_str().to_owned(),
        "--batch".into(),
        batch.to_string().into(),
        "--seconds".into(),
        seconds.to_string().into(),
    ];
    let hint = format!("is onnxruntime installed for {python}? set ARCFACE_PYTHON");
    run_script(&python, "bench_onnxruntime.py", &args, &hint)
}

/// Runs scripts/`script` with `args` under `python` and parses the JSON line it prints; a
/// failure says `hint`.
fn run_script<T: serde::de::DeserializeOwned>(
    python: &str,
    script: &str,
    args: &[OsString],
    hint: &str,
) -> Result<T> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(script);
    let output = std::process::Command::new(python)
        .arg(&script)
        .args(args)
        .output()
        .with_context(|| format!("running {python} {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed ({hint}): {}",
            script.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let line = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(line.trim())
        .with_context(|| format!("{}: unexpected output `{}`", script.display(), line.trim()))
}

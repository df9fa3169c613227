//! The other implementations, timed by their own scripts in the same call as ours so that a
//! ratio compares like with like: arcface_torch's PartialFC_V2 in PyTorch
//! (scripts/bench_partial_fc.py) and onnxruntime (scripts/bench_onnxruntime.py).

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

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

/// Rounds of ours and of onnxruntime (scripts/bench_onnxruntime.py) alternated in one call,
/// `rounds` each, `seconds` in all for each: a machine that speeds up or slows down during the
/// call (these shared ones drift by up to 2× within minutes) moves both alike. Returns ours
/// and onnxruntime's throughputs, the rounds summed, each with its rounds' rates.
pub fn alternate_with_onnxruntime(
    engine: &str,
    ours: &crate::embedder::Embedder,
    file: &Path,
    (batch, seconds, rounds): (usize, f64, usize),
) -> Result<[InferThroughput; 2]> {
    let mut runtime = OnnxRuntime::start(file, batch)?;
    let mut measured: [Vec<InferThroughput>; 2] = Default::default();
    for _ in 0..rounds {
        measured[0].push(super::infer(
            engine,
            ours,
            batch,
            seconds / rounds as f64,
            None,
        )?);
        measured[1].push(runtime.time(seconds / rounds as f64)?);
    }
    Ok(measured.map(|rounds| InferThroughput::summed(&rounds)))
}

/// onnxruntime on `file` in a process of its own (scripts/bench_onnxruntime.py --serve),
/// timing one round whenever asked; Python from ARCFACE_PYTHON, else python3.
pub struct OnnxRuntime {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    python: String,
}

impl OnnxRuntime {
    /// Starts it and waits until it has loaded the model and run its warm-up batch.
    pub fn start(file: &Path, batch: usize) -> Result<OnnxRuntime> {
        let python = std::env::var("ARCFACE_PYTHON").unwrap_or_else(|_| "python3".into());
        let script = script_path("bench_onnxruntime.py");
        let mut child = Command::new(&python)
            .arg(&script)
            .arg(file)
            .args(["--batch", &batch.to_string(), "--serve"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {python} {}", script.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("{python} {}: no pipes to it", script.display());
        };
        let mut runtime = OnnxRuntime {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            python,
        };
        let _ready: serde_json::Value = runtime.read()?;
        Ok(runtime)
    }

    /// Embeddings per second over at least `seconds` and two batches.
    pub fn time(&mut self, seconds: f64) -> Result<InferThroughput> {
        // A closed pipe means the process has gone: `read` then says why.
        let _ = writeln!(self.stdin, "{seconds}").and_then(|()| self.stdin.flush());
        self.read()
    }

    /// Its next JSON line; if it has exited, its error output.
    fn read<T: serde::de::DeserializeOwned>(&mut self) -> Result<T> {
        let script = script_path("bench_onnxruntime.py");
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let mut stderr = String::new();
            if let Some(pipe) = self.child.stderr.as_mut() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            bail!(
                "{} failed (is onnxruntime installed for {}? set ARCFACE_PYTHON): {}",
                script.display(),
                self.python,
                stderr.trim()
            );
        }
        serde_json::from_str(line.trim())
            .with_context(|| format!("{}: unexpected output `{}`", script.display(), line.trim()))
    }
}

impl Drop for OnnxRuntime {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn script_path(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(script)
}

/// Runs scripts/`script` with `args` under `python` and parses the JSON line it prints; a
/// failure says `hint`.
fn run_script<T: serde::de::DeserializeOwned>(
    python: &str,
    script: &str,
    args: &[OsString],
    hint: &str,
) -> Result<T> {
    let script = script_path(script);
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

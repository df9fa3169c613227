//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python that runs reference implementations: $ARCFACE_PYTHON, else the repo's .venv
/// (made by `.ci/run`), else `python3`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("ARCFACE_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = root().join(".venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// Runs a reference script with JSON on stdin and parses its JSON stdout. Panics with a hint
/// when Python or numpy is missing: these references are part of the proof, not optional.
pub fn run_reference(script: &str, input: &serde_json::Value) -> serde_json::Value {
    let path = root().join("tests/reference").join(script);
    let mut child = Command::new(python())
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {:?} ({e}); run `bash .ci/run` once or set ARCFACE_PYTHON",
                python()
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{} failed (numpy installed? `bash .ci/run` makes .venv with it):\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("reference output is JSON")
}

/// Runs tests/reference/`script` with the Python of the torch venv (scripts/setup-libtorch.sh
/// sets VIRTUAL_ENV) on `query`.
pub fn torch_reference(script: &str, query: &serde_json::Value) -> serde_json::Value {
    let python = std::env::var_os("VIRTUAL_ENV")
        .map(|v| PathBuf::from(v).join("bin/python"))
        .expect(
            "VIRTUAL_ENV: run the tests that compare with PyTorch after `eval \"$(scripts/setup-libtorch.sh)\"` (`bash .ci/run` does)",
        );
    // -W ignore: torch warns that this venv has no numpy, which the reference does not use.
    let mut child = Command::new(&python)
        .args(["-W", "ignore"])
        .arg(root().join("tests/reference").join(script))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", python.display()));
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(query.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{script} failed on {query}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The `arcface` binary built for these tests.
pub fn arcface() -> Command {
    Command::new(env!("CARGO_BIN_EXE_arcface"))
}

/// burn's CPU backend has one random generator per process: tests of one binary that seed it
/// and draw from it take turns through this lock, or their draws would interleave.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// 20 synthetic identities × 6 images (seed 11) with 40 validation pairs in `data`, made once:
/// the small training set of the training tests.
pub fn small_synthetic(data: &std::path::Path) {
    if !data.join("train.rec").exists() {
        arcface::data::synth::generate(
            data,
            &arcface::data::synth::SynthConfig::new(20, 6, 40, 11),
            &indicatif::ProgressBar::hidden(),
        )
        .unwrap();
    }
}

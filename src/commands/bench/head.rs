//! `arcface bench head`: partial FC's step at a large class count over sample rates, and with
//! `--torch` arcface_torch's PartialFC_V2 on the same sizes in the same call (the ratio).

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use arcface::bench::{HeadBenchOptions, HeadThroughput, head};
use arcface::distributed::Group;

/// PyTorch's numbers for one sample rate (scripts/bench_partial_fc.py's JSON).
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct TorchHead {
    pub head_ms: f64,
    pub optimizer_ms: f64,
    pub step_ms: f64,
    pub threads: usize,
    pub torch: String,
}

#[derive(Debug, Serialize)]
struct Row {
    ours: HeadThroughput,
    pytorch: Option<TorchHead>,
    /// PyTorch's step time over ours (> 1: ours is faster).
    speedup: Option<f64>,
}

/// Runs the head's benchmark for each of `rates`, PyTorch's too with `torch` on
/// `torch_device` (rank 0 prints).
pub fn run(
    options: &HeadBenchOptions,
    rates: &[f64],
    torch: bool,
    torch_device: &str,
    device: &burn::tensor::Device,
    group: &mut Group,
    json: bool,
) -> Result<()> {
    let mut rows = Vec::new();
    for &rate in rates {
        if !(rate > 0.0 && rate <= 1.0) {
            bail!("--sample-rates: {rate} is not in (0, 1]");
        }
        let o = HeadBenchOptions {
            sample_rate: rate,
            ..options.clone()
        };
        let ours = head(&o, device, group)?;
        let pytorch = match torch && group.is_main() {
            true => Some(pytorch(&o, torch_device)?),
            false => None,
        };
        let speedup = pytorch.as_ref().map(|p| p.step_ms / ours.step_ms);
        rows.push(Row {
            ours,
            pytorch,
            speedup,
        });
    }
    group.barrier("end of the benchmark")?;
    group.finish();
    if !group.is_main() {
        return Ok(());
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let r0 = &rows[0].ours;
    println!(
        "partial FC head, {} classes × {} ({} rank(s), {}), batch {} per rank: ms per step",
        r0.classes, r0.embedding_size, r0.world_size, r0.backend, r0.batch
    );
    println!(
        "{:>6} {:>9} {:>9} {:>10} {:>9} {:>11} {:>12} {:>9}",
        "rate", "centres", "head", "optimizer", "step", "collectives", "PyTorch step", "speedup"
    );
    for r in &rows {
        let o = &r.ours;
        println!(
            "{:>6} {:>9} {:>9.1} {:>10.1} {:>9.1} {:>11.1} {:>12} {:>9}",
            o.sample_rate,
            o.num_sample,
            o.head_ms,
            o.optimizer_ms,
            o.step_ms,
            o.collectives_ms,
            r.pytorch
                .as_ref()
                .map_or("-".into(), |p| format!("{:.1}", p.step_ms)),
            r.speedup.map_or("-".into(), |s| format!("{s:.2}×")),
        );
    }
    println!(
        "head {:.2} GB per rank (centres, momentum, gradient), peak host memory {:.0} MiB",
        r0.head_bytes_per_rank as f64 / 1e9,
        rows.iter()
            .map(|r| r.ours.peak_host_mib)
            .fold(0.0, f64::max)
    );
    Ok(())
}

/// scripts/bench_partial_fc.py on `device` ("cpu", "cuda:0") with the same sizes; Python from
/// ARCFACE_TORCH_PYTHON, else the venv of scripts/setup-libtorch.sh (VIRTUAL_ENV), else python3.
fn pytorch(o: &HeadBenchOptions, device: &str) -> Result<TorchHead> {
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

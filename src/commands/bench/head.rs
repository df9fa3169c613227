//! `arcface bench head`: partial FC's step at a large class count over sample rates, and with
//! `--torch` arcface_torch's PartialFC_V2 on the same sizes in the same call (the ratio).

use anyhow::{Result, bail};
use serde::Serialize;

use arcface::bench::{self, HeadBenchOptions, HeadThroughput, TorchHead, head};
use arcface::device::DeviceSpec;
use arcface::distributed;
use arcface::distributed::Group;

#[derive(clap::Args)]
pub struct HeadArgs {
    #[arg(long, default_value_t = 1_000_000)]
    classes: usize,
    #[arg(long, default_value_t = 512)]
    embedding_size: usize,
    /// Embeddings per rank and step.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    #[arg(long, value_delimiter = ',', default_value = "1,0.3,0.1")]
    sample_rates: Vec<f64>,
    #[arg(long, default_value_t = 3)]
    steps: usize,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Also run PyTorch's PartialFC_V2 (CPU, world size 1) and print the ratio.
    #[arg(long)]
    torch: bool,
    /// Ranks to start on this machine (LibTorch's CPU).
    #[arg(long)]
    nproc_per_node: Option<usize>,
    #[arg(long)]
    json: bool,
}

pub fn run(args: &HeadArgs, cli_device: &Option<String>) -> Result<()> {
    let HeadArgs {
        classes,
        embedding_size,
        batch,
        sample_rates,
        steps,
        warmup,
        torch,
        nproc_per_node,
        json,
    } = args;
    let text = cli_device.as_deref().unwrap_or("cpu");
    let spec = super::super::device_spec(text)?;
    let timeout = std::time::Duration::from_secs(600);
    let Some((spec, device, mut group)) =
        distributed::rank_or_spawn(&spec, *nproc_per_node, timeout)?
    else {
        return Ok(());
    };
    let torch_device = match &spec {
        DeviceSpec::Cuda(indices) => format!("cuda:{}", indices[0]),
        _ => "cpu".to_string(),
    };
    let options = bench::HeadBenchOptions {
        classes: *classes,
        embedding_size: *embedding_size,
        batch: *batch,
        sample_rate: 1.0,
        warmup: *warmup,
        steps: (*steps).max(1),
    };
    rates(
        &options,
        sample_rates,
        *torch,
        &torch_device,
        &device,
        &mut group,
        *json,
    )?;
    Ok(())
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
pub fn rates(
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
            true => Some(bench::pytorch_head(&o, torch_device)?),
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

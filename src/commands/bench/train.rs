//! `arcface bench train`: training steps on random tensors (loader excluded), forward,
//! head, backward and optimizer times, on one rank or several.

use std::path::PathBuf;

use anyhow::{Result, bail};

use arcface::bench::{self, TrainThroughput};
use arcface::config::Config;
use arcface::distributed;
use arcface::model::Precision;

#[derive(clap::Args)]
pub struct TrainArgs {
    #[arg(long)]
    config: PathBuf,
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Batch size per device (the config's otherwise).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Classes of the head (the dataset's otherwise, else 1000).
    #[arg(long, alias = "classes")]
    num_classes: Option<usize>,
    /// Partial FC's share of each rank's centres per step (the config's otherwise).
    #[arg(long)]
    sample_rate: Option<f64>,
    /// The config's `precision` otherwise.
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    /// Images and activations stored channels-last (NHWC; LibTorch only), whatever the
    /// config's `channels_last` says.
    #[arg(long)]
    channels_last: bool,
    /// Untimed steps first (cuDNN's benchmark mode picks its algorithms on the first).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Output channels of the four stages instead of the network's, e.g. 8,8,8,8: at tiny
    /// widths (and batch) the kernels do almost nothing, and the step time is the
    /// framework's own cost of each operation at the network's depth, as
    /// scripts/torch_profile.py --widths measures PyTorch's.
    #[arg(long, value_delimiter = ',')]
    widths: Option<Vec<usize>>,
    /// Then record 3 more steps with libtorch's profiler into this Chrome trace (.json;
    /// LibTorch builds only; summarise with scripts/profile_summary.py).
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Start this many ranks here on LibTorch's CPU (as `train --nproc-per-node`); for
    /// GPUs list them (--device cuda:0,1,2,3) or run under torchrun.
    #[arg(long)]
    nproc_per_node: Option<usize>,
    #[arg(long)]
    json: bool,
}

pub fn run(args: &TrainArgs, cli_device: &Option<String>) -> Result<()> {
    let TrainArgs {
        config,
        steps,
        batch_size,
        num_classes,
        sample_rate,
        precision,
        channels_last,
        warmup,
        widths,
        profile,
        nproc_per_node,
        json,
    } = args;
    if let Some(trace) = profile {
        arcface::profile::prepare(trace)?;
    }
    let widths = match widths.as_deref() {
        None => None,
        Some(&[a, b, c, d]) if ![a, b, c, d].contains(&0) => Some([a, b, c, d]),
        Some(other) => bail!(
            "--widths {other:?}: four positive numbers are needed, one per stage, e.g. 8,8,8,8"
        ),
    };
    let mut config = Config::load(config)?;
    if let Some(b) = batch_size {
        config.batch_size = *b;
    }
    if let Some(p) = precision {
        config.precision = *p;
    }
    if let Some(r) = sample_rate {
        config.sample_rate = *r;
        if let Err(e) = config.validate() {
            bail!("--sample-rate {r}: {e}");
        }
    }
    config.channels_last |= *channels_last;
    let classes = num_classes
        .or_else(|| config.resolve_num_classes().ok())
        .unwrap_or(1000);
    let text = cli_device.as_deref().unwrap_or(&config.device);
    let spec = super::super::device_spec(text)?;
    let options = bench::TrainBenchOptions {
        warmup: *warmup,
        profile: profile.clone(),
        widths,
    };
    let timeout = std::time::Duration::from_secs(config.dist_timeout);
    let Some((spec, device, group)) = distributed::rank_or_spawn(&spec, *nproc_per_node, timeout)?
    else {
        return Ok(());
    };
    let main = group.is_main();
    let r = bench::train(&config, classes, *steps, &spec, &device, group, &options)?;
    if !main {
        // Rank 0 reports for all.
    } else if *json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_line(&r);
    }
    Ok(())
}

/// The result as one line.
fn print_line(r: &TrainThroughput) {
    let gpu = r
        .peak_gpu_mib
        .map_or(String::new(), |m| format!(", peak GPU memory {m:.0} MiB"))
        + &r.peak_allocated_mib.map_or(String::new(), |m| {
            format!(" (allocated by libtorch {m:.0} MiB)")
        });
    let widths = match r.widths {
        Some(w) => format!(" (widths {w:?})"),
        None => String::new(),
    };
    let ranks = match r.world_size {
        1 => String::new(),
        n => format!(
            " × {n} ranks ({}: all-reduce {:.1} ms, {:.1} MB sent per rank; head collectives {:.1} ms, {:.2} MB)",
            r.backend,
            r.all_reduce_ms,
            r.all_reduce_bytes_per_rank as f64 / 1e6,
            r.head_collectives_ms,
            r.head_bytes_sent_per_rank as f64 / 1e6
        ),
    };
    println!(
        "{}{widths} {}{} on {}{ranks} batch {} per rank, classes {} at sample rate {} (head {:.1} MB per rank): forward {:.1} ms, head {:.1} ms, backward {:.1} ms, optimizer ({}) {:.1} ms, step {:.1} ms, {:.1} img/s, loss {:.3}, peak host memory {:.0} MiB{gpu}",
        r.network,
        r.precision,
        if r.channels_last {
            " channels-last"
        } else {
            ""
        },
        r.device,
        r.batch_size,
        r.num_classes,
        r.sample_rate,
        r.head_bytes_per_rank as f64 / 1e6,
        r.forward_ms,
        r.head_ms,
        r.backward_ms,
        r.optimizer,
        r.optimizer_ms,
        r.step_ms,
        r.images_per_second,
        r.loss,
        r.peak_host_mib
    );
    if let Some(trace) = &r.profile {
        println!("profile of 3 more steps: {}", trace.display());
    }
}

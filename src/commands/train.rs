//! `arcface train`: the main job. A plain run trains in this process on one device; under
//! torchrun (or a script that sets the same variables) this process is one rank; with several
//! devices listed (`cuda:0,1,2,3`) or `--nproc-per-node N`, it starts those ranks itself and
//! waits for them.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use arcface::config::Config;
use arcface::device::DeviceSpec;
use arcface::dist;
use arcface::train;

#[derive(clap::Args)]
pub struct TrainArgs {
    #[arg(long)]
    config: PathBuf,
    /// Continue from the newest checkpoint in the output folder, or from the given file.
    #[arg(long, num_args = 0..=1, default_missing_value = "latest")]
    resume: Option<String>,
    /// Start the backbone from this checkpoint (fine-tuning, e.g. a model zoo file brought in
    /// with `arcface import`); head and optimizer start fresh.
    #[arg(long, conflicts_with = "resume")]
    init: Option<PathBuf>,
    /// Stop after this many steps (smoke tests); the config's epochs otherwise.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Start this many ranks on this machine (as torchrun --nproc-per-node), on LibTorch's CPU
    /// (`--device libtorch-cpu`); for GPUs, list them: --device cuda:0,1,2,3.
    #[arg(long)]
    nproc_per_node: Option<usize>,
}

pub fn run(args: &TrainArgs, cli_device: &Option<String>) -> Result<()> {
    let config = Config::load(&args.config)?;
    let text = cli_device.as_deref().unwrap_or(&config.device);
    let spec: DeviceSpec = text
        .parse()
        .with_context(|| format!("selecting device `{text}`"))?;
    let timeout = Duration::from_secs(config.dist_timeout);
    let Some((_, device, mut group)) = dist::rank_or_spawn(&spec, args.nproc_per_node, timeout)?
    else {
        return Ok(());
    };
    let resume = args.resume.as_ref().map(|r| match r.as_str() {
        "latest" => train::Resume::Latest,
        path => train::Resume::Path(PathBuf::from(path)),
    });
    let options = train::TrainOptions {
        resume,
        max_steps: args.max_steps,
        init: args.init.clone(),
    };
    let report = train::train_with(&config, &device, &mut group, &options)?;
    if let Some((step, results)) = report.validations.last() {
        for r in results {
            println!(
                "{} at step {step}: accuracy {:.4} ± {:.4}",
                r.name, r.accuracy, r.std
            );
        }
    }
    Ok(())
}

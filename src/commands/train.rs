//! `arcface train`: the main job. A plain run trains in this process on one device; under
//! torchrun (or a script that sets the same variables) this process is one rank; with several
//! devices listed (`cuda:0,1,2,3`) or `--nproc-per-node N`, it starts those ranks itself and
//! waits for them.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use arcface::config::Config;
use arcface::distributed;
use arcface::signals;
use arcface::train;

#[derive(clap::Args)]
pub struct TrainArgs {
    #[arg(long)]
    config: PathBuf,
    /// Continue from the newest whole checkpoint in the output folder (`--resume`), from the
    /// given file, or `--resume auto`: from the newest if there is one, else start fresh — the
    /// command line to repeat under torchrun --max-restarts, Slurm --requeue or a retry loop.
    #[arg(long, num_args = 0..=1, default_missing_value = "latest", value_name = "auto|FILE")]
    resume: Option<String>,
    /// Start the backbone from this checkpoint (fine-tuning, e.g. a model zoo file brought in
    /// with `arcface import`); head and optimizer start fresh. With `--resume auto`, only while
    /// the run has no checkpoint of its own yet.
    #[arg(long)]
    init: Option<PathBuf>,
    /// The output folder holds an earlier run: delete its checkpoints, best.ckpt, training.log
    /// and TensorBoard events first (a fresh run there is refused otherwise).
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Stop after this many steps (smoke tests); the config's epochs otherwise.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Start this many ranks on this machine (as torchrun --nproc-per-node), on LibTorch's CPU
    /// (`--device libtorch-cpu`); for GPUs, list them: --device cuda:0,1,2,3.
    #[arg(long)]
    nproc_per_node: Option<usize>,
}

pub fn run(args: &TrainArgs, cli_device: &Option<String>) -> Result<()> {
    // First of all, so that a stop signal at any moment from here on ends in a checkpoint
    // (after the first step, if it comes before). A launcher of ranks forwards them instead
    // (`distributed::spawn`).
    signals::watch(signals::Role::Rank)
        .context("taking the stop signals (SIGTERM, SIGINT, SIGUSR1)")?;
    let config = Config::load(&args.config)?;
    let text = cli_device.as_deref().unwrap_or(&config.device);
    let spec = super::device_spec(text)?;
    let timeout = Duration::from_secs(config.dist_timeout);
    let Some((_, device, mut group)) =
        distributed::rank_or_spawn(&spec, args.nproc_per_node, timeout)?
    else {
        return Ok(());
    };
    let resume = args.resume.as_ref().map(|r| match r.as_str() {
        "latest" => train::Resume::Latest,
        "auto" => train::Resume::Auto,
        path => train::Resume::Path(PathBuf::from(path)),
    });
    let options = train::TrainOptions {
        resume,
        max_steps: args.max_steps,
        init: args.init.clone(),
        overwrite: args.overwrite,
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

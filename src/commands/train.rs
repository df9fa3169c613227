//! `arcface train`: the main job.

use std::path::PathBuf;

use anyhow::Result;

use arcface::config::Config;
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
}

pub fn run(args: &TrainArgs, cli_device: &Option<String>) -> Result<()> {
    let config = Config::load(&args.config)?;
    let devices = super::devices(cli_device, &config)?;
    let resume = args.resume.as_ref().map(|r| match r.as_str() {
        "latest" => train::Resume::Latest,
        path => train::Resume::Path(PathBuf::from(path)),
    });
    let options = train::TrainOptions {
        resume,
        max_steps: args.max_steps,
        init: args.init.clone(),
    };
    let report = train::train_replicas(&config, &devices, &options)?;
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

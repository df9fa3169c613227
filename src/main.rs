//! The `arcface` command line: parses arguments, picks the device, calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use burn::tensor::Device;
use clap::{Parser, Subcommand};

use arcface::config::Config;
use arcface::device;
use arcface::model::{backbone_config, summary};

#[derive(Parser)]
#[command(
    name = "arcface",
    version,
    about = "Train and run ArcFace face-recognition embedders"
)]
struct Cli {
    /// Device override for any command: cpu, cuda, cuda:N, cuda:N,M,... or libtorch-cpu
    /// (the config's `device` otherwise).
    #[arg(long, global = true)]
    device: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Per-stage output shapes, parameter counts and forward GFLOPs of a config's backbone.
    Summary {
        #[arg(long)]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The config's device unless `--device` overrides it.
fn devices(cli_device: &Option<String>, config: &Config) -> Result<Vec<Device>> {
    let text = cli_device.as_deref().unwrap_or(&config.device);
    device::select(text).with_context(|| format!("selecting device `{text}`"))
}

fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Summary { config, json } => {
            let config = Config::load(config)?;
            let device = devices(&cli.device, &config)?.remove(0);
            // Built lazily on an autodiff device: shapes and counts need no weights, and the
            // autodiff device is what knows which parameters are trainable.
            let model = backbone_config(&config).init(&device.autodiff());
            let summary = summary::summarize(&model, config.network.name());
            if *json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!("{summary}");
            }
        }
    }
    Ok(())
}

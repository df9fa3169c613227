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

/// What insightface calls a margin triple.
fn margin_name([m1, m2, m3]: [f64; 3]) -> &'static str {
    match (m1 == 1.0, m2 > 0.0, m3 > 0.0) {
        (true, true, false) => "ArcFace",
        (true, false, true) => "CosFace",
        (true, false, false) => "plain",
        (false, false, false) => "SphereFace-style",
        _ => "combined",
    }
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
            // The head is sized by the dataset, which may not be here yet: report it if known.
            let num_classes = config.resolve_num_classes().ok();
            let head_params = num_classes.map(|n| n * config.embedding_size);
            if *json {
                let mut value = serde_json::to_value(&summary)?;
                value["num_classes"] = serde_json::json!(num_classes);
                value["head_params"] = serde_json::json!(head_params);
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!("{summary}");
                match num_classes {
                    Some(n) => println!(
                        "head: {} classes × {} = {} parameters ({} margin softmax)",
                        summary::thousands(n),
                        config.embedding_size,
                        summary::thousands(n * config.embedding_size),
                        margin_name(config.margin_list)
                    ),
                    None => println!(
                        "head: sized from {} (not found; or set num_classes)",
                        config.rec.join("property").display()
                    ),
                }
            }
        }
    }
    Ok(())
}

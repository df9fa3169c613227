//! `arcface summary`: shapes, parameter counts and GFLOPs of a config's backbone.

use std::path::PathBuf;

use anyhow::Result;

use arcface::config::Config;
use arcface::model::summary;

#[derive(clap::Args)]
pub struct SummaryArgs {
    #[arg(long)]
    config: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
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

pub fn run(args: &SummaryArgs, cli_device: &Option<String>) -> Result<()> {
    let config = Config::load(&args.config)?;
    // Not the config's `device`: describing r100 should not need the GPU it will train on.
    let device = super::device_or_cpu(cli_device)?;
    // Built lazily on an autodiff device: shapes and counts need no weights, and the
    // autodiff device is what knows which parameters are trainable.
    let model = config.backbone().init(&device.autodiff());
    let summary = summary::summarize(&model, config.network.name());
    // The head is sized by the dataset, which may not be here yet: report it if known.
    let num_classes = config.resolve_num_classes().ok();
    let head_params = num_classes.map(|n| n * config.embedding_size);
    if args.json {
        let mut value = serde_json::to_value(&summary)?;
        value["num_classes"] = serde_json::json!(num_classes);
        value["head_params"] = serde_json::json!(head_params);
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
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
    Ok(())
}

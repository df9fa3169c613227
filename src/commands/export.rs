//! `arcface export`: a checkpoint's backbone (or a config's fresh one) as safetensors under
//! arcface_torch's names or as an opset-8 ONNX embedder; `import` is its reverse (`import.rs`).

use std::path::PathBuf;

use anyhow::{Result, bail};

use burn::module::Module;

use arcface::checkpoint::{load_backbone, named_tensors};
use arcface::config::Config;
use arcface::interop::onnx::{self, Batch};

#[derive(clap::Args)]
pub struct ExportArgs {
    /// A checkpoint (.ckpt) written by `arcface train` or `arcface import`.
    #[arg(long, required_unless_present = "config", conflicts_with = "config")]
    model: Option<PathBuf>,
    /// Export freshly initialised weights of this config's backbone (smoke tests, benchmarks),
    /// initialised on the CPU (or `--device`): a seed gives the same file on every machine.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Initialisation seed with --config (the config's `seed` otherwise).
    #[arg(long, requires = "config")]
    seed: Option<u64>,
    /// Write the backbone as safetensors with arcface_torch's iresnet names and layouts.
    #[arg(long, required_unless_present = "onnx")]
    safetensors: Option<PathBuf>,
    /// Write an opset-8 ONNX embedder (input `data` RGB 0–255, output `fc1`), as the zoo's.
    #[arg(long)]
    onnx: Option<PathBuf>,
    /// The ONNX file's batch dimension: a number, or `dynamic`.
    #[arg(long, default_value = "dynamic")]
    batch: Batch,
}

pub fn export(args: &ExportArgs, cli_device: &Option<String>) -> Result<()> {
    let (model, source) = match (&args.model, &args.config) {
        (Some(path), _) => {
            let device = super::device_or_cpu(cli_device)?;
            let (model, meta) = load_backbone(path, &device)?;
            (
                model,
                format!("{} ({})", path.display(), meta.config.network),
            )
        }
        (None, Some(path)) => {
            let config = Config::load(path)?;
            // Not the config's `device`: where the weights are drawn changes them (each
            // backend has its own generator), and exporting needs no GPU.
            let device = super::device_or_cpu(cli_device)?;
            let seed = args.seed.unwrap_or(config.seed);
            device.seed(seed);
            let model = config.backbone().init(&device).valid();
            (
                model,
                format!(
                    "{} ({}, initialised with seed {seed})",
                    path.display(),
                    config.network
                ),
            )
        }
        (None, None) => bail!("give --model CKPT or --config FILE"),
    };
    if let Some(out) = &args.safetensors {
        let family = arcface::interop::arcface_torch::Family::of_backbone(&model);
        arcface::interop::safetensors::write(family, &named_tensors(&model, "backbone."), out)?;
        println!("wrote {source} to {}", out.display());
    }
    if let Some(out) = &args.onnx {
        let proto = onnx::backbone_to_onnx(&model, args.batch)?;
        onnx::export::write(&proto, out)?;
        println!(
            "wrote {source} to {} (opset 8, batch {:?})",
            out.display(),
            args.batch
        );
    }
    Ok(())
}

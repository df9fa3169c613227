//! `arcface export` (safetensors, opset-8 ONNX) and `arcface import` (an LResNet-E-IR ONNX
//! file's weights into our checkpoint).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use burn::module::Module;

use arcface::checkpoint::{load_backbone, named_tensors};
use arcface::config::Config;
use arcface::model::backbone_config;
use arcface::model::summary::thousands;
use arcface::onnx::{self, Batch, InputConvention};

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

#[derive(clap::Args)]
pub struct ImportArgs {
    /// An LResNet-E-IR ONNX file: the zoo's arcfaceresnet100-8.onnx, arcface_torch's
    /// torch2onnx.py exports (BatchNorm folded), MXNet's, or one of ours.
    #[arg(long, required_unless_present = "pth", conflicts_with = "pth")]
    onnx: Option<PathBuf>,
    /// arcface_torch's backbone.pth (torch.save of an iresnet's state dict; its training
    /// checkpoint_gpu_*.pt too), in torch.save's zip or legacy format.
    #[arg(long)]
    pth: Option<PathBuf>,
    /// The network the .pth holds (found from its names and shapes when not given).
    #[arg(long, value_enum, requires = "pth")]
    network: Option<arcface::model::Network>,
    /// The checkpoint to write.
    #[arg(long)]
    out: PathBuf,
    /// What pixels the ONNX file takes (found as insightface finds it unless given).
    #[arg(long, value_enum, default_value_t)]
    onnx_input: InputConvention,
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
            let model = backbone_config(&config).init(&device).valid();
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
        let family = arcface::arcface_torch::Family::of_backbone(&model);
        arcface::export::safetensors::write(family, &named_tensors(&model, "backbone."), out)?;
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

pub fn import(args: &ImportArgs, cli_device: &Option<String>) -> Result<()> {
    if let Some(path) = &args.pth {
        let imported = arcface::arcface_torch::pth::read(path, args.network)?;
        // Loading into our backbone checks every tensor against the model once more.
        let device = super::device_or_cpu(cli_device)?;
        imported
            .backbone(&device)
            .with_context(|| path.display().to_string())?;
        imported.checkpoint().save(&args.out)?;
        for note in &imported.notes {
            println!("note: {note}");
        }
        return imported_line(path, &imported, &args.out, "");
    }
    let path = args
        .onnx
        .as_ref()
        .context("give --onnx FILE or --pth FILE")?;
    let context = || path.display().to_string();
    let (proto, prepared, imported) = onnx::import::read_file(path, args.onnx_input)?;
    let device = super::device_or_cpu(cli_device)?;
    let model = imported.backbone(&device).with_context(context)?;
    // The file, run by tract, and our model with its weights must agree.
    let difference = onnx::import::compare_outputs(proto, &model, &device).with_context(context)?;
    if difference > onnx::import::IMPORT_TOLERANCE {
        bail!(
            "{}: our backbone with the file's weights differs from the file run by tract by \
             {difference:.2e} (relative): not imported (a graph we misread; please report it)",
            path.display()
        );
    }
    imported.checkpoint().save(&args.out)?;
    for note in prepared.notes().iter().chain(&imported.notes) {
        println!("note: {note}");
    }
    let agree = format!("; outputs agree within {difference:.2e} (relative)");
    imported_line(path, &imported, &args.out, &agree)
}

fn imported_line(
    path: &std::path::Path,
    imported: &arcface::imported::Imported,
    out: &std::path::Path,
    tail: &str,
) -> Result<()> {
    let values: usize = imported.tensors.values().map(|t| t.num_elements()).sum();
    println!(
        "imported {} as {}, {}-d embeddings ({} values), into {}{tail}",
        path.display(),
        imported.network,
        imported.embedding_size,
        thousands(values),
        out.display()
    );
    Ok(())
}

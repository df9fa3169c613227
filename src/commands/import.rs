//! `arcface import`: another tool's model into our checkpoint — an ONNX embedder (read by
//! following its graph, checked against tract before anything is written) or arcface_torch's
//! backbone.pth.

use std::path::PathBuf;

use anyhow::{Context, Result};

use arcface::embedder::check_import;
use arcface::interop::onnx::{self, InputConvention};
use arcface::model::summary::thousands;

#[derive(clap::Args)]
pub struct ImportArgs {
    /// An LResNet-E-IR or MobileFaceNet ONNX embedder: the zoo's arcfaceresnet100-8.onnx,
    /// arcface_torch's torch2onnx.py exports (BatchNorm folded), MXNet's, or one of ours.
    #[arg(long, required_unless_present = "pth", conflicts_with = "pth")]
    onnx: Option<PathBuf>,
    /// arcface_torch's backbone.pth (torch.save of an iresnet's or MobileFaceNet's state dict;
    /// its training checkpoint_gpu_*.pt too), in torch.save's zip or legacy format.
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

pub fn run(args: &ImportArgs, cli_device: &Option<String>) -> Result<()> {
    if let Some(path) = &args.pth {
        let imported = arcface::interop::arcface_torch::pth::read(path, args.network)?;
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
    let difference = check_import(path, proto, &model, &device)?;
    imported.checkpoint().save(&args.out)?;
    for note in prepared.notes().iter().chain(&imported.notes) {
        println!("note: {note}");
    }
    let agree = format!("; outputs agree within {difference:.2e} (relative)");
    imported_line(path, &imported, &args.out, &agree)
}

fn imported_line(
    path: &std::path::Path,
    imported: &arcface::interop::imported::Imported,
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

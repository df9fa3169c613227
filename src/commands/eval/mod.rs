//! `arcface eval`: insightface's verification protocol on .bin files, or IJB-B/C 1:1
//! verification (`ijb.rs`), for a checkpoint or an ONNX file.

mod ijb;

use std::path::PathBuf;

use anyhow::{Context, Result};

use arcface::data::bin::PairSet;
use arcface::embedder::{BurnOptions, Engine};
use arcface::eval::embed::evaluate;
use arcface::interop::onnx::InputConvention;

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A checkpoint (.ckpt) written by `arcface train` or `arcface import`, or an ONNX
    /// embedder (.onnx; the model zoo's file too). tract runs ONNX files in fp32 on the CPU; on
    /// a LibTorch device or in bf16 their weights run in our backbone.
    #[arg(long, required_unless_present = "features")]
    pub(super) model: Option<PathBuf>,
    #[command(flatten)]
    pub(super) burn: BurnOptions,
    /// Which engine computes: tract wherever it can (fp32 on the CPU; a checkpoint exported to
    /// ONNX in memory), burn for a checkpoint's own arithmetic (as training's validation).
    #[arg(long, value_enum, default_value_t)]
    pub(super) engine: Engine,
    /// What pixels an ONNX file takes (found as insightface finds it unless given).
    #[arg(long, value_enum, default_value_t)]
    pub(super) onnx_input: InputConvention,
    #[command(flatten)]
    pub(super) ijb: ijb::IjbArgs,
    /// Evaluate every .bin in this folder.
    #[arg(long, conflicts_with_all = ["bin", "ijb"])]
    data: Option<PathBuf>,
    /// Evaluate these .bin files.
    #[arg(long, num_args = 1..)]
    bin: Vec<PathBuf>,
    #[arg(long)]
    pub(super) json: bool,
    /// Write the ROC curves to this PNG.
    #[arg(long)]
    pub(super) roc: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    pub(super) batch_size: usize,
}

fn bin_files(args: &EvalArgs) -> Result<Vec<PathBuf>> {
    let files = match &args.data {
        Some(dir) => {
            let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                .with_context(|| format!("cannot list {}", dir.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "bin"))
                .collect();
            found.sort();
            anyhow::ensure!(!found.is_empty(), "{}: no .bin files", dir.display());
            found
        }
        None => args.bin.clone(),
    };
    anyhow::ensure!(!files.is_empty(), "give --data DIR or --bin FILE...");
    Ok(files)
}

pub fn run(args: &EvalArgs, cli_device: &Option<String>) -> Result<()> {
    if args.ijb.ijb.is_some() {
        return ijb::run(args, cli_device);
    }
    let files = bin_files(args)?;
    // Every batch but the last has the same shape: cuDNN's timed choice of convolution
    // algorithms pays, as in training (on CUDA; nothing elsewhere).
    arcface::device::set_cudnn_benchmark(true);
    let model = args
        .model
        .as_ref()
        .context("--model is needed to embed the .bin images")?;
    let embedder = super::embedder(model, args.burn, args.onnx_input, args.engine, cli_device)?;
    let mut results = Vec::new();
    for file in &files {
        let name = file
            .file_stem()
            .map_or("?".into(), |s| s.to_string_lossy().into_owned());
        let set = PairSet::read(file)?;
        let result = evaluate(&embedder, &set, &name, args.batch_size)
            .with_context(|| file.display().to_string())?;
        results.push(result);
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "targets": results,
                "model": super::infer::model_json(&embedder),
            }))?
        );
    } else {
        println!(
            "{:<12} {:>6} {:>18} {:>10} {:>10} {:>14}",
            "target", "pairs", "accuracy", "threshold", "XNorm", "TAR@FAR=1e-3"
        );
        for r in &results {
            println!(
                "{:<12} {:>6} {:>9.5} ± {:.5} {:>10.3} {:>10.4} {:>14.5}",
                r.name, r.pairs, r.accuracy, r.std, r.threshold, r.xnorm, r.tar_at_far_1e3
            );
        }
    }
    if let Some(path) = &args.roc {
        arcface::eval::roc::plot(&results)
            .save(path)
            .with_context(|| format!("writing {}", path.display()))?;
        if !args.json {
            println!("ROC curves: {}", path.display());
        }
    }
    Ok(())
}

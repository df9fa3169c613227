//! `arcface eval --ijb DIR --target IJBC|IJBB`: IJB 1:1 verification (`arcface::eval::ijb`),
//! eval_ijbc.py's table, JSON, a ROC picture, and the image features saved or reused.

use std::path::PathBuf;

use anyhow::{Context, Result};

use arcface::eval::ijb::{self, IjbSet, Protocol};

#[derive(clap::Args, Debug, Clone)]
pub struct IjbArgs {
    /// insightface's IJB release folder of the target (`IJB_release/IJBC`: meta/, loose_crop/).
    #[arg(long)]
    pub ijb: Option<PathBuf>,
    /// IJBC or IJBB.
    #[arg(long, default_value = "IJBC", requires = "ijb")]
    pub target: String,
    /// Write the image features ([crops, 2 × embedding]: plain, then mirrored; .npy) to reuse.
    #[arg(long, requires = "ijb", conflicts_with = "features")]
    pub save_features: Option<PathBuf>,
    /// Take the image features from this .npy (written by --save-features, or eval_ijbc.py's
    /// `img_feats`) instead of embedding the crops.
    #[arg(long, requires = "ijb")]
    pub features: Option<PathBuf>,
    /// eval_ijbc's use_flip_test = False: the plain embedding alone.
    #[arg(long, requires = "ijb")]
    pub no_flip: bool,
    /// eval_ijbc's use_norm_score = False: L2-normalise each image feature (its norm is kept
    /// otherwise, as eval_ijbc's default).
    #[arg(long, requires = "ijb")]
    pub no_norm: bool,
    /// eval_ijbc's use_detector_score = False: do not weight by the detector's score.
    #[arg(long, requires = "ijb")]
    pub no_detector_score: bool,
}

pub fn run(args: &super::EvalArgs, cli_device: &Option<String>) -> Result<()> {
    let a = &args.ijb;
    let dir = a.ijb.as_ref().expect("checked by the caller");
    let set = IjbSet::open(dir, &a.target)?;
    let raw = match &a.features {
        Some(path) => {
            let (rows, _, values) = ijb::npy::read(path)?;
            anyhow::ensure!(
                rows == set.crops.len(),
                "{}: {rows} rows, {} lists {} crops",
                path.display(),
                dir.display(),
                set.crops.len()
            );
            values
        }
        None => {
            let model = args
                .model
                .as_ref()
                .context("--model is needed to embed the crops (or give --features F.npy)")?;
            arcface::device::set_cudnn_benchmark(true);
            let embedder =
                super::super::embedder(model, args.burn, args.onnx_input, args.engine, cli_device)?;
            let raw = ijb::embed(&set, &embedder, args.batch_size)?;
            if let Some(path) = &a.save_features {
                let cols = raw.len() / set.crops.len();
                ijb::npy::write(path, set.crops.len(), cols, &raw)?;
                if !args.json {
                    println!("image features: {}", path.display());
                }
            }
            raw
        }
    };
    let protocol = Protocol {
        flip: !a.no_flip,
        norm_score: !a.no_norm,
        detector_score: !a.no_detector_score,
    };
    let result = ijb::evaluate_features(&set, &raw, protocol)?;
    let [image, template, pairs, roc] = result.seconds;
    eprintln!(
        "scoring: image features {image:.2} s, templates {template:.2} s, {} pair scores {pairs:.2} s ({:.3e} pairs/s), ROC {roc:.2} s",
        result.pairs,
        result.pairs as f64 / pairs.max(1e-9)
    );
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "targets": [&result] }))?
        );
    } else {
        println!(
            "{} images, {} templates, {} pairs (flip {}, norm score {}, detector score {})",
            result.images,
            result.templates,
            result.pairs,
            protocol.flip,
            protocol.norm_score,
            protocol.detector_score
        );
        let header: Vec<String> = ijb::FARS.iter().map(|(k, _)| format!("{k:>8}")).collect();
        println!("{:<8} {} {:>8}", "TAR@FAR", header.join(" "), "AUC");
        let row: Vec<String> = ijb::FARS
            .iter()
            .map(|(k, _)| format!("{:>8.2}", result.tar_at_far[*k] * 100.0))
            .collect();
        println!("{:<8} {} {:>8.4}", result.name, row.join(" "), result.auc);
    }
    if let Some(path) = &args.roc {
        let curve = arcface::eval::roc::Curve {
            label: format!("{} AUC {:.4}", result.name, result.auc),
            fpr: &result.roc.fpr,
            tpr: &result.roc.tpr,
        };
        arcface::eval::roc::plot_curves(&[curve], 6.0)
            .save(path)
            .with_context(|| format!("writing {}", path.display()))?;
        if !args.json {
            println!("ROC curve: {}", path.display());
        }
    }
    Ok(())
}

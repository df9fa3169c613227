//! Dataset commands: `synth`, `pack`, `pack-pairs`, `inspect`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use arcface::config::AugmentPreset;
use arcface::data::bin::PairSet;
use arcface::data::dataset::RecDataset;
use arcface::data::synth::{self, SynthConfig};
use arcface::data::{grid, inspect, pack};
use arcface::eval::verify;
use arcface::progress;

#[derive(clap::Args)]
pub struct SynthArgs {
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 500)]
    identities: usize,
    #[arg(long, default_value_t = 40)]
    images_per_identity: usize,
    #[arg(long, default_value_t = 1000)]
    val_pairs: usize,
    /// Identities the validation pairs come from (default: val_pairs / 10, within 20..500).
    #[arg(long)]
    val_identities: Option<usize>,
    #[arg(long, default_value_t = 2048)]
    seed: u64,
}

#[derive(clap::Args)]
pub struct PackArgs {
    #[arg(long)]
    images: PathBuf,
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
pub struct PackPairsArgs {
    #[arg(long)]
    pairs: PathBuf,
    #[arg(long)]
    images: PathBuf,
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
pub struct InspectArgs {
    path: PathBuf,
    #[arg(long)]
    json: bool,
    /// Decode every image.
    #[arg(long)]
    verify: bool,
    /// List the identity of every image in key order (folders).
    #[arg(long)]
    labels: bool,
    /// Write a PNG of training images as the loader hands them to the model: each original
    /// beside `--draws` augmented versions, labelled (folders).
    #[arg(long, value_name = "PNG")]
    grid: Option<PathBuf>,
    /// The augmentations the grid shows (a config's `augment`).
    #[arg(long, value_enum, default_value_t = AugmentPreset::Adaface, requires = "grid")]
    augment: AugmentPreset,
    /// Images in the grid, one a row, spread over the dataset.
    #[arg(long, default_value_t = 6, requires = "grid")]
    rows: usize,
    /// Augmented versions of each.
    #[arg(long, default_value_t = 5, requires = "grid")]
    draws: usize,
}

pub fn synth(args: &SynthArgs) -> Result<()> {
    let mut config = SynthConfig::new(
        args.identities,
        args.images_per_identity,
        args.val_pairs,
        args.seed,
    );
    if let Some(v) = args.val_identities {
        config.val_identities = v;
    }
    let bar = progress::bar(0, "synth");
    synth::generate(&args.out, &config, &bar)?;
    bar.finish_and_clear();
    let baseline =
        verify::raw_pixel_verification(&PairSet::read(&args.out.join("synth_val.bin"))?)?;
    println!(
        "wrote {} images of {} identities and {} validation pairs ({} identities not in training) to {}",
        args.identities * args.images_per_identity,
        args.identities,
        args.val_pairs,
        config.val_identities,
        args.out.display()
    );
    println!(
        "raw-pixel baseline on synth_val: {:.4} ± {:.4} (10-fold)",
        baseline.accuracy, baseline.std
    );
    Ok(())
}

pub fn pack(args: &PackArgs) -> Result<()> {
    let bar = progress::bar(0, "pack");
    let (n, k) = pack::pack_folder(&args.images, &args.out, &bar)?;
    bar.finish_and_clear();
    println!(
        "packed {n} images of {k} identities into {}",
        args.out.display()
    );
    Ok(())
}

pub fn pack_pairs(args: &PackPairsArgs) -> Result<()> {
    let bar = progress::bar(0, "pack-pairs");
    let set = pack::pack_pairs(&args.pairs, &args.images, &bar)?;
    bar.finish_and_clear();
    set.write(&args.out)?;
    println!(
        "packed {} pairs ({} same) into {}",
        set.pairs(),
        set.same(),
        args.out.display()
    );
    Ok(())
}

pub fn inspect(args: &InspectArgs) -> Result<()> {
    let path = &args.path;
    anyhow::ensure!(path.exists(), "{}: no such file or folder", path.display());
    let bar = progress::bar(0, "inspect");
    let report = inspect::inspect(path, args.verify, args.labels, &bar);
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(path, &report);
    }
    let n = report.errors().len();
    anyhow::ensure!(n == 0, "{}: {n} problem(s) found", path.display());
    if let Some(png) = &args.grid {
        anyhow::ensure!(
            path.is_dir(),
            "{}: --grid shows a training set (a folder: train.rec or <identity>/<images>)",
            path.display()
        );
        let dataset = RecDataset::open(path)?;
        let augment = args.augment.augmentations();
        let picture = grid::augmentation_grid(&dataset, augment, args.rows, args.draws, 1)?;
        picture
            .save(png)
            .with_context(|| format!("writing {}", png.display()))?;
        if !args.json {
            println!(
                "{} rows of {} augmented draws ({}) beside the originals: {}",
                args.rows.min(dataset.len()),
                args.draws,
                args.augment.augmentations().describe(),
                png.display()
            );
        }
    }
    Ok(())
}

fn print_report(path: &Path, report: &inspect::Report) {
    match report {
        inspect::Report::Rec {
            images,
            identities,
            image_size,
            decoded,
            errors,
            labels,
        } => {
            let kind = match path.join("train.rec").exists() {
                true => "RecordIO dataset",
                false => "image folder",
            };
            println!(
                "{}: {kind}, {images} images of {identities} identities, {}×{}, {decoded} decoded",
                path.display(),
                image_size[0],
                image_size[1]
            );
            if let Some(labels) = labels {
                println!("labels: {labels:?}");
            }
            errors.iter().for_each(|e| println!("error: {e}"));
        }
        inspect::Report::Bin {
            pairs,
            same,
            decoded,
            errors,
        } => {
            println!(
                "{}: {pairs} pairs ({same} same), {decoded} images decoded",
                path.display()
            );
            errors.iter().for_each(|e| println!("error: {e}"));
        }
    }
}

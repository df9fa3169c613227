//! `arcface bench data`: decoded, augmented and flipped images per second through the loader
//! (the flip alone, AdaFace's preset, each augmentation always), and the two JPEG decoders
//! alone.

use std::path::PathBuf;

use anyhow::Result;

use arcface::bench;

#[derive(clap::Args)]
pub struct DataArgs {
    #[arg(long)]
    rec: PathBuf,
    #[arg(long, default_value_t = std::thread::available_parallelism().map_or(1, |n| n.get()))]
    threads: usize,
    #[arg(long, default_value_t = 40)]
    batches: usize,
    #[arg(long)]
    json: bool,
}

pub fn run(args: &DataArgs) -> Result<()> {
    let DataArgs {
        rec,
        threads,
        batches,
        json,
    } = args;
    let results = bench::data(rec, *threads, *batches, &bench::augmentation_settings())?;
    let decoders = bench::decoders(rec, 512, 4)?;
    if *json {
        let both = serde_json::json!({ "loader": results, "decoders": decoders });
        println!("{}", serde_json::to_string_pretty(&both)?);
    } else {
        println!(
            "{:<32} {:>8} {:>10} {:>12} {:>18}",
            "augmentations", "threads", "images", "img/s", "img/s per thread"
        );
        for r in &results {
            println!(
                "{:<32} {:>8} {:>10} {:>12.0} {:>18.0}",
                r.augment, r.threads, r.images, r.images_per_second, r.images_per_second_per_thread
            );
        }
        println!("JPEG decoding alone, one thread:");
        for d in &decoders {
            println!("  {:<50} {:>8.0} img/s", d.decoder, d.images_per_second);
        }
    }
    Ok(())
}

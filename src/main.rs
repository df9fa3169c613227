//! The `arcface` command line: parses arguments, picks the device, calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use burn::tensor::Device;
use clap::{Parser, Subcommand};

use arcface::bench;
use arcface::config::Config;
use arcface::data::bin::PairSet;
use arcface::data::synth::{self, SynthConfig};
use arcface::data::{inspect, pack};
use arcface::device;
use arcface::eval::verify;
use arcface::model::{backbone_config, summary};
use arcface::progress;

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
    /// Synthetic face-like identities in insightface's formats (train.rec/.idx/property and
    /// synth_val.bin with pairs of identities not in training), deterministic by seed.
    Synth {
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
    },
    /// Pack identity folders (DIR/<identity>/<images>) into train.rec/.idx/property.
    Pack {
        #[arg(long)]
        images: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Pack a pairs list (`pathA<TAB>pathB<TAB>1|0`, paths relative to --images) into a .bin.
    PackPairs {
        #[arg(long)]
        pairs: PathBuf,
        #[arg(long)]
        images: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// What a dataset folder or .bin file holds; exits non-zero if anything is wrong.
    Inspect {
        path: PathBuf,
        #[arg(long)]
        json: bool,
        /// Decode every image.
        #[arg(long)]
        verify: bool,
        /// List the identity of every image in key order (folders).
        #[arg(long)]
        labels: bool,
    },
    /// Throughput benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Decoded + augmented images per second through the loader, per thread and in total.
    Data {
        #[arg(long)]
        rec: PathBuf,
        #[arg(long, default_value_t = std::thread::available_parallelism().map_or(1, |n| n.get()))]
        threads: usize,
        #[arg(long, default_value_t = 40)]
        batches: usize,
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
        Command::Synth {
            out,
            identities,
            images_per_identity,
            val_pairs,
            val_identities,
            seed,
        } => {
            let mut config = SynthConfig::new(*identities, *images_per_identity, *val_pairs, *seed);
            if let Some(v) = val_identities {
                config.val_identities = *v;
            }
            let bar = progress::bar(0, "synth");
            synth::generate(out, &config, &bar)?;
            bar.finish_and_clear();
            let baseline =
                verify::raw_pixel_verification(&PairSet::read(&out.join("synth_val.bin"))?)
                    .map_err(anyhow::Error::msg)?;
            println!(
                "wrote {} images of {} identities and {} validation pairs ({} identities not in training) to {}",
                identities * images_per_identity,
                identities,
                val_pairs,
                config.val_identities,
                out.display()
            );
            println!(
                "raw-pixel baseline on synth_val: {:.4} ± {:.4} (10-fold)",
                baseline.accuracy, baseline.std
            );
        }
        Command::Pack { images, out } => {
            let bar = progress::bar(0, "pack");
            let (n, k) = pack::pack_folder(images, out, &bar)?;
            bar.finish_and_clear();
            println!("packed {n} images of {k} identities into {}", out.display());
        }
        Command::PackPairs { pairs, images, out } => {
            let bar = progress::bar(0, "pack-pairs");
            let set = pack::pack_pairs(pairs, images, &bar)?;
            bar.finish_and_clear();
            set.write(out)?;
            println!(
                "packed {} pairs ({} same) into {}",
                set.pairs(),
                set.same(),
                out.display()
            );
        }
        Command::Inspect {
            path,
            json,
            verify,
            labels,
        } => {
            anyhow::ensure!(path.exists(), "{}: no such file or folder", path.display());
            let bar = progress::bar(0, "inspect");
            let report = inspect::inspect(path, *verify, *labels, &bar);
            bar.finish_and_clear();
            if *json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print_report(path, &report);
            }
            let n = report.errors().len();
            anyhow::ensure!(n == 0, "{}: {n} problem(s) found", path.display());
        }
        Command::Bench {
            what:
                BenchCommand::Data {
                    rec,
                    threads,
                    batches,
                    json,
                },
        } => {
            let results = bench::data(rec, *threads, *batches)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&results)?);
            } else {
                println!(
                    "{:>8} {:>10} {:>12} {:>18}",
                    "threads", "images", "img/s", "img/s per thread"
                );
                for r in &results {
                    println!(
                        "{:>8} {:>10} {:>12.0} {:>18.0}",
                        r.threads, r.images, r.images_per_second, r.images_per_second_per_thread
                    );
                }
            }
        }
    }
    Ok(())
}

fn print_report(path: &std::path::Path, report: &inspect::Report) {
    match report {
        inspect::Report::Rec {
            images,
            identities,
            image_size,
            decoded,
            errors,
            labels,
        } => {
            println!(
                "{}: RecordIO dataset, {images} images of {identities} identities, {}×{}, {decoded} decoded",
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

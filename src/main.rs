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
use arcface::train;

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
    /// Train a backbone and margin head as the config says (validates and checkpoints as it goes).
    Train {
        #[arg(long)]
        config: PathBuf,
        /// Continue from the newest checkpoint in the output folder, or from the given file.
        #[arg(long, num_args = 0..=1, default_missing_value = "latest")]
        resume: Option<String>,
        /// Stop after this many steps (smoke tests); the config's epochs otherwise.
        #[arg(long)]
        max_steps: Option<usize>,
    },
    /// Verification accuracy of a model on validation .bin files (insightface's 10-fold protocol).
    Eval {
        /// A checkpoint (.ckpt) written by `arcface train`.
        #[arg(long)]
        model: PathBuf,
        /// Evaluate every .bin in this folder.
        #[arg(long, conflicts_with = "bin")]
        data: Option<PathBuf>,
        /// Evaluate these .bin files.
        #[arg(long, num_args = 1..)]
        bin: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
        /// Write the ROC curves to this PNG.
        #[arg(long)]
        roc: Option<PathBuf>,
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
    },
    /// Export a checkpoint's backbone for other tools.
    Export {
        #[arg(long)]
        model: PathBuf,
        /// Write the backbone as safetensors with arcface_torch's iresnet names and layouts.
        #[arg(long)]
        safetensors: PathBuf,
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
    /// Training steps on random tensors: forward, backward and optimizer ms, img/s.
    Train {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Batch size per device (the config's otherwise).
        #[arg(long)]
        batch_size: Option<usize>,
        /// Classes of the head (the dataset's otherwise, else 1000).
        #[arg(long)]
        num_classes: Option<usize>,
        #[arg(long)]
        json: bool,
    },
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
        Command::Train {
            config,
            resume,
            max_steps,
        } => {
            let config = Config::load(config)?;
            let devices = devices(&cli.device, &config)?;
            anyhow::ensure!(
                devices.len() == 1,
                "multi-GPU data parallel training is not implemented yet: use one device (e.g. --device cuda:0)"
            );
            let resume = resume.as_ref().map(|r| match r.as_str() {
                "latest" => train::Resume::Latest,
                path => train::Resume::Path(PathBuf::from(path)),
            });
            let options = train::TrainOptions {
                resume,
                max_steps: *max_steps,
            };
            let report = train::train(&config, &devices[0], &options)?;
            if let Some((step, results)) = report.validations.last() {
                for r in results {
                    println!(
                        "{} at step {step}: accuracy {:.4} ± {:.4}",
                        r.name, r.accuracy, r.std
                    );
                }
            }
        }
        Command::Eval {
            model,
            data,
            bin,
            json,
            roc,
            batch_size,
        } => {
            anyhow::ensure!(
                model.extension().is_none_or(|e| e != "onnx"),
                "{}: ONNX models are not supported yet; evaluate the checkpoint (.ckpt)",
                model.display()
            );
            let files = match data {
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
                None => bin.clone(),
            };
            anyhow::ensure!(!files.is_empty(), "give --data DIR or --bin FILE...");
            let text = cli.device.clone().unwrap_or_else(|| "cpu".into());
            let device = device::select(&text)?.remove(0);
            let (backbone, _) = arcface::train::checkpoint::load_backbone(model, &device)?;
            let mut results = Vec::new();
            for file in &files {
                let name = file
                    .file_stem()
                    .map_or("?".into(), |s| s.to_string_lossy().into_owned());
                let set = PairSet::read(file)?;
                let result =
                    arcface::eval::embed::evaluate(&backbone, &set, &name, *batch_size, &device)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                results.push(result);
            }
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "targets": results }))?
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
            if let Some(path) = roc {
                arcface::eval::roc::plot(&results)
                    .save(path)
                    .with_context(|| format!("writing {}", path.display()))?;
                if !*json {
                    println!("ROC curves: {}", path.display());
                }
            }
        }
        Command::Export { model, safetensors } => {
            let ckpt = arcface::train::checkpoint::Checkpoint::load(model)?;
            arcface::export::safetensors::write(&ckpt.with_prefix("backbone."), safetensors)?;
            println!(
                "wrote {} ({} backbone) to {}",
                model.display(),
                ckpt.meta.config.network,
                safetensors.display()
            );
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
                BenchCommand::Train {
                    config,
                    steps,
                    batch_size,
                    num_classes,
                    json,
                },
        } => {
            let mut config = Config::load(config)?;
            if let Some(b) = batch_size {
                config.batch_size = *b;
            }
            let classes = num_classes
                .or_else(|| config.resolve_num_classes().ok())
                .unwrap_or(1000);
            let device = devices(&cli.device, &config)?.remove(0);
            let r = bench::train(&config, classes, *steps, &device)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "{} batch {} classes {}: forward {:.1} ms, backward {:.1} ms, optimizer {:.1} ms, step {:.1} ms, {:.1} img/s",
                    r.network,
                    r.batch_size,
                    r.num_classes,
                    r.forward_ms,
                    r.backward_ms,
                    r.optimizer_ms,
                    r.step_ms,
                    r.images_per_second
                );
            }
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

//! `arcface bench train|head|dist|data|infer`: throughput, never timed tests.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;

mod head;
mod infer;
use infer::{Engines, detection, infer};

use arcface::bench;
use arcface::config::Config;
use arcface::device::DeviceSpec;
use arcface::distributed;
use arcface::embedder::BurnOptions;
use arcface::model::Precision;
use arcface::onnx::ConvAlgorithm;

#[derive(Subcommand)]
pub enum BenchCommand {
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
        #[arg(long, alias = "classes")]
        num_classes: Option<usize>,
        /// Partial FC's share of each rank's centres per step (the config's otherwise).
        #[arg(long)]
        sample_rate: Option<f64>,
        /// The config's `precision` otherwise.
        #[arg(long, value_enum)]
        precision: Option<Precision>,
        /// Images and activations stored channels-last (NHWC; LibTorch only), whatever the
        /// config's `channels_last` says.
        #[arg(long)]
        channels_last: bool,
        /// Untimed steps first (cuDNN's benchmark mode picks its algorithms on the first).
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Output channels of the four stages instead of the network's, e.g. 8,8,8,8: at tiny
        /// widths (and batch) the kernels do almost nothing, and the step time is the
        /// framework's own cost of each operation at the network's depth, as
        /// scripts/torch_profile.py --widths measures PyTorch's.
        #[arg(long, value_delimiter = ',')]
        widths: Option<Vec<usize>>,
        /// Then record 3 more steps with libtorch's profiler into this Chrome trace (.json;
        /// LibTorch builds only; summarise with scripts/profile_summary.py).
        #[arg(long)]
        profile: Option<PathBuf>,
        /// Start this many ranks here on LibTorch's CPU (as `train --nproc-per-node`); for
        /// GPUs list them (--device cuda:0,1,2,3) or run under torchrun.
        #[arg(long)]
        nproc_per_node: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// The model-parallel head alone (partial FC's forward and backward, SGD on the centres)
    /// at a large class count over sample rates; --torch also times arcface_torch's
    /// PartialFC_V2 on the same sizes (scripts/bench_partial_fc.py).
    Head {
        #[arg(long, default_value_t = 1_000_000)]
        classes: usize,
        #[arg(long, default_value_t = 512)]
        embedding_size: usize,
        /// Embeddings per rank and step.
        #[arg(long, default_value_t = 128)]
        batch: usize,
        #[arg(long, value_delimiter = ',', default_value = "1,0.3,0.1")]
        sample_rates: Vec<f64>,
        #[arg(long, default_value_t = 3)]
        steps: usize,
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Also run PyTorch's PartialFC_V2 (CPU, world size 1) and print the ratio.
        #[arg(long)]
        torch: bool,
        /// Ranks to start on this machine (LibTorch's CPU).
        #[arg(long)]
        nproc_per_node: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// All-reduce bus bandwidth of the process group over message sizes (nccl-tests'
    /// definition): run under torchrun, with --nproc-per-node N (LibTorch's CPU, Gloo), or
    /// with --device cuda:0,1,... (NCCL).
    Dist {
        /// Message sizes in bytes (8 B to 128 MB by factors of 4 otherwise).
        #[arg(long, value_delimiter = ',')]
        sizes: Option<Vec<usize>>,
        /// Timed all-reduces per size.
        #[arg(long, default_value_t = 20)]
        iterations: usize,
        /// Ranks to start on this machine (LibTorch's CPU).
        #[arg(long)]
        nproc_per_node: Option<usize>,
        /// Seconds a collective may wait for the others.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
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
    /// Embeddings per second of one model through burn and through tract (the same weights:
    /// a checkpoint is exported, an ONNX file imported, in memory), optionally onnxruntime.
    Infer {
        /// A checkpoint (.ckpt) or an LResNet-E-IR ONNX file.
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Time each engine at least this long.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Also time MTCNN detection + alignment of every face on this photo (ms per photo).
        #[arg(long)]
        photo: Option<PathBuf>,
        /// MTCNN weights for --photo (scripts/fetch-models.sh).
        #[arg(long, default_value = "models/mtcnn")]
        mtcnn: PathBuf,
        /// Also time onnxruntime on the same ONNX file with scripts/bench_onnxruntime.py
        /// (Python: $ARCFACE_PYTHON, else python3; needs numpy and onnxruntime).
        #[arg(long)]
        onnxruntime: bool,
        /// How tract computes the 3×3 convolutions (Winograd where it pays, or its im2col).
        #[arg(long, value_enum, default_value_t = ConvAlgorithm::Winograd)]
        conv: ConvAlgorithm,
        /// Also time tract's plan node by node on N images and print the time per operation
        /// kind: where tract's time goes. One image on one thread, as a batch runs each of its
        /// images; on all threads when --batch is below the thread count, as a lone image runs.
        #[arg(long, value_name = "N", conflicts_with = "burn_only")]
        tract_ops: Option<usize>,
        /// Time burn alone (on --device), not tract: for GPUs, where tract's CPU figure is moot.
        #[arg(long, conflicts_with = "onnxruntime")]
        burn_only: bool,
        // How burn computes (--precision, --channels-last), in both of its rows; tract always
        // runs the file's fp32.
        #[command(flatten)]
        burn: BurnOptions,
        /// What pixels an ONNX file takes (found as insightface finds it unless given).
        #[arg(long, value_enum, default_value_t)]
        onnx_input: arcface::onnx::InputConvention,
        /// Also time burn with the batch already on the device and the embeddings left there
        /// (as PyTorch's anchor times itself), next to its host-to-host figure.
        #[arg(long)]
        resident: bool,
        /// Then record 3 more burn batches with libtorch's profiler into this Chrome trace
        /// (LibTorch builds only).
        #[arg(long)]
        profile: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(what: &BenchCommand, cli_device: &Option<String>) -> Result<()> {
    match what {
        BenchCommand::Train {
            config,
            steps,
            batch_size,
            num_classes,
            sample_rate,
            precision,
            channels_last,
            warmup,
            widths,
            profile,
            nproc_per_node,
            json,
        } => {
            if let Some(trace) = profile {
                arcface::profile::prepare(trace)?;
            }
            let widths = match widths.as_deref() {
                None => None,
                Some(&[a, b, c, d]) if ![a, b, c, d].contains(&0) => Some([a, b, c, d]),
                Some(other) => bail!(
                    "--widths {other:?}: four positive numbers are needed, one per stage, e.g. 8,8,8,8"
                ),
            };
            let mut config = Config::load(config)?;
            if let Some(b) = batch_size {
                config.batch_size = *b;
            }
            if let Some(p) = precision {
                config.precision = *p;
            }
            if let Some(r) = sample_rate {
                config.sample_rate = *r;
                if let Err((key, why)) = config.validate() {
                    bail!("--sample-rate {r}: `{key}` {why}");
                }
            }
            config.channels_last |= *channels_last;
            let classes = num_classes
                .or_else(|| config.resolve_num_classes().ok())
                .unwrap_or(1000);
            let text = cli_device.as_deref().unwrap_or(&config.device);
            let spec: DeviceSpec = text
                .parse()
                .with_context(|| format!("selecting device `{text}`"))?;
            let options = bench::TrainBenchOptions {
                warmup: *warmup,
                profile: profile.clone(),
                widths,
            };
            let timeout = std::time::Duration::from_secs(config.dist_timeout);
            let Some((spec, device, group)) =
                distributed::rank_or_spawn(&spec, *nproc_per_node, timeout)?
            else {
                return Ok(());
            };
            let main = group.is_main();
            let r = bench::train(&config, classes, *steps, &spec, &device, group, &options)?;
            if !main {
                // Rank 0 reports for all.
            } else if *json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                let gpu = r
                    .peak_gpu_mib
                    .map_or(String::new(), |m| format!(", peak GPU memory {m:.0} MiB"))
                    + &r.peak_allocated_mib.map_or(String::new(), |m| {
                        format!(" (allocated by libtorch {m:.0} MiB)")
                    });
                let widths = match r.widths {
                    Some(w) => format!(" (widths {w:?})"),
                    None => String::new(),
                };
                let ranks = match r.world_size {
                    1 => String::new(),
                    n => format!(
                        " × {n} ranks ({}: all-reduce {:.1} ms, {:.1} MB sent per rank; head collectives {:.1} ms, {:.2} MB)",
                        r.backend,
                        r.all_reduce_ms,
                        r.all_reduce_bytes_per_rank as f64 / 1e6,
                        r.head_collectives_ms,
                        r.head_bytes_sent_per_rank as f64 / 1e6
                    ),
                };
                println!(
                    "{}{widths} {}{} on {}{ranks} batch {} per rank, classes {} at sample rate {} (head {:.1} MB per rank): forward {:.1} ms, head {:.1} ms, backward {:.1} ms, optimizer {:.1} ms, step {:.1} ms, {:.1} img/s, loss {:.3}, peak host memory {:.0} MiB{gpu}",
                    r.network,
                    r.precision,
                    if r.channels_last {
                        " channels-last"
                    } else {
                        ""
                    },
                    r.device,
                    r.batch_size,
                    r.num_classes,
                    r.sample_rate,
                    r.head_bytes_per_rank as f64 / 1e6,
                    r.forward_ms,
                    r.head_ms,
                    r.backward_ms,
                    r.optimizer_ms,
                    r.step_ms,
                    r.images_per_second,
                    r.loss,
                    r.peak_host_mib
                );
                if let Some(trace) = &r.profile {
                    println!("profile of 3 more steps: {}", trace.display());
                }
            }
        }
        BenchCommand::Head {
            classes,
            embedding_size,
            batch,
            sample_rates,
            steps,
            warmup,
            torch,
            nproc_per_node,
            json,
        } => {
            let text = cli_device.as_deref().unwrap_or("cpu");
            let spec: DeviceSpec = text
                .parse()
                .with_context(|| format!("selecting device `{text}`"))?;
            let timeout = std::time::Duration::from_secs(600);
            let Some((spec, device, mut group)) =
                distributed::rank_or_spawn(&spec, *nproc_per_node, timeout)?
            else {
                return Ok(());
            };
            let torch_device = match &spec {
                DeviceSpec::Cuda(indices) => format!("cuda:{}", indices[0]),
                _ => "cpu".to_string(),
            };
            let options = bench::HeadBenchOptions {
                classes: *classes,
                embedding_size: *embedding_size,
                batch: *batch,
                sample_rate: 1.0,
                warmup: *warmup,
                steps: (*steps).max(1),
            };
            head::run(
                &options,
                sample_rates,
                *torch,
                &torch_device,
                &device,
                &mut group,
                *json,
            )?;
        }
        BenchCommand::Dist {
            sizes,
            iterations,
            nproc_per_node,
            timeout,
            json,
        } => {
            let text = cli_device.as_deref().unwrap_or("libtorch-cpu");
            let spec: DeviceSpec = text
                .parse()
                .with_context(|| format!("selecting device `{text}`"))?;
            let timeout = std::time::Duration::from_secs(*timeout);
            let Some((_, _, mut group)) =
                distributed::rank_or_spawn(&spec, *nproc_per_node, timeout)?
            else {
                return Ok(());
            };
            let sizes = sizes.clone().unwrap_or_else(bench::dist::default_sizes);
            let rows = bench::dist::all_reduce_sweep(&group, &sizes, *iterations)?;
            group.barrier("end of the benchmark")?;
            group.finish();
            if !group.is_main() {
            } else if *json {
                let report = serde_json::json!({
                    "backend": group.backend(),
                    "world_size": group.world(),
                    "device": text,
                    "rows": rows,
                });
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "all-reduce (sum, f32), {} over {} ranks on {text}, {iterations} iterations per size",
                    group.backend(),
                    group.world()
                );
                println!(
                    "{:>12} {:>12} {:>12} {:>12}",
                    "bytes", "time µs", "algbw GB/s", "busbw GB/s"
                );
                for r in &rows {
                    println!(
                        "{:>12} {:>12.1} {:>12.3} {:>12.3}",
                        r.bytes, r.time_us, r.algbw, r.busbw
                    );
                }
            }
        }
        BenchCommand::Data {
            rec,
            threads,
            batches,
            json,
        } => {
            let results = bench::data(rec, *threads, *batches)?;
            let decoders = bench::decoders(rec, 512, 4)?;
            if *json {
                let both = serde_json::json!({ "loader": results, "decoders": decoders });
                println!("{}", serde_json::to_string_pretty(&both)?);
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
                println!("JPEG decoding alone, one thread:");
                for d in &decoders {
                    println!("  {:<50} {:>8.0} img/s", d.decoder, d.images_per_second);
                }
            }
        }
        BenchCommand::Infer {
            model,
            onnx_input,
            batch,
            seconds,
            photo,
            mtcnn,
            onnxruntime,
            conv,
            tract_ops,
            burn_only,
            burn,
            resident,
            profile,
            json,
        } => {
            if let Some(trace) = profile {
                arcface::profile::prepare(trace)?;
            }
            let engines = Engines {
                tract: !burn_only,
                onnxruntime: *onnxruntime,
                burn: *burn,
                burn_resident: *resident,
                burn_profile: profile.clone(),
                tract_ops: *tract_ops,
                tract_conv: *conv,
                onnx_input: *onnx_input,
            };
            infer(model, *batch, *seconds, engines, *json, cli_device)?;
            if let Some(photo) = photo {
                detection(photo, mtcnn, *seconds, *json)?;
            }
        }
    }
    Ok(())
}

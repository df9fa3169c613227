//! `arcface bench train|data|infer`: throughput, never timed tests.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use arcface::bench::{self, InferThroughput};
use arcface::config::Config;
use arcface::device::DeviceSpec;
use arcface::dist;
use arcface::embedder::{BurnOptions, Embedder, is_onnx};
use arcface::model::Precision;
use arcface::onnx::op_profile::OpTime;
use arcface::onnx::{self, Batch, ConvAlgorithm, OnnxEmbedder, spreads_each_image};
use arcface::train::checkpoint::load_backbone;

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
        #[arg(long)]
        num_classes: Option<usize>,
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
            let (spec, device, group) = match dist::start(&spec, *nproc_per_node, timeout)? {
                dist::Start::Spawn(ranks) => {
                    let args: Vec<_> = std::env::args_os().skip(1).collect();
                    return dist::spawn::run_local(ranks, &args, timeout);
                }
                dist::Start::Rank {
                    spec,
                    device,
                    group,
                } => (spec, device, group),
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
                        " × {n} ranks ({}: all-reduce {:.1} ms, {:.1} MB sent per rank)",
                        r.backend,
                        r.all_reduce_ms,
                        r.all_reduce_bytes_per_rank as f64 / 1e6
                    ),
                };
                println!(
                    "{}{widths} {}{} on {}{ranks} batch {} per rank, classes {} (head {:.1} MB per rank): forward {:.1} ms, backward {:.1} ms, optimizer {:.1} ms, step {:.1} ms, {:.1} img/s, loss {:.3}, peak host memory {:.0} MiB{gpu}",
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
                    r.head_bytes_per_rank as f64 / 1e6,
                    r.forward_ms,
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
            let mut group = match dist::start(&spec, *nproc_per_node, timeout)? {
                dist::Start::Spawn(ranks) => {
                    let args: Vec<_> = std::env::args_os().skip(1).collect();
                    return dist::spawn::run_local(ranks, &args, timeout);
                }
                dist::Start::Rank { group, .. } => group,
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
        BenchCommand::Infer {
            model,
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
            };
            infer(model, *batch, *seconds, engines, *json, cli_device)?;
            if let Some(photo) = photo {
                detection(photo, mtcnn, *seconds, *json)?;
            }
        }
    }
    Ok(())
}

/// Which engines run next to burn.
struct Engines {
    tract: bool,
    onnxruntime: bool,
    burn: BurnOptions,
    /// Also time burn with the batch resident on the device.
    burn_resident: bool,
    burn_profile: Option<PathBuf>,
    /// Images for a node-by-node profile of tract's plan.
    tract_ops: Option<usize>,
    tract_conv: ConvAlgorithm,
}

fn infer(
    model: &Path,
    batch: usize,
    seconds: f64,
    engines: Engines,
    json: bool,
    cli_device: &Option<String>,
) -> Result<()> {
    let device = super::device_or_cpu(cli_device)?;
    // One batch shape throughout, as `eval` (cuDNN's timed algorithm choice; CUDA only).
    arcface::device::set_cudnn_benchmark(true);
    // Both engines get the same weights; onnxruntime gets a file.
    let tmp = tempfile_path(model);
    let (backbone, onnx_file) = if is_onnx(model) {
        let (_, _, imported) = onnx::import::read_file(model)?;
        (imported.backbone(&device)?, model.to_path_buf())
    } else {
        let (backbone, _) = load_backbone(model, &device)?;
        let proto = onnx::backbone_to_onnx(&backbone, Batch::Dynamic)?;
        onnx::export::write(&proto, &tmp)?;
        (backbone, tmp.clone())
    };
    let options = engines.burn;
    let burn_name = format!(
        "burn ({}{}{})",
        cli_device.as_deref().unwrap_or("cpu"),
        match options.precision {
            Precision::Fp32 => String::new(),
            precision => format!(", {precision}"),
        },
        if options.channels_last {
            ", channels-last"
        } else {
            ""
        }
    );
    let burn = Embedder::burn_with(backbone, &device, options);
    let measured = (|| -> Result<(Vec<InferThroughput>, Vec<OpTime>)> {
        let mut op_times = Vec::new();
        let mut results = vec![bench::infer(
            &burn_name,
            &burn,
            batch,
            seconds,
            engines.burn_profile.as_deref(),
        )?];
        if let (true, Embedder::Burn { model, device, .. }) = (engines.burn_resident, &burn) {
            let name = format!("{}, resident)", burn_name.trim_end_matches(')'));
            results.push(bench::infer_resident(
                &name, model, device, options, batch, seconds,
            )?);
        }
        if engines.tract {
            let embedder = OnnxEmbedder::load_with(&onnx_file, engines.tract_conv)?;
            if let Some(images) = engines.tract_ops {
                // As `embed` runs the bench's batch.
                let spread = spreads_each_image(batch);
                op_times = embedder.op_times(&bench::synthetic_images(1), images, spread)?;
            }
            let tract = Embedder::Onnx(embedder);
            let name = match engines.tract_conv {
                ConvAlgorithm::Winograd => "tract",
                ConvAlgorithm::Im2col => "tract (im2col)",
            };
            results.push(bench::infer(name, &tract, batch, seconds, None)?);
        }
        if engines.onnxruntime {
            results.push(onnxruntime(&onnx_file, batch, seconds)?);
        }
        Ok((results, op_times))
    })();
    // The scratch export goes whatever happened.
    let _ = std::fs::remove_file(&tmp);
    let (results, op_times) = measured?;
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
        if engines.tract_ops.is_some() {
            println!("{}", serde_json::json!({ "tract_ops": op_times }));
        }
        return Ok(());
    }
    let reference = results.last().map_or(1.0, |r| r.images_per_second);
    let reference_name = results.last().map_or("", |r| r.engine.as_str()).to_string();
    println!(
        "{:<24} {:>6} {:>8} {:>10} {:>12}",
        "engine",
        "batch",
        "images",
        "img/s",
        format!("× {}", short(&reference_name))
    );
    for r in &results {
        println!(
            "{:<24} {:>6} {:>8} {:>10.2} {:>12.2}",
            r.engine,
            r.batch,
            r.images,
            r.images_per_second,
            r.images_per_second / reference
        );
    }
    if engines.tract_ops.is_some() {
        let threads = if spreads_each_image(batch) {
            let n = rayon::current_num_threads();
            format!("all {n} threads, as a batch of {batch} runs")
        } else {
            "one thread, as a batch runs each image".to_string()
        };
        print_op_times(&op_times, &threads);
    }
    Ok(())
}

fn print_op_times(times: &[OpTime], threads: &str) {
    let total: f64 = times.iter().map(|t| t.ms_per_image).sum();
    println!("\ntract, one image on {threads}, by operation ({total:.1} ms in nodes):");
    println!(
        "{:<32} {:>6} {:>12} {:>7}",
        "operation", "nodes", "ms/image", "share"
    );
    for t in times {
        println!(
            "{:<32} {:>6} {:>12.2} {:>6.1}%",
            t.op,
            t.nodes,
            t.ms_per_image,
            100.0 * t.ms_per_image / total.max(f64::MIN_POSITIVE)
        );
    }
}

fn short(engine: &str) -> &str {
    engine.split_whitespace().next().unwrap_or(engine)
}

/// A scratch ONNX path next to the system's temporary files, unique to this process.
fn tempfile_path(model: &Path) -> PathBuf {
    let stem = model
        .file_stem()
        .map_or("model".into(), |s| s.to_string_lossy().into_owned());
    std::env::temp_dir().join(format!("arcface-bench-{stem}-{}.onnx", std::process::id()))
}

fn onnxruntime(file: &Path, batch: usize, seconds: f64) -> Result<InferThroughput> {
    let python = std::env::var("ARCFACE_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_onnxruntime.py");
    let output = std::process::Command::new(&python)
        .arg(&script)
        .arg(file)
        .args([
            "--batch",
            &batch.to_string(),
            "--seconds",
            &seconds.to_string(),
        ])
        .output()
        .with_context(|| format!("running {python} {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed (is onnxruntime installed for {python}? set ARCFACE_PYTHON): {}",
            script.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let line = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(line.trim())
        .with_context(|| format!("{}: unexpected output `{}`", script.display(), line.trim()))
}

/// Detection + alignment of every face of `photo`, repeated for at least `seconds`.
fn detection(photo: &Path, mtcnn: &Path, seconds: f64, json: bool) -> Result<()> {
    use arcface::infer::{Mtcnn, MtcnnConfig, align_face, read_image};
    let image = read_image(photo)?;
    let detector = Mtcnn::load(mtcnn, MtcnnConfig::default())?;
    let once = || -> Result<usize> {
        let faces = detector.detect(&image)?;
        Ok(faces
            .iter()
            .filter_map(|f| align_face(&image, &f.landmarks))
            .count())
    };
    let faces = once()?;
    let start = std::time::Instant::now();
    let mut runs = 0;
    while runs < 2 || start.elapsed().as_secs_f64() < seconds {
        once()?;
        runs += 1;
    }
    let ms = start.elapsed().as_secs_f64() * 1e3 / runs as f64;
    if json {
        println!(
            "{}",
            serde_json::json!({"photo": photo, "width": image.width(), "height": image.height(),
                               "faces": faces, "runs": runs, "ms_per_photo": ms})
        );
    } else {
        println!(
            "detect + align: {} ({}×{}, {faces} faces): {ms:.1} ms per photo over {runs} runs",
            photo.display(),
            image.width(),
            image.height()
        );
    }
    Ok(())
}

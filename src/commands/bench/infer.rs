//! `arcface bench infer`: burn, tract and onnxruntime on one ONNX file or checkpoint, and
//! MTCNN detection on a photo.

use std::path::{Path, PathBuf};

use anyhow::Result;

use arcface::bench::{self, InferThroughput};
use arcface::checkpoint::load_backbone;
use arcface::embedder::{BurnOptions, Embedder, is_onnx};
use arcface::interop::onnx::{self, Batch};
use arcface::model::Precision;
use arcface::tract::op_profile::OpTime;
use arcface::tract::{ConvAlgorithm, OnnxEmbedder, spreads_each_image};

#[derive(clap::Args)]
pub struct InferArgs {
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
    /// (Python: $ARCFACE_PYTHON, else python3; needs numpy and onnxruntime), in four rounds
    /// alternated with tract's.
    #[arg(long)]
    onnxruntime: bool,
    /// How tract computes the convolutions (ours where they pay, or its own im2col everywhere).
    #[arg(long, value_enum, default_value_t = ConvAlgorithm::Ours)]
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
    onnx_input: arcface::interop::onnx::InputConvention,
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
}

pub fn run(args: &InferArgs, cli_device: &Option<String>) -> Result<()> {
    let InferArgs {
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
    } = args;
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
    Ok(())
}

/// Which engines run next to burn.
pub(super) struct Engines {
    pub(super) tract: bool,
    pub(super) onnxruntime: bool,
    pub(super) burn: BurnOptions,
    /// Also time burn with the batch resident on the device.
    pub(super) burn_resident: bool,
    pub(super) burn_profile: Option<PathBuf>,
    /// Images for a node-by-node profile of tract's plan.
    pub(super) tract_ops: Option<usize>,
    pub(super) tract_conv: ConvAlgorithm,
    /// What pixels an ONNX file takes.
    pub(super) onnx_input: onnx::InputConvention,
}

/// Rounds of tract and onnxruntime alternated, when both run (`--seconds` in all for each).
const ROUNDS: usize = 4;

pub(super) fn infer(
    model: &Path,
    batch: usize,
    seconds: f64,
    engines: Engines,
    json: bool,
    cli_device: &Option<String>,
) -> Result<()> {
    let device = super::super::device_or_cpu(cli_device)?;
    // One batch shape throughout, as `eval` (cuDNN's timed algorithm choice; CUDA only).
    arcface::device::set_cudnn_benchmark(true);
    // Both engines get the same weights; onnxruntime gets a file.
    let tmp = tempfile_path(model);
    let (backbone, onnx_file) = if is_onnx(model) {
        let (_, _, imported) = onnx::import::read_file(model, engines.onnx_input)?;
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
            let embedder =
                OnnxEmbedder::load_with(&onnx_file, engines.tract_conv, engines.onnx_input)?;
            if let Some(images) = engines.tract_ops {
                // As `embed` runs the bench's batch.
                let spread = spreads_each_image(batch);
                op_times = embedder.op_times(&bench::synthetic_images(1), images, spread)?;
            }
            let tract = Embedder::Onnx(embedder);
            let name = match engines.tract_conv {
                ConvAlgorithm::Ours => "tract",
                ConvAlgorithm::Im2col => "tract (im2col)",
            };
            if engines.onnxruntime {
                let shape = (batch, seconds, ROUNDS);
                let both = bench::alternate_with_onnxruntime(name, &tract, &onnx_file, shape)?;
                results.extend(both);
            } else {
                results.push(bench::infer(name, &tract, batch, seconds, None)?);
            }
        } else if engines.onnxruntime {
            results.push(bench::OnnxRuntime::start(&onnx_file, batch)?.time(seconds)?);
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
    print_results(&results, &op_times, engines.tract_ops.is_some(), batch);
    Ok(())
}

/// The engines' throughputs as a table, each as a multiple of the last row's, and tract's
/// time per operation when asked.
fn print_results(results: &[InferThroughput], op_times: &[OpTime], tract_ops: bool, batch: usize) {
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
    for r in results {
        println!(
            "{:<24} {:>6} {:>8} {:>10.2} {:>12.2}",
            r.engine,
            r.batch,
            r.images,
            r.images_per_second,
            r.images_per_second / reference
        );
    }
    let alternated: Vec<&InferThroughput> =
        results.iter().filter(|r| !r.rounds.is_empty()).collect();
    if let [ours, theirs] = alternated[..] {
        let ratios: Vec<String> = (ours.rounds.iter().zip(&theirs.rounds))
            .map(|(a, b)| format!("{:.2}", a / b))
            .collect();
        let (a, b) = (short(&ours.engine), short(&theirs.engine));
        println!(
            "{a} ÷ {b}, round by round (alternated): {}",
            ratios.join(" ")
        );
    }
    if tract_ops {
        let threads = if spreads_each_image(batch) {
            let n = rayon::current_num_threads();
            format!("all {n} threads, as a batch of {batch} runs")
        } else {
            "one thread, as a batch runs each image".to_string()
        };
        print_op_times(op_times, &threads);
    }
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

/// Detection + alignment of every face of `photo`, repeated for at least `seconds`.
pub(super) fn detection(photo: &Path, mtcnn: &Path, seconds: f64, json: bool) -> Result<()> {
    let d = bench::detection(photo, mtcnn, seconds)?;
    if json {
        println!("{}", serde_json::to_string(&d)?);
    } else {
        println!(
            "detect + align: {} ({}×{}, {} faces): {:.1} ms per photo over {} runs",
            photo.display(),
            d.width,
            d.height,
            d.faces,
            d.ms_per_photo,
            d.runs
        );
    }
    Ok(())
}

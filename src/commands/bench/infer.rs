//! `arcface bench infer`: burn, tract and onnxruntime on one ONNX file or checkpoint, and
//! MTCNN detection on a photo.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use arcface::bench::{self, InferThroughput};
use arcface::checkpoint::load_backbone;
use arcface::embedder::{BurnOptions, Embedder, is_onnx};
use arcface::model::Precision;
use arcface::onnx::op_profile::OpTime;
use arcface::onnx::{self, Batch, ConvAlgorithm, OnnxEmbedder, spreads_each_image};

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
pub(super) fn detection(photo: &Path, mtcnn: &Path, seconds: f64, json: bool) -> Result<()> {
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

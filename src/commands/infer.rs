//! `arcface infer`: photos in, faces, embeddings and same/different verdicts out.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::json;

use arcface::embedder::{BurnOptions, Engine};
use arcface::infer::{ImageResult, Mtcnn, MtcnnConfig, Pipeline, cosine};
use arcface::interop::onnx::InputConvention;
use arcface::progress;

#[derive(clap::Args)]
pub struct InferArgs {
    /// Images (JPEG or PNG), or one folder whose images are all embedded into --out.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// A checkpoint (.ckpt) or an ONNX embedder (.onnx). tract runs ONNX files in fp32 on the
    /// CPU; on a LibTorch device or in bf16 their weights run in our backbone.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    burn: BurnOptions,
    /// Which engine computes: tract wherever it can (fp32 on the CPU; a checkpoint exported to
    /// ONNX in memory), burn for a checkpoint's own arithmetic (as training's validation).
    #[arg(long, value_enum, default_value_t)]
    engine: Engine,
    /// What pixels an ONNX file takes (found as insightface finds it unless given).
    #[arg(long, value_enum, default_value_t)]
    onnx_input: InputConvention,
    #[arg(long)]
    json: bool,
    /// The inputs are already aligned 112×112 face crops: no detection.
    #[arg(long)]
    no_detect: bool,
    /// Save every aligned crop here as <image>_<i>.png.
    #[arg(long)]
    save_crops: Option<PathBuf>,
    /// Cosine similarity at or above which two faces are the same person.
    #[arg(long, default_value_t = 0.3)]
    threshold: f32,
    /// Add the embedding of the mirrored crop (as insightface's validation does).
    #[arg(long)]
    flip: bool,
    /// Folder with pnet.onnx, rnet.onnx, onet.onnx (scripts/fetch-models.sh).
    #[arg(long, default_value = "models/mtcnn")]
    mtcnn: PathBuf,
    /// Smallest face side, in pixels, that detection looks for.
    #[arg(long, default_value_t = 20.0)]
    min_face: f64,
    /// Ratio between the sizes of consecutive pyramid levels.
    #[arg(long, default_value_t = 0.709)]
    scale_factor: f64,
    /// Score thresholds of P-Net, R-Net and O-Net.
    #[arg(long, value_delimiter = ',', num_args = 3, default_values_t = [0.6, 0.7, 0.7])]
    thresholds: Vec<f64>,
    /// With a folder: the JSON-lines file the embeddings go to (one line per face).
    #[arg(long, default_value = "embeddings.jsonl")]
    out: PathBuf,
}

fn pipeline(args: &InferArgs, cli_device: &Option<String>) -> Result<Pipeline> {
    let embedder = super::embedder(
        &args.model,
        args.burn,
        args.onnx_input,
        args.engine,
        cli_device,
    )?;
    let detector = if args.no_detect {
        None
    } else {
        if !(args.min_face > 0.0 && args.scale_factor > 0.1 && args.scale_factor < 1.0) {
            bail!("--min-face must be positive and --scale-factor within (0.1, 1)");
        }
        let config = MtcnnConfig {
            min_face_size: args.min_face,
            thresholds: [args.thresholds[0], args.thresholds[1], args.thresholds[2]],
            scale_factor: args.scale_factor,
        };
        Some(Mtcnn::load(&args.mtcnn, config)?)
    };
    Ok(Pipeline {
        detector,
        embedder,
        flip: args.flip,
    })
}

pub fn run(args: &InferArgs, cli_device: &Option<String>) -> Result<()> {
    if let [dir] = args.inputs.as_slice()
        && dir.is_dir()
    {
        return folder(args, dir, &pipeline(args, cli_device)?);
    }
    if let Some(dir) = args.inputs.iter().find(|p| p.is_dir()) {
        bail!("{}: give one folder alone, or image files", dir.display());
    }
    let pipeline = pipeline(args, cli_device)?;
    let results = args
        .inputs
        .iter()
        .map(|path| pipeline.run(path, args.save_crops.as_deref()))
        .collect::<Result<Vec<ImageResult>>>()?;
    let faceless: Vec<String> = results
        .iter()
        .filter(|r| r.faces.is_empty())
        .map(|r| r.path.display().to_string())
        .collect();
    // Cosine similarity of the largest faces, when every image has one.
    let similarity: Option<Vec<Vec<f32>>> =
        (results.len() >= 2 && faceless.is_empty()).then(|| {
            results
                .iter()
                .map(|a| {
                    results
                        .iter()
                        .map(|b| cosine(&a.faces[0].embedding, &b.faces[0].embedding))
                        .collect()
                })
                .collect()
        });
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&json!({
                "images": results,
                "similarity": similarity,
                "model": model_json(&pipeline.embedder),
            }))?
        );
    } else {
        print_table(&results, similarity.as_deref(), args.threshold);
    }
    for path in &faceless {
        eprintln!("{path}: no face found");
    }
    if results.len() >= 2 && !faceless.is_empty() {
        bail!("cannot compare: {} image(s) without a face", faceless.len());
    }
    Ok(())
}

/// What `--json` says of the model: its input convention ("raw": RGB 0–255 into the file;
/// "normalized": (x − 127.5)/127.5) and the notes printed on stderr.
pub(super) fn model_json(embedder: &arcface::embedder::Embedder) -> serde_json::Value {
    json!({
        "input": embedder.input().map_or("raw", |i| i.name()),
        "input_detected": embedder.input().is_some_and(|i| i.detected),
        "notes": embedder.notes(),
    })
}

fn print_table(results: &[ImageResult], similarity: Option<&[Vec<f32>]>, threshold: f32) {
    for r in results {
        println!("{}: {} face(s)", r.path.display(), r.faces.len());
        for (i, f) in r.faces.iter().enumerate() {
            let marks: Vec<String> = f
                .landmarks
                .iter()
                .map(|[x, y]| format!("({x:.0},{y:.0})"))
                .collect();
            println!(
                "  {i}  box ({:.0},{:.0})–({:.0},{:.0})  score {:.3}  landmarks {}",
                f.bbox[0],
                f.bbox[1],
                f.bbox[2],
                f.bbox[3],
                f.score,
                marks.join(" ")
            );
        }
    }
    let Some(similarity) = similarity else {
        return;
    };
    println!("cosine similarity of the largest faces (same person at ≥ {threshold}):");
    for (i, a) in results.iter().enumerate() {
        for (j, b) in results.iter().enumerate().skip(i + 1) {
            let s = similarity[i][j];
            let verdict = if s >= threshold { "same" } else { "different" };
            println!(
                "  {} vs {}: {s:.3} → {verdict}",
                a.path.display(),
                b.path.display()
            );
        }
    }
}

/// Every image of `dir` (sorted), one JSON line per face in `args.out`; unreadable files are
/// listed at the end and make the exit status non-zero, the rest is still written.
fn folder(args: &InferArgs, dir: &Path, pipeline: &Pipeline) -> Result<()> {
    let mut images: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| {
                ["jpg", "jpeg", "png"].contains(&e.to_string_lossy().to_lowercase().as_str())
            })
        })
        .collect();
    images.sort();
    if images.is_empty() {
        bail!("{}: no .jpg, .jpeg or .png files", dir.display());
    }
    let bar = progress::bar(images.len() as u64, "infer");
    let (mut faces, mut faceless, mut failed) = (0, Vec::new(), Vec::new());
    // Written whole or not at all: an interrupted run leaves no half list of embeddings.
    arcface::fs::write_atomically(&args.out, |out| {
        for path in &images {
            match pipeline.run(path, args.save_crops.as_deref()) {
                Ok(result) => {
                    if result.faces.is_empty() {
                        faceless.push(path.display().to_string());
                    }
                    for (i, f) in result.faces.iter().enumerate() {
                        let line = json!({"path": path, "face": i, "bbox": f.bbox,
                                          "score": f.score, "landmarks": f.landmarks,
                                          "embedding": f.embedding});
                        writeln!(out, "{line}")?;
                        faces += 1;
                    }
                }
                Err(e) => failed.push(format!("{e:#}")),
            }
            bar.inc(1);
        }
        Ok(())
    })
    .with_context(|| format!("writing {}", args.out.display()))?;
    bar.finish_and_clear();
    println!(
        "{} images, {faces} faces: embeddings (JSON lines: path, face, bbox, score, landmarks, \
         embedding) in {}",
        images.len(),
        args.out.display()
    );
    if !faceless.is_empty() {
        println!(
            "no face in {} image(s): {}",
            faceless.len(),
            faceless.join(", ")
        );
    }
    for e in &failed {
        eprintln!("error: {e}");
    }
    if !failed.is_empty() {
        bail!("{} file(s) could not be read", failed.len());
    }
    Ok(())
}

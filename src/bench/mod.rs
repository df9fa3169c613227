//! `arcface bench`: throughput measurements (benchmarks, never timed tests).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use crate::data::augment::Augmentations;
use crate::data::dataset::RecDataset;
use crate::data::loader::{Cursor, Loader, LoaderConfig};

pub mod dist;
mod gpu_memory;
mod head;
mod references;
mod train;

pub use head::{HeadBenchOptions, HeadThroughput, head};
pub use references::{OnnxRuntime, TorchHead, alternate_with_onnxruntime, pytorch_head};
pub use train::{TrainBenchOptions, TrainThroughput, train};

#[derive(Debug, Serialize)]
pub struct DataThroughput {
    /// Which augmentations were on ("flip only", "adaface preset", or one of them always).
    pub augment: &'static str,
    pub threads: usize,
    pub images: usize,
    pub seconds: f64,
    pub images_per_second: f64,
    pub images_per_second_per_thread: f64,
}

/// One decoder's images per second on one thread over a dataset's first records.
#[derive(Debug, Clone, Serialize)]
pub struct DecodeThroughput {
    pub decoder: &'static str,
    pub images: usize,
    pub images_per_second: f64,
}

/// The two JPEG decoders on the same records, one thread, each record decoded `rounds` times:
/// the `image` crate's (training batches) and libjpeg-turbo's (validation, eval, photos).
pub fn decoders(dir: &Path, records: usize, rounds: usize) -> Result<Vec<DecodeThroughput>> {
    use crate::data::image::{DecodeError, decode_face, decode_face_exact};
    let dataset = RecDataset::open(dir)?;
    let n = records.min(dataset.len());
    let samples = (0..n)
        .map(|i| dataset.sample(i).map(|s| s.image))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::new();
    type Decode = fn(&[u8]) -> Result<image::RgbImage, DecodeError>;
    for (decoder, decode) in [
        ("image crate (training)", decode_face as Decode),
        (
            "libjpeg-turbo (eval; the image crate checks first)",
            decode_face_exact as Decode,
        ),
    ] {
        let start = Instant::now();
        for _ in 0..rounds {
            for bytes in &samples {
                decode(bytes)?;
            }
        }
        let images = n * rounds;
        out.push(DecodeThroughput {
            decoder,
            images,
            images_per_second: images as f64 / start.elapsed().as_secs_f64(),
        });
    }
    Ok(out)
}

/// The augmentation settings `bench data` runs: the flip alone, each preset, and each
/// augmentation on every image.
pub fn augmentation_settings() -> Vec<(&'static str, Augmentations)> {
    use crate::config::AugmentPreset;
    let off = Augmentations::default();
    vec![
        ("flip only", off),
        (
            "adaface preset (0.2 each)",
            AugmentPreset::Adaface.augmentations(),
        ),
        (
            "arcface_torch preset (dali_aug)",
            AugmentPreset::ArcfaceTorch.augmentations(),
        ),
        ("crop always", Augmentations { crop: 1.0, ..off }),
        (
            "low resolution always",
            Augmentations {
                low_res: 1.0,
                ..off
            },
        ),
        (
            "photometric always",
            Augmentations {
                photometric: 1.0,
                ..off
            },
        ),
        ("resize always", Augmentations { resize: 1.0, ..off }),
        ("blur always", Augmentations { blur: 1.0, ..off }),
        ("hsv always", Augmentations { hsv: 1.0, ..off }),
        ("gray always", Augmentations { gray: 1.0, ..off }),
    ]
}

/// Decoded, augmented and flipped images per second through the real loader (prefetch
/// included), for each of `settings`, with 1 thread and with `threads`, over `batches` batches
/// of 128 after one warm-up batch.
pub fn data(
    dir: &Path,
    threads: usize,
    batches: usize,
    settings: &[(&'static str, Augmentations)],
) -> Result<Vec<DataThroughput>> {
    let dataset = Arc::new(RecDataset::open(dir)?);
    let mut counts = vec![1];
    if threads > 1 {
        counts.push(threads);
    }
    let mut results = Vec::new();
    for &(name, augment) in settings {
        for &t in &counts {
            let config = LoaderConfig {
                batch_size: 128,
                seed: 1,
                num_workers: t,
                prefetch: 2,
                rank: 0,
                world: 1,
                flip: true,
                augment,
            };
            let loader = Loader::new(dataset.clone(), config, Cursor::default())?;
            loader.next_batch()?;
            let start = Instant::now();
            let mut images = 0;
            for _ in 0..batches {
                images += loader.next_batch()?.len();
            }
            let seconds = start.elapsed().as_secs_f64();
            let rate = images as f64 / seconds;
            results.push(DataThroughput {
                augment: name,
                threads: t,
                images,
                seconds,
                images_per_second: rate,
                images_per_second_per_thread: rate / t as f64,
            });
        }
    }
    Ok(results)
}

/// `n` raw RGB 112×112 images of a fixed pattern covering 0–255, back to back: what the
/// inference benches feed (the speed of these models does not depend on the pixels).
pub fn synthetic_images(n: usize) -> Vec<f32> {
    (0..n * crate::embedder::IMAGE_VALUES)
        .map(|i| ((i * 7919) % 256) as f32)
        .collect()
}

/// The process's peak resident set (VmHWM), MiB.
pub fn peak_host_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct InferThroughput {
    /// What ran the model: "burn (flex)", "tract", "onnxruntime".
    pub engine: String,
    pub batch: usize,
    pub images: usize,
    pub seconds: f64,
    pub images_per_second: f64,
    /// Round by round, where rounds alternated with another engine's: each round's rate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rounds: Vec<f64>,
}

impl InferThroughput {
    /// `images` embedded by `engine` in batches of `batch` over `seconds`.
    fn new(engine: &str, batch: usize, images: usize, seconds: f64) -> InferThroughput {
        InferThroughput {
            engine: engine.to_string(),
            batch,
            images,
            seconds,
            images_per_second: images as f64 / seconds,
            rounds: Vec::new(),
        }
    }

    /// Rounds of one engine as one throughput, keeping each round's rate.
    fn summed(rounds: &[InferThroughput]) -> InferThroughput {
        let images = rounds.iter().map(|r| r.images).sum();
        let seconds = rounds.iter().map(|r| r.seconds).sum();
        let (engine, batch) = rounds
            .first()
            .map_or(("", 0), |r| (r.engine.as_str(), r.batch));
        InferThroughput {
            rounds: rounds.iter().map(|r| r.images_per_second).collect(),
            ..InferThroughput::new(engine, batch, images, seconds)
        }
    }
}

/// Embeddings per second of `embedder` on batches of `batch` synthetic images, after one
/// warm-up batch, over at least `min_seconds` and two batches.
/// With `profile`, three more batches are then recorded by libtorch's profiler into that trace.
pub fn infer(
    engine: &str,
    embedder: &crate::embedder::Embedder,
    batch: usize,
    min_seconds: f64,
    profile: Option<&Path>,
) -> Result<InferThroughput> {
    let images = synthetic_images(batch);
    embedder.embed(&images)?;
    let start = Instant::now();
    let mut done = 0;
    while done < 2 * batch || start.elapsed().as_secs_f64() < min_seconds {
        embedder.embed(&images)?;
        done += batch;
    }
    let seconds = start.elapsed().as_secs_f64();
    if let Some(trace) = profile {
        // embed() reads the embeddings back: the device has finished when it returns.
        crate::profile::record(trace, || {
            for _ in 0..3 {
                embedder.embed(&images)?;
            }
            Ok(())
        })?;
    }
    Ok(InferThroughput::new(engine, batch, done, seconds))
}

/// Batches queued between two waits for the device in [`infer_resident`].
const RESIDENT_CHUNK: usize = 5;

/// Embeddings per second of `model` with the batch already on `device` and the embeddings left
/// there, batches queued back to back and waited for every few: what PyTorch's anchor
/// (`torch_r100_bench.py`) times, so that the two compare. [`infer`] times a user's path, host
/// memory to host memory (conversion and copies included). After three warm-up batches, at
/// least `min_seconds` and two chunks; `options.channels_last` stores the batch NHWC first, as
/// the anchor's channels-last variant.
pub fn infer_resident(
    engine: &str,
    model: &crate::model::Backbone,
    device: &burn::tensor::Device,
    options: crate::embedder::BurnOptions,
    batch: usize,
    min_seconds: f64,
) -> Result<InferThroughput> {
    use burn::tensor::{Tensor, TensorData};
    let size = crate::model::iresnet::INPUT_SIZE;
    let data = TensorData::new(synthetic_images(batch), [batch, 3, size, size]);
    let images = crate::model::memory_format::channels_last(
        Tensor::<4>::from_data(data, device),
        options.channels_last,
    );
    let wait = || {
        device
            .sync()
            .map_err(|e| anyhow::anyhow!("waiting for device {device:?}: {e:?}"))
    };
    for _ in 0..3 {
        let _ = model.forward_at(images.clone(), options.precision);
    }
    wait()?;
    let start = Instant::now();
    let mut done = 0;
    while done < 2 * RESIDENT_CHUNK * batch || start.elapsed().as_secs_f64() < min_seconds {
        for _ in 0..RESIDENT_CHUNK {
            let _ = model.forward_at(images.clone(), options.precision);
        }
        wait()?;
        done += RESIDENT_CHUNK * batch;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(InferThroughput::new(engine, batch, done, seconds))
}

/// MTCNN detection and alignment of one photo's faces, timed.
#[derive(Debug, Serialize)]
pub struct DetectionThroughput {
    pub photo: std::path::PathBuf,
    pub width: u32,
    pub height: u32,
    pub faces: usize,
    pub runs: usize,
    pub ms_per_photo: f64,
}

/// Detection + alignment of every face of `photo` with the MTCNN weights in `mtcnn`, repeated
/// for at least `seconds` (and twice).
pub fn detection(photo: &Path, mtcnn: &Path, seconds: f64) -> Result<DetectionThroughput> {
    use crate::infer::{Mtcnn, MtcnnConfig, align_face, read_image};
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
    let start = Instant::now();
    let mut runs = 0;
    while runs < 2 || start.elapsed().as_secs_f64() < seconds {
        once()?;
        runs += 1;
    }
    Ok(DetectionThroughput {
        photo: photo.to_path_buf(),
        width: image.width(),
        height: image.height(),
        faces,
        runs,
        ms_per_photo: start.elapsed().as_secs_f64() * 1e3 / runs as f64,
    })
}

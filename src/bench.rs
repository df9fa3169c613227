//! `arcface bench`: throughput measurements (benchmarks, never timed tests).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use crate::data::dataset::RecDataset;
use crate::data::loader::{Cursor, Loader, LoaderConfig};

#[derive(Debug, Serialize)]
pub struct DataThroughput {
    pub threads: usize,
    pub images: usize,
    pub seconds: f64,
    pub images_per_second: f64,
    pub images_per_second_per_thread: f64,
}

/// Decoded + flipped images per second through the real loader (prefetch included), with 1
/// thread and with `threads`, over `batches` batches of 128 after one warm-up batch.
pub fn data(dir: &Path, threads: usize, batches: usize) -> Result<Vec<DataThroughput>> {
    let dataset = Arc::new(RecDataset::open(dir)?);
    let mut counts = vec![1];
    if threads > 1 {
        counts.push(threads);
    }
    let mut results = Vec::new();
    for t in counts {
        let config = LoaderConfig {
            batch_size: 128,
            seed: 1,
            num_workers: t,
            prefetch: 2,
            rank: 0,
            world: 1,
            flip: true,
        };
        let loader =
            Loader::new(dataset.clone(), config, Cursor::default()).map_err(anyhow::Error::msg)?;
        loader.next_batch()?;
        let start = Instant::now();
        let mut images = 0;
        for _ in 0..batches {
            images += loader.next_batch()?.len();
        }
        let seconds = start.elapsed().as_secs_f64();
        let rate = images as f64 / seconds;
        results.push(DataThroughput {
            threads: t,
            images,
            seconds,
            images_per_second: rate,
            images_per_second_per_thread: rate / t as f64,
        });
    }
    Ok(results)
}

#[derive(Debug, Serialize)]
pub struct TrainThroughput {
    pub network: String,
    pub batch_size: usize,
    pub num_classes: usize,
    pub steps: usize,
    pub forward_ms: f64,
    pub backward_ms: f64,
    pub optimizer_ms: f64,
    pub step_ms: f64,
    pub images_per_second: f64,
}

/// Training steps on random input tensors (the loader is not measured): forward (with the
/// loss read back), backward and the optimizer timed apart, after one warm-up step.
pub fn train(
    config: &crate::config::Config,
    num_classes: usize,
    steps: usize,
    device: &burn::tensor::Device,
) -> Result<TrainThroughput> {
    use burn::optim::GradientsParams;
    use burn::tensor::{Distribution, Int, Tensor};

    use crate::model::{backbone_config, head_config};
    use crate::train::sgd::{Sgd, SgdSettings};

    let train_device = device.clone().autodiff();
    let mut backbone = backbone_config(config).init(&train_device);
    let mut head = head_config(config, num_classes).init(&train_device);
    let mut sgd = Sgd::new(SgdSettings {
        momentum: config.momentum,
        weight_decay: config.weight_decay,
        no_decay_on_norm_and_prelu: false,
    });
    let b = config.batch_size;
    let images = Tensor::<4>::random(
        [b, 3, 112, 112],
        Distribution::Uniform(0.0, 255.0),
        &train_device,
    );
    let labels = Tensor::<1, Int>::from_data(
        burn::tensor::TensorData::new(
            (0..b).map(|i| (i % num_classes) as i64).collect::<Vec<_>>(),
            [b],
        ),
        &train_device,
    );
    let (mut fwd, mut bwd, mut opt) = (0.0, 0.0, 0.0);
    for step in 0..=steps {
        let t0 = Instant::now();
        let loss = head.forward(backbone.forward(images.clone()), labels.clone());
        let _: f32 = loss.clone().into_scalar();
        let t1 = Instant::now();
        let mut grads = loss.backward();
        let mut gb = GradientsParams::from_module(&mut grads, &backbone);
        let mut gh = GradientsParams::from_module(&mut grads, &head);
        let t2 = Instant::now();
        backbone = sgd.step(backbone, &mut gb, 0.01, 1.0, "backbone.");
        head = sgd.step(head, &mut gh, 0.01, 1.0, "head.");
        // Force the update to finish before the clock stops (asynchronous backends).
        let _: f32 = head.weight.val().sum().into_scalar();
        let t3 = Instant::now();
        if step > 0 {
            fwd += (t1 - t0).as_secs_f64();
            bwd += (t2 - t1).as_secs_f64();
            opt += (t3 - t2).as_secs_f64();
        }
    }
    let n = steps as f64;
    let step_ms = (fwd + bwd + opt) / n * 1e3;
    Ok(TrainThroughput {
        network: config.network.name().to_string(),
        batch_size: b,
        num_classes,
        steps,
        forward_ms: fwd / n * 1e3,
        backward_ms: bwd / n * 1e3,
        optimizer_ms: opt / n * 1e3,
        step_ms,
        images_per_second: b as f64 / step_ms * 1e3,
    })
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct InferThroughput {
    /// What ran the model: "burn (flex)", "tract", "onnxruntime".
    pub engine: String,
    pub batch: usize,
    pub images: usize,
    pub seconds: f64,
    pub images_per_second: f64,
}

/// Embeddings per second of `embedder` on batches of `batch` synthetic images, after one
/// warm-up batch, over at least `min_seconds` and two batches.
pub fn infer(
    engine: &str,
    embedder: &crate::embedder::Embedder,
    batch: usize,
    min_seconds: f64,
) -> Result<InferThroughput> {
    use crate::embedder::IMAGE_VALUES;
    let images: Vec<f32> = (0..batch * IMAGE_VALUES)
        .map(|i| ((i * 7919) % 256) as f32)
        .collect();
    embedder.embed(&images)?;
    let start = Instant::now();
    let mut done = 0;
    while done < 2 * batch || start.elapsed().as_secs_f64() < min_seconds {
        embedder.embed(&images)?;
        done += batch;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(InferThroughput {
        engine: engine.to_string(),
        batch,
        images: done,
        seconds,
        images_per_second: done as f64 / seconds,
    })
}

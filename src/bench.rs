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
    pub precision: String,
    /// The devices, one replica each.
    pub devices: Vec<String>,
    /// Images per device and step.
    pub batch_size: usize,
    pub num_classes: usize,
    pub steps: usize,
    /// Forward (with the loss read back) and backward apart: one device only, since replicas
    /// run both in one thread each.
    pub forward_ms: Option<f64>,
    pub backward_ms: Option<f64>,
    /// Forward and backward of all replicas, with the gradient averaging.
    pub forward_backward_ms: f64,
    pub optimizer_ms: f64,
    pub step_ms: f64,
    /// Images per second over all devices.
    pub images_per_second: f64,
    pub loss: f64,
    /// Peak resident memory of this process (host), MiB.
    pub peak_host_mib: f64,
    /// Peak memory in use on the CUDA devices during the timed steps, as nvidia-smi reports it
    /// (the whole device: CUDA context and allocator cache included), MiB; None off CUDA.
    pub peak_gpu_mib: Option<f64>,
    /// LibTorch's own convolution and BatchNorm gradient kernels (false: burn's compositions).
    pub libtorch_fused_kernels: bool,
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

/// Samples `nvidia-smi`'s memory.used of some GPUs every 20 ms and keeps the highest sum.
/// nvidia-smi rather than the allocator's counters: LibTorch's are not reachable through tch,
/// and `scripts/gpu-check.sh` measures PyTorch's anchor with this same instrument.
struct GpuMemorySampler {
    child: std::process::Child,
    reader: std::thread::JoinHandle<Option<f64>>,
}

impl GpuMemorySampler {
    fn start(indices: &[usize]) -> Option<GpuMemorySampler> {
        use std::io::BufRead;
        let list: Vec<String> = indices.iter().map(|i| i.to_string()).collect();
        let mut child = std::process::Command::new("nvidia-smi")
            .args([
                "--query-gpu=memory.used",
                "--format=csv,noheader,nounits",
                "-lms",
                "20",
                "-i",
                &list.join(","),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let stdout = child.stdout.take()?;
        let per_round = indices.len();
        let reader = std::thread::spawn(move || {
            let mut peak: Option<f64> = None;
            let mut round = Vec::new();
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(v) = line.trim().parse::<f64>() {
                    round.push(v);
                }
                if round.len() == per_round {
                    let sum: f64 = round.drain(..).sum();
                    peak = Some(peak.map_or(sum, |p: f64| p.max(sum)));
                }
            }
            peak
        });
        Some(GpuMemorySampler { child, reader })
    }

    fn stop(mut self) -> Option<f64> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reader.join().ok().flatten()
    }
}

/// Training steps on random input tensors (the loader is not measured) on every device of
/// `spec` (data parallel beyond one), after one warm-up step: forward (with the loss read
/// back), backward and the optimizer timed apart.
pub fn train(
    config: &crate::config::Config,
    num_classes: usize,
    steps: usize,
    spec: &crate::device::DeviceSpec,
) -> Result<TrainThroughput> {
    use burn::tensor::{Distribution, Int, Tensor};

    use crate::model::Trainee;
    use crate::train::replicas::Replicas;
    use crate::train::sgd::{Sgd, SgdSettings};

    let devices = spec.resolve()?;
    crate::device::set_cudnn_benchmark(config.cudnn_benchmark);
    let train_devices: Vec<_> = devices.iter().map(|d| d.clone().autodiff()).collect();
    let make = |d: &burn::tensor::Device| Trainee::init(config, num_classes, d);
    let mut model = make(&train_devices[0]);
    let mut replicas = Replicas::new(&train_devices, make);
    let mut sgd = Sgd::new(SgdSettings {
        momentum: config.momentum,
        weight_decay: config.weight_decay,
        no_decay_on_norm_and_prelu: false,
    });
    let b = config.batch_size;
    let shards: Vec<_> = train_devices
        .iter()
        .map(|d| {
            let images =
                Tensor::<4>::random([b, 3, 112, 112], Distribution::Uniform(0.0, 255.0), d);
            let labels = Tensor::<1, Int>::from_data(
                burn::tensor::TensorData::new(
                    (0..b).map(|i| (i % num_classes) as i64).collect::<Vec<_>>(),
                    [b],
                ),
                d,
            );
            (images, labels)
        })
        .collect();
    let precision = config.precision;
    let single = devices.len() == 1;
    let mut sampler = None;
    let (mut fwd, mut bwd, mut fwd_bwd, mut opt) = (0.0, 0.0, 0.0, 0.0);
    let mut loss = f64::NAN;
    for step in 0..=steps {
        if let (1, crate::device::DeviceSpec::Cuda(indices)) = (step, spec) {
            sampler = GpuMemorySampler::start(indices);
        }
        let t0 = Instant::now();
        let mut grads = if single {
            let (images, labels) = shards[0].clone();
            let value = model.loss(images, labels, precision);
            loss = value.clone().into_scalar::<f32>() as f64;
            let t1 = Instant::now();
            let mut g = value.backward();
            let grads = burn::optim::GradientsParams::from_module(&mut g, &model);
            if step > 0 {
                fwd += (t1 - t0).as_secs_f64();
                bwd += t1.elapsed().as_secs_f64();
            }
            grads
        } else {
            let (value, grads) =
                replicas.forward_backward(&model, shards.clone(), |m, (x, y)| {
                    m.loss(x, y, precision)
                })?;
            loss = value;
            grads
        };
        let t2 = Instant::now();
        model = sgd.step(model, &mut grads, 0.01, 1.0, "");
        // Force the update to finish before the clock stops (asynchronous backends).
        let _: f32 = model.head.weight.val().sum().into_scalar();
        let t3 = Instant::now();
        if step > 0 {
            fwd_bwd += (t2 - t0).as_secs_f64();
            opt += (t3 - t2).as_secs_f64();
        }
    }
    let peak_gpu_mib = sampler.and_then(GpuMemorySampler::stop);
    let n = steps.max(1) as f64;
    let step_ms = (fwd_bwd + opt) / n * 1e3;
    Ok(TrainThroughput {
        network: config.network.name().to_string(),
        precision: precision.to_string(),
        devices: match spec {
            crate::device::DeviceSpec::Cuda(indices) => {
                indices.iter().map(|i| format!("cuda:{i}")).collect()
            }
            other => vec![other.to_string()],
        },
        batch_size: b,
        num_classes,
        steps,
        forward_ms: single.then_some(fwd / n * 1e3),
        backward_ms: single.then_some(bwd / n * 1e3),
        forward_backward_ms: fwd_bwd / n * 1e3,
        optimizer_ms: opt / n * 1e3,
        step_ms,
        images_per_second: (b * devices.len()) as f64 / step_ms * 1e3,
        loss,
        peak_host_mib: peak_host_mib(),
        peak_gpu_mib,
        libtorch_fused_kernels: crate::device::libtorch_fused_kernels(),
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

//! `arcface bench train`: training steps on random tensors, so the loader is not measured.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use burn::tensor::{Device, Distribution, Tensor};
use serde::Serialize;

use super::gpu_memory::GpuMemorySampler;
use super::peak_host_mib;
use crate::config::Config;
use crate::device::DeviceSpec;
use crate::distributed::Group;
use crate::model::memory_format::channels_last;
use crate::model::{BackboneAndHead, BackboneConfig, Precision};
use crate::train::optimizer::Optimizer;
use crate::train::partial_fc::{PartialFc, wire_bytes};
use crate::train::step::{PartTimes, gradients};

/// Batches of inputs the steps take in turn (as PyTorch's anchor does), so that no step sees
/// exactly the tensors of the one before.
const INPUT_SETS: usize = 4;

#[derive(Debug, Clone)]
pub struct TrainBenchOptions {
    /// Untimed steps first: cuDNN's benchmark mode tries its algorithms on the first one.
    pub warmup: usize,
    /// Also record `PROFILED_STEPS` steps with libtorch's profiler into this Chrome trace.
    pub profile: Option<PathBuf>,
    /// The backbone's stage widths instead of the network's (its depth kept).
    pub widths: Option<[usize; 4]>,
}

/// Steps recorded by `--profile`.
pub const PROFILED_STEPS: usize = 3;

#[derive(Debug, Serialize)]
pub struct TrainThroughput {
    pub network: String,
    /// Stage widths other than the network's, if `TrainBenchOptions::widths` set them.
    pub widths: Option<[usize; 4]>,
    /// Parameters of the backbone and the head (as `summary` counts them: BatchNorm's running
    /// statistics are state, not parameters).
    pub parameters: usize,
    pub precision: String,
    /// The config's optimizer ("sgd", "adamw"), which the steps run.
    pub optimizer: String,
    /// Images and activations stored channels-last (LibTorch).
    pub channels_last: bool,
    /// This rank's device.
    pub device: String,
    /// Ranks of the process group (1: no collectives) and its engine ("Gloo", "NCCL", "none").
    pub world_size: usize,
    pub backend: String,
    /// Images per rank and step.
    pub batch_size: usize,
    pub num_classes: usize,
    pub warmup_steps: usize,
    pub steps: usize,
    /// Step time with the steps queued back to back and one wait for the devices at the end,
    /// as a training run goes (and as PyTorch's anchor times itself).
    pub step_ms: f64,
    /// Images per second over all ranks, from `step_ms`.
    pub images_per_second: f64,
    /// The parts, from as many more steps with a wait for the device after each part (so
    /// they add up to a little more than `step_ms`).
    pub forward_ms: f64,
    /// The model-parallel head's forward and backward, its collectives included.
    pub head_ms: f64,
    /// The head's all-gathers (embeddings, labels) and all-reduces (softmax maxima and sums,
    /// targets, embeddings' gradients).
    pub head_collectives_ms: f64,
    pub backward_ms: f64,
    /// The backbone gradients' bucketed all-reduce (0 for a single rank).
    pub all_reduce_ms: f64,
    pub optimizer_ms: f64,
    /// Partial FC's fraction of each rank's centres a step uses.
    pub sample_rate: f64,
    /// Bytes of the head on each rank: its centres, their momentum and gradient (this rank's
    /// shard: ⌈classes / ranks⌉ rows at most).
    pub head_bytes_per_rank: u64,
    /// Bytes each rank sends per step in the backbone gradients' ring all-reduce (2(n−1)/n of
    /// the gradient, NCCL's and Gloo's ring).
    pub all_reduce_bytes_per_rank: u64,
    /// Bytes each rank sends per step in the head's collectives.
    pub head_bytes_sent_per_rank: u64,
    pub loss: f64,
    /// Peak resident memory of this process (host), MiB.
    pub peak_host_mib: f64,
    /// Peak memory in use on the CUDA devices during the timed steps, as nvidia-smi reports it
    /// (the whole device: CUDA context and allocator cache included), MiB; None off CUDA.
    pub peak_gpu_mib: Option<f64>,
    /// Peak bytes allocated by libtorch's CUDA caching allocator during the timed steps, MiB,
    /// the largest over the devices: what PyTorch's `torch.cuda.max_memory_allocated` reports
    /// (the anchor resets it after its warm-up too). None off CUDA.
    pub peak_allocated_mib: Option<f64>,
    /// The same for the memory the allocator reserved (`max_memory_reserved`).
    pub peak_reserved_mib: Option<f64>,
    /// LibTorch's own convolution and BatchNorm gradient kernels (false: burn's compositions).
    pub libtorch_fused_kernels: bool,
    /// The Chrome trace written by `--profile`.
    pub profile: Option<PathBuf>,
}

/// The model, optimizer and inputs of the benchmark, and one step over them.
struct Bench {
    device: Device,
    group: Group,
    head: PartialFc,
    /// The config's (SGD or AdamW), as training builds it.
    optimizer: Optimizer,
    /// `INPUT_SETS` sets of (images, labels).
    inputs: Vec<(Tensor<4>, Vec<u32>)>,
    precision: Precision,
}

impl Bench {
    /// Waits until the device has finished what was queued.
    fn sync(&self) -> Result<()> {
        self.device
            .sync()
            .map_err(|e| anyhow!("waiting for device {:?}: {e:?}", self.device))
    }

    /// One step as training runs it (`train::step::gradients`, then the config's optimizer);
    /// with `times`, each part waited for and timed, the optimizer into `optimizer`.
    fn step(
        &mut self,
        model: BackboneAndHead,
        step: usize,
        times: Option<(&mut PartTimes, &mut f64)>,
    ) -> Result<(BackboneAndHead, f64)> {
        let (images, labels) = &self.inputs[step % INPUT_SETS];
        let (parts, optimizer) = match times {
            Some((p, o)) => (Some(p), Some(o)),
            None => (None, None),
        };
        let mut g = gradients(
            &model,
            &mut self.head,
            images.clone(),
            labels,
            self.precision,
            &self.group,
            step,
            parts,
        )?;
        let start = Instant::now();
        let model = self
            .optimizer
            .step(model, &mut g.grads, 0.01, 1.0, step, "");
        if let Some(o) = optimizer {
            self.sync()?;
            *o += start.elapsed().as_secs_f64();
        }
        Ok((model, g.loss))
    }
}

/// Parameter counts of the benchmarked model.
struct Counts {
    parameters: usize,
    trainable: usize,
    head: usize,
}

impl Bench {
    /// The backbone and this rank's centres as the config describes them (the widths of
    /// `options` where given), rank 0's backbone broadcast, and `INPUT_SETS` random batches.
    fn new(
        config: &Config,
        num_classes: usize,
        device: &Device,
        group: Group,
        options: &TrainBenchOptions,
    ) -> Result<(Bench, BackboneAndHead, Counts)> {
        let train_device = device.clone().autodiff();
        let mut backbone = config.backbone();
        if let Some(widths) = options.widths {
            match &mut backbone {
                BackboneConfig::IResNet(c) => c.widths = widths,
                BackboneConfig::MobileFaceNet(_) | BackboneConfig::Vit(_) => {
                    bail!(
                        "--widths sets an iresnet's stage widths; {} is not an iresnet",
                        config.network
                    )
                }
            }
        }
        let head = PartialFc::for_rank(config, num_classes, &group);
        let range = head.classes;
        let model = BackboneAndHead {
            head: config.head(num_classes).init_rows(
                range.start,
                range.len,
                config.seed,
                &train_device,
            ),
            backbone: backbone.init(&train_device),
        };
        group.broadcast_module(&model.backbone)?;
        let counts = Counts {
            parameters: crate::model::summary::count_params(&model).0,
            trainable: crate::model::summary::count_params(&model.backbone).1,
            head: crate::model::summary::count_params(&model.head).0,
        };
        let b = config.batch_size;
        let rank = group.rank();
        let inputs = (0..INPUT_SETS)
            .map(|set| {
                let d = &train_device;
                let images =
                    Tensor::<4>::random([b, 3, 112, 112], Distribution::Uniform(0.0, 255.0), d);
                // Once, as PyTorch's anchor converts its inputs once.
                let images = channels_last(images, config.channels_last);
                let labels: Vec<u32> = (0..b)
                    .map(|i| (spread(set, rank, i) % num_classes as u64) as u32)
                    .collect();
                (images, labels)
            })
            .collect();
        let bench = Bench {
            device: device.clone(),
            group,
            head,
            optimizer: Optimizer::of(config),
            inputs,
            precision: config.precision,
        };
        Ok((bench, model, counts))
    }
}

/// Peak GPU memory over the timed steps: nvidia-smi's sampling and libtorch's allocator.
struct GpuPeaks {
    sampled_mib: Option<f64>,
    allocated_mib: Option<f64>,
    reserved_mib: Option<f64>,
}

/// Training steps on random input tensors as one rank of `group` on `device`: `warmup` untimed
/// steps, `steps` steps back to back for the step time, then `steps` more with a wait after
/// each part for forward, backward, all-reduce and optimizer apart.
// Long because it is the benchmark's script, phase after phase as a reader checks it against
// PyTorch's anchor (warm-up, back-to-back steps, memory peaks, parts, profile).
pub fn train(
    config: &Config,
    num_classes: usize,
    steps: usize,
    spec: &DeviceSpec,
    device: &Device,
    group: Group,
    options: &TrainBenchOptions,
) -> Result<TrainThroughput> {
    crate::device::set_cudnn_benchmark(config.cudnn_benchmark);
    let (mut bench, mut model, counts) = Bench::new(config, num_classes, device, group, options)?;
    let steps = steps.max(1);
    let mut step = 0;
    for _ in 0..options.warmup {
        model = bench.step(model, step, None)?.0;
        step += 1;
    }
    bench.sync()?;

    let cuda: &[usize] = match spec {
        DeviceSpec::Cuda(indices) => indices,
        _ => &[],
    };
    let sampler = (!cuda.is_empty())
        .then(|| GpuMemorySampler::start(cuda))
        .flatten();
    for &index in cuda {
        crate::device::reset_cuda_memory_peaks(index);
    }
    let start = Instant::now();
    let mut loss = f64::NAN;
    for _ in 0..steps {
        (model, loss) = bench.step(model, step, None)?;
        step += 1;
    }
    bench.sync()?;
    let step_ms = start.elapsed().as_secs_f64() * 1e3 / steps as f64;
    let peaks: Vec<(f64, f64)> = cuda
        .iter()
        .filter_map(|&index| crate::device::cuda_memory_peaks_mib(index))
        .collect();
    let largest = |pick: fn(&(f64, f64)) -> f64| {
        (!peaks.is_empty()).then(|| peaks.iter().map(pick).fold(0.0, f64::max))
    };

    // The parts, each waited for.
    let (mut parts, mut optimizer) = (PartTimes::default(), 0.0);
    for _ in 0..steps {
        bench.sync()?;
        model = bench
            .step(model, step, Some((&mut parts, &mut optimizer)))?
            .0;
        step += 1;
    }
    let gpu = GpuPeaks {
        sampled_mib: sampler.and_then(GpuMemorySampler::stop),
        allocated_mib: largest(|p| p.0),
        reserved_mib: largest(|p| p.1),
    };
    let profile = match &options.profile {
        Some(trace) => {
            // The profiled steps' model is not needed after them.
            crate::profile::record(trace, || {
                let mut profiled = model;
                for _ in 0..PROFILED_STEPS {
                    profiled = bench.step(profiled, step, None)?.0;
                    step += 1;
                }
                bench.sync()?;
                Ok(profiled)
            })?;
            Some(trace.clone())
        }
        None => None,
    };
    bench.group.barrier("end of the benchmark")?;
    bench.group.finish();
    let measured = Measured {
        steps,
        step_ms,
        parts,
        optimizer,
        loss,
        gpu,
        profile,
    };
    Ok(throughput(
        config,
        num_classes,
        spec,
        &bench,
        &counts,
        options,
        measured,
    ))
}

/// What the timed steps measured.
struct Measured {
    steps: usize,
    step_ms: f64,
    /// Seconds in each part over the `steps` timed apart.
    parts: PartTimes,
    optimizer: f64,
    loss: f64,
    gpu: GpuPeaks,
    profile: Option<PathBuf>,
}

/// The report: what was measured, with what it was measured on.
fn throughput(
    config: &Config,
    num_classes: usize,
    spec: &DeviceSpec,
    bench: &Bench,
    counts: &Counts,
    options: &TrainBenchOptions,
    m: Measured,
) -> TrainThroughput {
    let world = bench.group.world();
    let b = config.batch_size;
    let ms = |seconds: f64| seconds / m.steps as f64 * 1e3;
    TrainThroughput {
        network: config.network.name().to_string(),
        widths: options.widths,
        parameters: counts.parameters,
        precision: config.precision.to_string(),
        optimizer: config.optimizer.to_string(),
        channels_last: config.channels_last,
        device: match spec {
            DeviceSpec::Cuda(indices) => format!("cuda:{}", indices[0]),
            other => other.to_string(),
        },
        world_size: world,
        backend: bench.group.backend().to_string(),
        batch_size: b,
        num_classes,
        warmup_steps: options.warmup,
        steps: m.steps,
        step_ms: m.step_ms,
        images_per_second: (b * world) as f64 / m.step_ms * 1e3,
        forward_ms: ms(m.parts.forward),
        head_ms: ms(m.parts.head),
        head_collectives_ms: ms(m.parts.head_collectives),
        backward_ms: ms(m.parts.backward),
        all_reduce_ms: ms(m.parts.all_reduce),
        optimizer_ms: ms(m.optimizer),
        sample_rate: config.sample_rate,
        head_bytes_per_rank: 3 * 4 * counts.head as u64,
        all_reduce_bytes_per_rank: crate::distributed::ring_bytes(
            4 * counts.trainable as u64,
            world,
        ),
        head_bytes_sent_per_rank: wire_bytes(world, b, config.embedding_size),
        loss: m.loss,
        peak_host_mib: peak_host_mib(),
        peak_gpu_mib: m.gpu.sampled_mib,
        peak_allocated_mib: m.gpu.allocated_mib,
        peak_reserved_mib: m.gpu.reserved_mib,
        libtorch_fused_kernels: crate::device::libtorch_fused_kernels(),
        profile: m.profile,
    }
}

/// Labels spread over the classes (a multiplicative hash), different per set, rank and row.
fn spread(set: usize, rank: usize, row: usize) -> u64 {
    ((set * 7919 + rank * 104_729 + row) as u64).wrapping_mul(2_654_435_761) >> 7
}

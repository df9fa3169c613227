//! `arcface bench train`: training steps on random tensors, so the loader is not measured.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, anyhow};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use serde::Serialize;

use super::gpu_memory::GpuMemorySampler;
use super::peak_host_mib;
use crate::config::Config;
use crate::device::DeviceSpec;
use crate::dist::Group;
use crate::model::memory_format::channels_last;
use crate::model::{Precision, Trainee, backbone_config, head_config};
use crate::train::sgd::{Sgd, SgdSettings};

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
    pub backward_ms: f64,
    /// The gradients' bucketed all-reduce (0 for a single rank).
    pub all_reduce_ms: f64,
    pub optimizer_ms: f64,
    /// Bytes of the head on each rank: its weight, momentum and gradient (replicated: the
    /// whole head on every rank).
    pub head_bytes_per_rank: u64,
    /// Bytes each rank sends per step in the gradients' ring all-reduce (2(n−1)/n of the
    /// gradient, NCCL's and Gloo's ring), backbone and head.
    pub all_reduce_bytes_per_rank: u64,
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
    sgd: Sgd,
    /// `INPUT_SETS` sets of (images, labels).
    inputs: Vec<(Tensor<4>, Tensor<1, Int>)>,
    precision: Precision,
}

impl Bench {
    /// Waits until the device has finished what was queued.
    fn sync(&self) -> Result<()> {
        self.device
            .sync()
            .map_err(|e| anyhow!("waiting for device {:?}: {e:?}", self.device))
    }

    /// The forward pass of step `step` (not waited for).
    fn loss(&self, model: &Trainee, step: usize) -> Tensor<1> {
        let (images, labels) = self.inputs[step % INPUT_SETS].clone();
        model.loss(images, labels, self.precision)
    }

    fn update(&mut self, model: Trainee, mut grads: GradientsParams) -> Trainee {
        self.sgd.step(model, &mut grads, 0.01, 1.0, "")
    }

    /// One step, queued without waiting (but for the all-reduce's).
    fn step(&mut self, model: Trainee, step: usize) -> Result<(Trainee, Tensor<1>)> {
        let loss = self.loss(&model, step);
        let mut grads = gradients(loss.clone(), &model);
        self.group.average_gradients(&model, &mut grads)?;
        Ok((self.update(model, grads), loss))
    }
}

/// Training steps on random input tensors as one rank of `group` on `device`: `warmup` untimed
/// steps, `steps` steps back to back for the step time, then `steps` more with a wait after
/// each part for forward, backward, all-reduce and optimizer apart.
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
    let train_device = device.clone().autodiff();
    // `Trainee::init`, with the widths of `options` where given.
    let mut backbone = backbone_config(config);
    if let Some(widths) = options.widths {
        backbone.widths = widths;
    }
    let head = head_config(config, num_classes);
    let mut model = Trainee {
        backbone: backbone.init(&train_device),
        head: head.init(&train_device),
    };
    group.broadcast_module(&model)?;
    let (parameters, trainable) = crate::model::summary::count_params(&model);
    let head_parameters = crate::model::summary::count_params(&model.head).0;
    let b = config.batch_size;
    let rank = group.rank();
    let inputs = (0..INPUT_SETS)
        .map(|set| {
            let d = &train_device;
            let images =
                Tensor::<4>::random([b, 3, 112, 112], Distribution::Uniform(0.0, 255.0), d);
            // Once, as PyTorch's anchor converts its inputs once.
            let images = channels_last(images, config.channels_last);
            let labels: Vec<i64> = (0..b)
                .map(|i| (spread(set, rank, i) % num_classes as u64) as i64)
                .collect();
            let labels = Tensor::<1, Int>::from_data(TensorData::new(labels, [b]), d);
            (images, labels)
        })
        .collect();
    let world = group.world();
    let mut bench = Bench {
        device: device.clone(),
        group,
        sgd: Sgd::new(SgdSettings {
            momentum: config.momentum,
            weight_decay: config.weight_decay,
            no_decay_on_norm_and_prelu: false,
        }),
        inputs,
        precision: config.precision,
    };
    let steps = steps.max(1);
    let mut step = 0;
    for _ in 0..options.warmup {
        model = bench.step(model, step)?.0;
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
    let mut last = None;
    for _ in 0..steps {
        let (next, loss) = bench.step(model, step)?;
        (model, last) = (next, Some(loss));
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
    let loss = last.map_or(f64::NAN, |l| l.into_scalar::<f32>() as f64);

    // The parts, each waited for.
    let (mut forward, mut backward, mut all_reduce, mut optimizer) = (0.0, 0.0, 0.0, 0.0);
    for _ in 0..steps {
        let t0 = Instant::now();
        let value = bench.loss(&model, step);
        bench.sync()?;
        let t1 = Instant::now();
        let mut grads = gradients(value, &model);
        bench.sync()?;
        let t2 = Instant::now();
        bench.group.average_gradients(&model, &mut grads)?;
        bench.sync()?;
        let t3 = Instant::now();
        model = bench.update(model, grads);
        bench.sync()?;
        forward += (t1 - t0).as_secs_f64();
        backward += (t2 - t1).as_secs_f64();
        all_reduce += (t3 - t2).as_secs_f64();
        optimizer += t3.elapsed().as_secs_f64();
        step += 1;
    }
    let peak_gpu_mib = sampler.and_then(GpuMemorySampler::stop);

    let profile = match &options.profile {
        Some(trace) => {
            // The profiled steps' model is not needed after them.
            crate::profile::record(trace, || {
                let mut profiled = model;
                for _ in 0..PROFILED_STEPS {
                    profiled = bench.step(profiled, step)?.0;
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

    let ms = |seconds: f64| seconds / steps as f64 * 1e3;
    Ok(TrainThroughput {
        network: config.network.name().to_string(),
        widths: options.widths,
        parameters,
        precision: config.precision.to_string(),
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
        steps,
        step_ms,
        images_per_second: (b * world) as f64 / step_ms * 1e3,
        forward_ms: ms(forward),
        backward_ms: ms(backward),
        all_reduce_ms: ms(all_reduce),
        optimizer_ms: ms(optimizer),
        head_bytes_per_rank: 3 * 4 * head_parameters as u64,
        all_reduce_bytes_per_rank: crate::dist::ring_bytes(4 * trainable as u64, world),
        loss,
        peak_host_mib: peak_host_mib(),
        peak_gpu_mib,
        peak_allocated_mib: largest(|p| p.0),
        peak_reserved_mib: largest(|p| p.1),
        libtorch_fused_kernels: crate::device::libtorch_fused_kernels(),
        profile,
    })
}

/// The backward pass of `loss`: `model`'s gradients (not waited for).
fn gradients(loss: Tensor<1>, model: &Trainee) -> GradientsParams {
    let mut grads = loss.backward();
    GradientsParams::from_module(&mut grads, model)
}

/// Labels spread over the classes (a multiplicative hash), different per set, rank and row.
fn spread(set: usize, rank: usize, row: usize) -> u64 {
    ((set * 7919 + rank * 104_729 + row) as u64).wrapping_mul(2_654_435_761) >> 7
}

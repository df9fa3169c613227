//! `arcface bench head`: the model-parallel head alone (partial FC's forward and backward, then
//! SGD on the centres) at a large class count, on random embeddings, as one rank of a group:
//! the cost the backbone does not see, and the one scripts/bench_partial_fc.py measures of
//! arcface_torch's PartialFC_V2 for the same sizes.

use std::time::Instant;

use anyhow::{Result, anyhow};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Tensor};
use serde::Serialize;

use super::peak_host_mib;
use crate::distributed::Group;
use crate::model::MarginSoftmaxConfig;
use crate::train::partial_fc::{PartialFc, wire_bytes};
use crate::train::sgd::{Sgd, SgdSettings};

/// What the head's benchmark is run with.
#[derive(Debug, Clone)]
pub struct HeadBenchOptions {
    pub classes: usize,
    pub embedding_size: usize,
    /// Rows per rank and step.
    pub batch: usize,
    pub sample_rate: f64,
    pub warmup: usize,
    pub steps: usize,
}

#[derive(Debug, Serialize)]
pub struct HeadThroughput {
    pub classes: usize,
    pub embedding_size: usize,
    pub batch: usize,
    pub sample_rate: f64,
    /// Centres a step uses on this rank (all of them at sample rate 1).
    pub num_sample: usize,
    pub world_size: usize,
    pub backend: String,
    pub steps: usize,
    /// Partial FC's forward and backward (its collectives included), waited for.
    pub head_ms: f64,
    /// The part of it in collectives (0 for one rank).
    pub collectives_ms: f64,
    /// SGD (momentum, weight decay) on this rank's centres, waited for.
    pub optimizer_ms: f64,
    pub step_ms: f64,
    /// This rank's centres, their momentum and gradient.
    pub head_bytes_per_rank: u64,
    /// Bytes each rank sends per step in the head's collectives.
    pub bytes_sent_per_rank: u64,
    pub loss: f64,
    pub peak_host_mib: f64,
}

/// The head's step on `device` as rank of `group`: `warmup` untimed steps, then `steps` timed.
pub fn head(options: &HeadBenchOptions, device: &Device, group: &Group) -> Result<HeadThroughput> {
    let o = options;
    let mut pfc = PartialFc::new(o.classes, group.world(), group.rank(), o.sample_rate, 1);
    let range = pfc.classes;
    let ad = device.clone().autodiff();
    let mut centres = MarginSoftmaxConfig::new(o.classes, o.embedding_size).init_rows(
        range.start,
        range.len,
        1,
        &ad,
    );
    let mut sgd = Sgd::new(SgdSettings {
        momentum: 0.9,
        weight_decay: 5e-4,
        no_decay_on_norm_and_prelu: false,
    });
    device.seed(2 + group.rank() as u64);
    let sets: Vec<(Tensor<2>, Vec<u32>)> = (0..4)
        .map(|set| {
            let e = Tensor::<2>::random(
                [o.batch, o.embedding_size],
                Distribution::Normal(0.0, 1.0),
                device,
            );
            let labels = (0..o.batch)
                .map(|i| {
                    let h = crate::seed::mix(3, &[set, group.rank() as u64, i as u64]);
                    (h % o.classes as u64) as u32
                })
                .collect();
            (e, labels)
        })
        .collect();
    let sync = || {
        device
            .sync()
            .map_err(|e| anyhow!("waiting for {device:?}: {e:?}"))
    };
    let (mut head_s, mut collectives_s, mut optimizer_s, mut loss) = (0.0, 0.0, 0.0, f64::NAN);
    for step in 0..o.warmup + o.steps {
        let (embeddings, labels) = &sets[step % sets.len()];
        sync()?;
        let t0 = Instant::now();
        let timed = group.world() > 1;
        let pass =
            pfc.forward_backward(&centres, embeddings.clone(), labels, group, step, timed)?;
        sync()?;
        let t1 = Instant::now();
        let mut grads = GradientsParams::new();
        grads.register::<2>(centres.weight.id, pass.weight_grad);
        centres = sgd.step(centres, &mut grads, 0.1, 1.0, "head.");
        sync()?;
        if step >= o.warmup {
            head_s += (t1 - t0).as_secs_f64();
            collectives_s += pass.collective_seconds;
            optimizer_s += t1.elapsed().as_secs_f64();
        }
        loss = pass.loss;
    }
    let ms = |s: f64| s / o.steps.max(1) as f64 * 1e3;
    Ok(HeadThroughput {
        classes: o.classes,
        embedding_size: o.embedding_size,
        batch: o.batch,
        sample_rate: o.sample_rate,
        num_sample: if o.sample_rate < 1.0 {
            pfc.num_sample()
        } else {
            range.len
        },
        world_size: group.world(),
        backend: group.backend().to_string(),
        steps: o.steps,
        head_ms: ms(head_s),
        collectives_ms: ms(collectives_s),
        optimizer_ms: ms(optimizer_s),
        step_ms: ms(head_s + optimizer_s),
        head_bytes_per_rank: 3 * 4 * (range.len * o.embedding_size) as u64,
        bytes_sent_per_rank: wire_bytes(group.world(), o.batch, o.embedding_size),
        loss,
        peak_host_mib: peak_host_mib(),
    })
}

//! The process group training runs in: one rank alone (no collectives at all, so world size 1
//! is exactly single-device training), or several processes on libtorch's c10d. What training
//! needs of it, on burn modules and gradients: DDP's start (rank 0's weights and buffers
//! broadcast), its gradient averaging (bucketed all-reduce), and small agreements (the loss,
//! checksums, barriers).

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};

use super::Launch;

/// Gradients are all-reduced in buckets of about this many bytes (PyTorch DDP's
/// `bucket_cap_mb` default: 25 MB): few calls, each large enough for the link's bandwidth.
pub const BUCKET_BYTES: usize = 25 * 1024 * 1024;

#[cfg(feature = "tch")]
type Engine = super::c10d::Engine;
/// Without LibTorch there is no engine: a group is always the single rank.
#[cfg(not(feature = "tch"))]
enum Engine {}

pub struct Group {
    rank: usize,
    world: usize,
    /// None for the single rank of a plain run.
    engine: Option<Engine>,
    /// Where collectives' tensors live (this rank's device, without autodiff).
    #[cfg_attr(not(feature = "tch"), allow(dead_code))]
    device: Device,
    backend: &'static str,
}

impl Group {
    /// A run of one process: every collective is the identity and costs nothing.
    pub fn single(device: &Device) -> Group {
        Group {
            rank: 0,
            world: 1,
            engine: None,
            device: device.clone(),
            backend: "none",
        }
    }

    /// Joins the ranks of `launch` on `device` (NCCL when `cuda`, Gloo otherwise); a
    /// collective that waits longer than `timeout` fails naming the rank that stopped.
    pub fn join(launch: &Launch, device: &Device, cuda: bool, timeout: Duration) -> Result<Group> {
        #[cfg(feature = "tch")]
        {
            let engine = Engine::join(launch, cuda, timeout).map_err(anyhow::Error::msg)?;
            Ok(Group {
                rank: launch.rank,
                world: launch.world,
                engine: Some(engine),
                device: device.clone(),
                backend: if cuda { "NCCL" } else { "Gloo" },
            })
        }
        #[cfg(not(feature = "tch"))]
        {
            let _ = (device, cuda, timeout);
            Err(anyhow!(
                "{launch}: distributed training runs on libtorch's c10d, which this binary was \
                 built without. Rebuild with `--features tch` after `eval \"$(scripts/setup-libtorch.sh)\"` \
                 (README, GPU set-up) and train with device = \"cuda\" or \"libtorch-cpu\""
            ))
        }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    /// Whether this rank validates, logs and writes checkpoints (rank 0).
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// "Gloo", "NCCL", or "none" for a single rank.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    #[cfg_attr(not(feature = "tch"), allow(dead_code))]
    /// The error of a failed collective: what it was, which rank stopped (from the heartbeats),
    /// c10d's own message.
    fn failed(&self, what: &str, message: String) -> anyhow::Error {
        #[cfg(feature = "tch")]
        if let Some(engine) = &self.engine {
            let diagnosis = engine.diagnose();
            engine.linger_for_diagnoses();
            return anyhow!("{what} failed: {diagnosis}. c10d said: {message}");
        }
        anyhow!("{what}: {message}")
    }

    /// Returns once every rank has reached it (`what` names the place in errors): an
    /// all-reduce of one number on this rank's device, so that NCCL need not guess a device
    /// per rank as its own barrier does.
    pub fn barrier(&self, what: &str) -> Result<()> {
        self.mean(&[0.0], &format!("barrier ({what})")).map(drop)
    }

    /// The mean over the ranks of each of `values`.
    pub fn mean(&self, values: &[f64], what: &str) -> Result<Vec<f64>> {
        let Some(engine) = &self.engine else {
            return Ok(values.to_vec());
        };
        #[cfg(feature = "tch")]
        {
            let data = burn::tensor::TensorData::new(values.to_vec(), [values.len()]);
            let tensor = Tensor::<1>::from_data(data, &self.device);
            let sum = engine
                .all_reduce_sum(tensor)
                .map_err(|e| self.failed(what, e))?;
            let sum: Vec<f64> = sum.into_data().convert::<f64>().try_to_vec().expect("f64");
            Ok(sum.iter().map(|s| s / self.world as f64).collect())
        }
        #[cfg(not(feature = "tch"))]
        {
            let _ = what;
            match *engine {}
        }
    }

    /// Every rank's `value`, by rank.
    pub fn all_gather(&self, value: i64, what: &str) -> Result<Vec<i64>> {
        let Some(engine) = &self.engine else {
            return Ok(vec![value]);
        };
        #[cfg(feature = "tch")]
        {
            engine
                .all_gather_i64(value, &self.device)
                .map_err(|e| self.failed(what, e))
        }
        #[cfg(not(feature = "tch"))]
        {
            let _ = what;
            match *engine {}
        }
    }

    /// Checks that every rank holds the same `value` (a hash of something that must agree);
    /// the error names the ranks that differ from rank 0.
    pub fn agree(&self, value: u32, what: &str) -> Result<()> {
        let all = self.all_gather(value as i64, &format!("comparing {what}"))?;
        let odd: Vec<String> = (0..all.len())
            .filter(|&r| all[r] != all[0])
            .map(|r| format!("rank {r} has {:08x}", all[r]))
            .collect();
        anyhow::ensure!(
            odd.is_empty(),
            "{what} differ between the ranks: rank 0 has {:08x}, {}",
            all[0],
            odd.join(", ")
        );
        Ok(())
    }

    /// DDP's start: every float tensor of `module` (parameters and BatchNorm statistics)
    /// overwritten in place with rank 0's, one broadcast each.
    pub fn broadcast_module<M: Module>(&self, module: &M) -> Result<()> {
        let Some(engine) = &self.engine else {
            return Ok(());
        };
        #[cfg(feature = "tch")]
        {
            struct Broadcast<'a> {
                engine: &'a Engine,
                path: Vec<String>,
                error: Option<(String, String)>,
            }
            impl ModuleVisitor for Broadcast<'_> {
                crate::module_path::track_module_path!();
                fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                    if self.error.is_some() {
                        return;
                    }
                    if let Err(e) = self.engine.broadcast_in_place(param.val().inner()) {
                        self.error = Some((self.path.join("."), e));
                    }
                }
            }
            let mut visitor = Broadcast {
                engine,
                path: Vec::new(),
                error: None,
            };
            module.visit(&mut visitor);
            match visitor.error {
                None => Ok(()),
                Some((path, e)) => Err(self.failed(&format!("broadcast of `{path}`"), e)),
            }
        }
        #[cfg(not(feature = "tch"))]
        {
            let _ = module;
            match *engine {}
        }
    }

    /// DDP's gradient averaging: `grads` of `module`'s parameters replaced by their mean over
    /// the ranks, all-reduced in buckets of [`BUCKET_BYTES`] in the module's parameter order
    /// (the same on every rank).
    pub fn average_gradients<M: Module>(
        &self,
        module: &M,
        grads: &mut GradientsParams,
    ) -> Result<()> {
        if self.engine.is_none() {
            return Ok(());
        }
        let mut take = TakeGradients {
            grads,
            flat: Vec::new(),
        };
        module.visit(&mut take);
        let flat = std::mem::take(&mut take.flat);
        let mut reduced = Vec::with_capacity(flat.len());
        for bucket in buckets(&flat.iter().map(|(_, n, _)| *n).collect::<Vec<_>>()) {
            let parts: Vec<Tensor<1>> = flat[bucket.clone()]
                .iter()
                .map(|(_, _, t)| t.clone())
                .collect();
            let joined = Tensor::cat(parts, 0);
            let sum = self.all_reduce_sum(joined, "all-reduce of the gradients")?;
            let mean = sum / self.world as f64;
            let mut offset = 0;
            for (id, numel, _) in &flat[bucket] {
                reduced.push((*id, mean.clone().narrow(0, offset, *numel)));
                offset += numel;
            }
        }
        drop(flat);
        module.visit(&mut PutGradients {
            grads,
            reduced: reduced.into(),
        });
        Ok(())
    }

    /// The element-wise sum over the ranks of a flat tensor (this rank's device).
    pub fn all_reduce_sum(&self, tensor: Tensor<1>, what: &str) -> Result<Tensor<1>> {
        let Some(engine) = &self.engine else {
            return Ok(tensor);
        };
        #[cfg(feature = "tch")]
        {
            engine
                .all_reduce_sum(tensor)
                .map_err(|e| self.failed(what, e))
        }
        #[cfg(not(feature = "tch"))]
        {
            let _ = (tensor, what);
            match *engine {}
        }
    }

    /// Seconds one all-reduce of `bytes` (f32) takes, the mean of `iterations` after one
    /// untimed, with the device waited for (NCCL's work runs on its own stream).
    pub fn time_all_reduce(&self, bytes: usize, iterations: usize) -> Result<f64> {
        let tensor = Tensor::<1>::zeros([bytes.div_ceil(4).max(1)], &self.device);
        let sync = || {
            self.device
                .sync()
                .map_err(|e| anyhow!("waiting for {:?}: {e:?}", self.device))
        };
        let run = |n: usize| -> Result<f64> {
            sync()?;
            let start = Instant::now();
            for _ in 0..n {
                self.all_reduce_sum(tensor.clone(), "timing an all-reduce")?;
            }
            sync()?;
            Ok(start.elapsed().as_secs_f64() / n.max(1) as f64)
        };
        run(1)?;
        run(iterations.max(1))
    }

    /// Ends the heartbeat before a clean exit, so no rank mistakes this one's for a stop.
    pub fn finish(&mut self) {
        #[cfg(feature = "tch")]
        if let Some(engine) = &mut self.engine {
            engine.stop_heartbeat();
        }
    }
}

/// Consecutive ranges of parameters (by element count) of at most [`BUCKET_BYTES`] of f32
/// each; a parameter larger than that is a bucket of its own.
pub fn buckets(numels: &[usize]) -> Vec<std::ops::Range<usize>> {
    let cap = BUCKET_BYTES / 4;
    let mut out = Vec::new();
    let (mut start, mut filled) = (0, 0);
    for (i, &n) in numels.iter().enumerate() {
        if filled > 0 && filled + n > cap {
            out.push(start..i);
            (start, filled) = (i, 0);
        }
        filled += n;
    }
    if start < numels.len() {
        out.push(start..numels.len());
    }
    out
}

/// Takes every parameter's gradient out of `grads`, flattened, in visit order.
struct TakeGradients<'a> {
    grads: &'a mut GradientsParams,
    flat: Vec<(ParamId, usize, Tensor<1>)>,
}

impl ModuleVisitor for TakeGradients<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            let numel = g.shape().num_elements();
            self.flat.push((param.id, numel, g.reshape([numel])));
        }
    }
}

/// Puts the reduced gradients back, in the order [`TakeGradients`] took them (parameters
/// without a gradient, a fixed γ, were not taken and get none).
struct PutGradients<'a> {
    grads: &'a mut GradientsParams,
    reduced: std::collections::VecDeque<(ParamId, Tensor<1>)>,
}

impl ModuleVisitor for PutGradients<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.reduced.front().is_some_and(|(id, _)| *id == param.id) {
            let (id, flat) = self.reduced.pop_front().expect("checked");
            self.grads.register::<D>(id, flat.reshape(param.shape()));
        }
    }
}

/// A checksum of every float tensor of `module` (parameters and buffers), by value: equal on
/// two ranks exactly when their copies are bit-identical (up to CRC collisions).
pub fn checksum<M: Module>(module: &M) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for data in crate::train::checkpoint::named_tensors(module, "").into_values() {
        hasher.update(&data.into_bytes());
    }
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_parameter_in_order_within_the_cap() {
        let cap = BUCKET_BYTES / 4;
        let numels = [10, cap - 20, 30, cap + 5, 1, 2, cap / 2, cap / 2, 3];
        let got = buckets(&numels);
        assert_eq!(got, vec![0..2, 2..3, 3..4, 4..7, 7..9]);
        for b in &got {
            let total: usize = numels[b.clone()].iter().sum();
            assert!(total <= cap || b.len() == 1, "{b:?}: {total}");
        }
        assert!(buckets(&[]).is_empty());
    }
}

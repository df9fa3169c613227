//! DDP's pieces on burn modules: the start (rank 0's weights and buffers broadcast, as
//! `DistributedDataParallel`'s constructor) and gradient averaging by a bucketed all-reduce in
//! parameter order; a checksum to prove ranks hold the same weights.

use anyhow::Result;
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use super::group::{Engine, Group};

/// Gradients are all-reduced in buckets of about this many bytes (PyTorch DDP's
/// `bucket_cap_mb` default: 25 MB): few calls, each large enough for the link's bandwidth.
pub const BUCKET_BYTES: usize = 25 * 1024 * 1024;

impl Group {
    /// DDP's start: every float tensor of `module` (parameters and BatchNorm statistics)
    /// overwritten in place with rank 0's, one broadcast each.
    pub fn broadcast_module<M: Module>(&self, module: &M) -> Result<()> {
        let Some(engine) = &self.engine else {
            return Ok(());
        };
        struct Broadcast<'a> {
            engine: &'a Engine,
            path: Vec<String>,
            error: Option<(String, anyhow::Error)>,
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
            let mean = sum / self.world() as f64;
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
    for data in crate::checkpoint::named_tensors(module, "").into_values() {
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

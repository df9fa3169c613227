//! Data parallelism across the devices of one process, as PyTorch DDP without SyncBN: one copy
//! of the model per device, each on its own slice of the global batch, in a thread of its own;
//! their gradients are averaged onto the first device, where one optimizer step updates the
//! master copy, whose weights and BatchNorm running statistics every other copy takes before
//! its next forward (DDP's `broadcast_buffers`). BatchNorm batch statistics stay per replica.
//!
//! Copies are matched by parameter path ("backbone.layer1.0.conv1.weight"), not by burn's
//! parameter ids, so a replica is simply the same module initialised on its own device: it then
//! owns its running-statistics buffers (burn's `RunningState` clones share them and would average
//! the replicas' updates in thread-timing order, which is not reproducible).

use std::collections::BTreeMap;

use anyhow::{Result, anyhow};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};

/// The replicas beyond the master, and the devices of all (autodiff devices; `[0]` is the
/// master's).
pub struct Replicas<M> {
    devices: Vec<Device>,
    others: Vec<M>,
    /// Threads for the replicas beyond the master, kept for the whole run.
    pool: Option<rayon::ThreadPool>,
}

/// Every float tensor of a module (parameters and running statistics), flattened and detached,
/// by path.
fn flat_by_path<M: Module>(module: &M) -> BTreeMap<String, Tensor<1>> {
    struct Collect {
        path: Vec<String>,
        out: BTreeMap<String, Tensor<1>>,
    }
    impl ModuleVisitor for Collect {
        crate::module_path::track_module_path!();
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let flat = param.val().detach().flatten::<1>(0, D - 1);
            self.out.insert(self.path.join("."), flat);
        }
    }
    let mut c = Collect {
        path: Vec::new(),
        out: BTreeMap::new(),
    };
    module.visit(&mut c);
    c.out
}

/// `module` with every float tensor replaced by the one of `source` at the same path, moved to
/// `device` (gradient tracking as before).
fn take_values<M: Module>(module: M, source: &BTreeMap<String, Tensor<1>>, device: &Device) -> M {
    struct Take<'a> {
        path: Vec<String>,
        source: &'a BTreeMap<String, Tensor<1>>,
        device: &'a Device,
    }
    impl ModuleMapper for Take<'_> {
        crate::module_path::track_module_path!();
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, tensor, mapper) = param.consume();
            let path = self.path.join(".");
            let value = self
                .source
                .get(&path)
                .unwrap_or_else(|| panic!("replicas of one module differ at `{path}`"));
            // A leaf of the replica's graph: detached after the reshape.
            let mut copy = value
                .clone()
                .reshape(tensor.shape())
                .to_device(self.device)
                .detach();
            if tensor.is_require_grad() {
                copy = copy.require_grad();
            }
            Param::from_mapped_value(id, copy, mapper)
        }
    }
    module.map(&mut Take {
        path: Vec::new(),
        source,
        device,
    })
}

/// The gradients in `grads` of `module`'s parameters by path, flattened, on `device`.
fn grads_by_path<M: Module>(
    module: &M,
    grads: &GradientsParams,
    device: &Device,
) -> BTreeMap<String, Tensor<1>> {
    struct Collect<'a> {
        grads: &'a GradientsParams,
        device: &'a Device,
        path: Vec<String>,
        out: BTreeMap<String, Tensor<1>>,
    }
    impl ModuleVisitor for Collect<'_> {
        crate::module_path::track_module_path!();
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                let flat = g.flatten::<1>(0, D - 1).to_device(self.device);
                self.out.insert(self.path.join("."), flat);
            }
        }
    }
    let mut c = Collect {
        grads,
        device,
        path: Vec::new(),
        out: BTreeMap::new(),
    };
    module.visit(&mut c);
    c.out
}

/// Adds the other replicas' gradients to the master's, then divides by the replica count.
struct Average<'a> {
    grads: &'a mut GradientsParams,
    others: Vec<BTreeMap<String, Tensor<1>>>,
    path: Vec<String>,
}

impl ModuleVisitor for Average<'_> {
    crate::module_path::track_module_path!();
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(mut sum) = self.grads.remove::<D>(param.id) else {
            return;
        };
        let path = self.path.join(".");
        for other in &mut self.others {
            if let Some(g) = other.remove(&path) {
                sum = sum + g.reshape(param.shape());
            }
        }
        let n = (self.others.len() + 1) as f64;
        self.grads.register(param.id, sum / n);
    }
}

impl<M: Module + Sync> Replicas<M> {
    /// `make(device)` builds the model on a device; it is called for every device but the first
    /// (the master's, which the caller holds).
    pub fn new(devices: &[Device], make: impl Fn(&Device) -> M) -> Replicas<M> {
        let pool = (devices.len() > 1).then(|| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(devices.len() - 1)
                .thread_name(|i| format!("replica-{}", i + 1))
                .build()
                .expect("starting the replica threads")
        });
        Replicas {
            devices: devices.to_vec(),
            others: devices[1..].iter().map(make).collect(),
            pool,
        }
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Forward and backward of `loss` on every replica with its shard (`shards[r]` for replica
    /// r), in parallel. Returns the mean loss and the replicas' mean gradients, keyed for
    /// `master` on the first device. The shards must be of equal size for the mean to be the
    /// loss of the whole batch.
    pub fn forward_backward<S, F>(
        &mut self,
        master: &M,
        shards: Vec<S>,
        loss: F,
    ) -> Result<(f64, GradientsParams)>
    where
        S: Send,
        F: Fn(&M, S) -> Tensor<1> + Sync,
    {
        assert_eq!(shards.len(), self.len(), "one shard per replica");
        let run = |model: &M, shard: S| {
            let value = loss(model, shard);
            let scalar = value.clone().into_scalar::<f32>() as f64;
            let mut grads = value.backward();
            (scalar, GradientsParams::from_module(&mut grads, model))
        };
        if self.others.is_empty() {
            let shard = shards.into_iter().next().expect("one shard");
            return Ok(run(master, shard));
        }
        // Every replica starts the step from the master's weights and buffers (its running
        // statistics are written by the forward itself: model::batch_norm).
        let values = flat_by_path(master);
        let others = std::mem::take(&mut self.others);
        self.others = others
            .into_iter()
            .zip(&self.devices[1..])
            .map(|(m, d)| take_values(m, &values, d))
            .collect();
        drop(values);

        // Replica 0 (the master) runs on this thread, the others on the pool's.
        let mut shards = shards.into_iter();
        let first = shards.next().expect("one shard per replica");
        let pool = self
            .pool
            .as_ref()
            .expect("a pool when there are other replicas");
        let others = &self.others;
        let slots: Vec<std::sync::Mutex<Option<std::thread::Result<_>>>> =
            others.iter().map(|_| std::sync::Mutex::new(None)).collect();
        let first_result = pool.in_place_scope(|scope| {
            for ((shard, model), slot) in shards.zip(others).zip(&slots) {
                let run = &run;
                scope.spawn(move |_| {
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run(model, shard)
                    }));
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
                });
            }
            run(master, first)
        });
        let rest = slots.into_iter().map(|slot| {
            slot.into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .expect("every replica ran")
        });
        let results = std::iter::once(Ok(first_result)).chain(rest);
        let mut losses = Vec::with_capacity(self.len());
        let mut master_grads = None;
        let mut other_grads = Vec::new();
        for (r, result) in results.into_iter().enumerate() {
            let (value, grads) = result.map_err(|panic| {
                let text = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                anyhow!("replica {r} on {:?} failed: {text}", self.devices[r])
            })?;
            losses.push(value);
            if r == 0 {
                master_grads = Some(grads);
            } else {
                other_grads.push(grads_by_path(&self.others[r - 1], &grads, &self.devices[0]));
            }
        }
        let mut grads = master_grads.expect("replica 0 ran");
        master.visit(&mut Average {
            grads: &mut grads,
            others: other_grads,
            path: Vec::new(),
        });
        let mean = losses.iter().sum::<f64>() / losses.len() as f64;
        Ok((mean, grads))
    }
}

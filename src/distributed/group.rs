//! The process group training runs in: one rank alone (no collectives at all, so world size 1
//! is exactly single-device training), or several processes on libtorch's c10d. Here: the
//! collectives on tensors and small agreements (the loss, checksums, barriers); DDP's start and
//! gradient averaging on burn modules are in `ddp.rs`.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use burn::tensor::{Device, Tensor, TensorData};

use super::Launch;

#[cfg(feature = "tch")]
pub(super) type Engine = super::c10d::Engine;

/// Without LibTorch there is no engine: a group is always the single rank, and these methods
/// are never reached (there is no value of this type).
#[cfg(not(feature = "tch"))]
pub(super) enum Engine {}

#[cfg(not(feature = "tch"))]
#[allow(clippy::unused_self)]
impl Engine {
    pub fn all_reduce_sum<const D: usize>(&self, _: Tensor<D>) -> anyhow::Result<Tensor<D>> {
        match *self {}
    }
    pub fn all_reduce_max<const D: usize>(&self, _: Tensor<D>) -> anyhow::Result<Tensor<D>> {
        match *self {}
    }
    pub fn all_gather_rows(&self, _: Tensor<2>) -> anyhow::Result<Tensor<2>> {
        match *self {}
    }
    pub fn all_gather_i64(&self, _: &[i64], _: &Device) -> anyhow::Result<Vec<i64>> {
        match *self {}
    }
    pub fn broadcast_in_place<const D: usize>(&self, _: Tensor<D>) -> anyhow::Result<()> {
        match *self {}
    }
    pub fn send<const D: usize>(&self, _: Tensor<D>, _: usize) -> anyhow::Result<()> {
        match *self {}
    }
    pub fn recv<const D: usize>(
        &self,
        _: [usize; D],
        _: usize,
        _: &Device,
    ) -> anyhow::Result<Tensor<D>> {
        match *self {}
    }
}

pub struct Group {
    rank: usize,
    world: usize,
    /// None for the single rank of a plain run.
    pub(super) engine: Option<Engine>,
    /// Where collectives' tensors live (this rank's device, without autodiff).
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
                 (docs/USAGE.md, GPU set-up) and train with device = \"cuda\" or \"libtorch-cpu\""
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

    /// The error of a failed collective: what it was, which rank stopped (from the heartbeats),
    /// c10d's own message.
    pub(super) fn failed(&self, what: &str, message: anyhow::Error) -> anyhow::Error {
        #[cfg(feature = "tch")]
        if let Some(engine) = &self.engine {
            let diagnosis = engine.diagnose();
            engine.linger_for_diagnoses();
            return anyhow!("{what} failed: {diagnosis}. c10d said: {message:#}");
        }
        anyhow!("{what}: {message:#}")
    }

    /// `collective` of `value` on the engine; on a single rank, `value` itself (every
    /// collective of one rank is the identity).
    fn run<V>(
        &self,
        what: &str,
        value: V,
        collective: impl FnOnce(&Engine, V) -> anyhow::Result<V>,
    ) -> Result<V> {
        match &self.engine {
            None => Ok(value),
            Some(engine) => collective(engine, value).map_err(|e| self.failed(what, e)),
        }
    }

    /// Returns once every rank has reached it (`what` names the place in errors): an
    /// all-reduce of one number on this rank's device, so that NCCL need not guess a device
    /// per rank as its own barrier does.
    pub fn barrier(&self, what: &str) -> Result<()> {
        self.mean(&[0.0], &format!("barrier ({what})")).map(drop)
    }

    /// The mean over the ranks of each of `values`.
    pub fn mean(&self, values: &[f64], what: &str) -> Result<Vec<f64>> {
        let sums = self.sum(values, what)?;
        Ok(sums.iter().map(|s| s / self.world as f64).collect())
    }

    /// The sum over the ranks of each of `values`.
    pub fn sum(&self, values: &[f64], what: &str) -> Result<Vec<f64>> {
        if self.engine.is_none() {
            return Ok(values.to_vec());
        }
        let data = burn::tensor::TensorData::new(values.to_vec(), [values.len()]);
        let tensor = Tensor::<1>::from_data(data, &self.device);
        let sum = self.all_reduce_sum(tensor, what)?;
        Ok(sum.into_data().convert::<f64>().try_to_vec().expect("f64"))
    }

    /// Every rank's `value`, by rank.
    pub fn all_gather(&self, value: i64, what: &str) -> Result<Vec<i64>> {
        self.all_gather_i64(&[value], what)
    }

    /// Every rank's `values` (as many on every rank), concatenated in rank order.
    pub fn all_gather_i64(&self, values: &[i64], what: &str) -> Result<Vec<i64>> {
        self.run(what, values.to_vec(), |e, v| {
            e.all_gather_i64(&v, &self.device)
        })
    }

    /// Every rank's rows ([n, d] on each, this rank's device) stacked in rank order:
    /// [world · n, d].
    pub fn all_gather_rows(&self, tensor: Tensor<2>, what: &str) -> Result<Tensor<2>> {
        self.run(what, tensor, |e, t| e.all_gather_rows(t))
    }

    /// Rank 0's `values` on every rank (the others' are ignored; as many on every rank).
    pub fn broadcast_i64(&self, values: &[i64], what: &str) -> Result<Vec<i64>> {
        let mut all = self.all_gather_i64(values, what)?;
        all.truncate(values.len());
        Ok(all)
    }

    /// Rank 0's list (of any length) on every rank; the others pass anything.
    pub fn broadcast_list(&self, values: &[i64], what: &str) -> Result<Vec<i64>> {
        let len = self.broadcast_i64(&[values.len() as i64], what)?[0] as usize;
        let mut padded = values.to_vec();
        padded.resize(len, 0);
        self.broadcast_i64(&padded, what)
    }

    /// Every rank's list (of any length), by rank: for the rare, short lists of bad records.
    pub fn all_gather_lists(&self, values: &[i64], what: &str) -> Result<Vec<Vec<i64>>> {
        let lens = self.all_gather(values.len() as i64, what)?;
        let longest = lens.iter().copied().max().unwrap_or(0) as usize;
        let mut padded = values.to_vec();
        padded.resize(longest, 0);
        let all = self.all_gather_i64(&padded, what)?;
        Ok(lens
            .iter()
            .enumerate()
            .map(|(rank, &n)| all[rank * longest..rank * longest + n as usize].to_vec())
            .collect())
    }

    /// Rank 0's outcome of what it alone does (`mine`: Some there, None on the others), known
    /// to every rank: rank 0 gets its result back; the others Ok(None) where it succeeded, else
    /// the error `failed` makes (rank 0 says why). On one rank, `mine` itself.
    pub fn outcome_of_main<T>(
        &self,
        mine: Option<Result<T>>,
        what: &str,
        failed: impl FnOnce() -> anyhow::Error,
    ) -> Result<Option<T>> {
        let ok = mine.as_ref().is_none_or(Result::is_ok);
        let ok = self.broadcast_i64(&[i64::from(ok)], what)?[0] == 1;
        match mine {
            Some(result) => result.map(Some),
            None if ok => Ok(None),
            None => Err(failed()),
        }
    }

    /// Rank 0's host data (`Some` there; the others pass None) on every rank as `shape`, f32.
    pub fn broadcast_data(
        &self,
        data: Option<TensorData>,
        shape: &[usize],
        what: &str,
    ) -> Result<TensorData> {
        let Some(engine) = &self.engine else {
            return data.ok_or_else(|| anyhow!("{what}: nothing to broadcast"));
        };
        let flat = [shape.iter().product()];
        let tensor = match data {
            Some(d) => Tensor::<1>::from_data(reshaped(d.convert::<f32>(), &flat), &self.device),
            None => Tensor::<1>::zeros(flat, &self.device),
        };
        engine
            .broadcast_in_place(tensor.clone())
            .map_err(|e| self.failed(what, e))?;
        Ok(reshaped(tensor.into_data().convert::<f32>(), shape))
    }

    /// Host data to rank `peer`, which takes it with [`Group::recv_data`].
    pub fn send_data(&self, data: TensorData, peer: usize, what: &str) -> Result<()> {
        let numel = data.shape().iter().product::<usize>();
        let tensor =
            Tensor::<1>::from_data(reshaped(data.convert::<f32>(), &[numel]), &self.device);
        self.run(what, (), |e, ()| e.send(tensor, peer))
    }

    /// What rank `peer` sends with [`Group::send_data`], as `shape` (f32).
    pub fn recv_data(&self, shape: &[usize], peer: usize, what: &str) -> Result<TensorData> {
        let Some(engine) = &self.engine else {
            return Err(anyhow!("{what}: a single rank receives from no one"));
        };
        let numel = shape.iter().product::<usize>();
        let tensor = engine
            .recv([numel], peer, &self.device)
            .map_err(|e| self.failed(what, e))?;
        Ok(reshaped(tensor.into_data().convert::<f32>(), shape))
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

    /// The element-wise sum over the ranks (this rank's device).
    pub fn all_reduce_sum<const D: usize>(
        &self,
        tensor: Tensor<D>,
        what: &str,
    ) -> Result<Tensor<D>> {
        self.run(what, tensor, |e, t| e.all_reduce_sum(t))
    }

    /// The element-wise maximum over the ranks (this rank's device).
    pub fn all_reduce_max<const D: usize>(
        &self,
        tensor: Tensor<D>,
        what: &str,
    ) -> Result<Tensor<D>> {
        self.run(what, tensor, |e, t| e.all_reduce_max(t))
    }

    /// Seconds one all-reduce of `bytes` (f32) takes, the mean of `iterations` after one
    /// untimed, with the device waited for (NCCL's work runs on its own stream).
    pub fn time_all_reduce(&self, bytes: usize, iterations: usize) -> Result<f64> {
        let tensor = Tensor::<1>::zeros([bytes.div_ceil(4).max(1)], &self.device);
        let run = |n: usize| -> Result<f64> {
            self.sync()?;
            let start = Instant::now();
            for _ in 0..n {
                self.all_reduce_sum(tensor.clone(), "timing an all-reduce")?;
            }
            self.sync()?;
            Ok(start.elapsed().as_secs_f64() / n.max(1) as f64)
        };
        run(1)?;
        run(iterations.max(1))
    }

    /// Waits for this rank's device (collectives on NCCL run on their own stream).
    pub fn sync(&self) -> Result<()> {
        self.device
            .sync()
            .map_err(|e| anyhow!("waiting for {:?}: {e:?}", self.device))
    }

    /// Ends the heartbeat before a clean exit, so no rank mistakes this one's for a stop.
    pub fn finish(&mut self) {
        #[cfg(feature = "tch")]
        if let Some(engine) = &mut self.engine {
            engine.stop_heartbeat();
        }
    }
}

/// The same values under another shape of as many elements.
fn reshaped(data: TensorData, shape: &[usize]) -> TensorData {
    let (bytes, _, dtype) = data.into_parts();
    TensorData::from_bytes(bytes, shape.to_vec(), dtype)
}

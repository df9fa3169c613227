//! The engine under a [`super::Group`] of several processes: libtorch's c10d through burn-tch's
//! shim (vendor/burn-tch/src/distributed/): the TCPStore rendezvous rank 0 serves, the process group
//! (Gloo on the CPU, NCCL on CUDA), and a heartbeat per rank in the store, so that a rank that
//! died or hangs can be named when a collective fails (c10d's own errors name a peer's
//! address at best, and Gloo's "Connection closed by peer" not even which rank it was).
#![allow(deprecated)] // burn-tch is deprecated upstream; see device.rs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use burn::backend::LibTorch;
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_tch::distributed::{Backend, ProcessGroup, ReduceOp, Store};

use super::Launch;

/// How often each rank bumps its heartbeat counter, and how long a diagnosis watches them.
const BEAT: Duration = Duration::from_millis(500);
const WATCH: Duration = Duration::from_secs(3);

pub struct Engine {
    group: ProcessGroup,
    launch: Launch,
    heartbeat: Heartbeat,
}

fn heartbeat_key(rank: usize) -> String {
    format!("arcface/heartbeat/{rank}")
}

/// A thread that increments `arcface/heartbeat/<rank>` in the store every [`BEAT`], over a
/// store connection of its own (the process group's stays the group's).
struct Heartbeat {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    fn start(store: Store, rank: usize) -> Heartbeat {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || {
                let key = heartbeat_key(rank);
                let mut count = 0u64;
                while !flag.load(Ordering::Relaxed) {
                    count += 1;
                    // A store that is gone (rank 0 died) ends the beats; the next collective
                    // fails and its diagnosis says so.
                    if store.set(&key, count.to_string().as_bytes()).is_err() {
                        return;
                    }
                    std::thread::sleep(BEAT);
                }
            })
            .expect("starting the heartbeat thread");
        Heartbeat {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Whether this rank serves the rendezvous store, and the prefix of its keys. torchrun's agent
/// (static rendezvous) already serves a store at MASTER_ADDR:MASTER_PORT and says so with
/// TORCHELASTIC_USE_AGENT_STORE=True: then every rank is a client, its keys under
/// "/worker/attempt_<restart>" as torch.distributed puts them. Else rank 0 serves it.
fn store_role(rank: usize) -> (bool, String) {
    let agent = std::env::var("TORCHELASTIC_USE_AGENT_STORE").is_ok_and(|v| v == "True");
    match agent {
        true => {
            let attempt = std::env::var("TORCHELASTIC_RESTART_COUNT").unwrap_or("0".into());
            (false, format!("/worker/attempt_{attempt}"))
        }
        false => (rank == 0, String::new()),
    }
}

impl Engine {
    /// Meets the other ranks at MASTER_ADDR:MASTER_PORT (rank 0 serves the store there) and
    /// forms the process group: NCCL for CUDA, Gloo for LibTorch's CPU.
    pub fn join(launch: &Launch, cuda: bool, timeout: Duration) -> anyhow::Result<Engine> {
        let backend = match cuda {
            true => Backend::Nccl,
            false => Backend::Gloo,
        };
        let l = launch;
        let ms = timeout.as_millis() as u64;
        let (serve, prefix) = store_role(l.rank);
        let store = Store::connect(&l.master_addr, l.master_port, serve, l.world, ms, &prefix)
            .map_err(|e| {
                if l.rank == 0 {
                    anyhow::anyhow!(
                        "rank 0 could not serve the rendezvous at {}:{}: {e}. Is the port in use \
                         (another run, a stale process)? Pick another MASTER_PORT \
                         (torchrun --master_port)",
                        l.master_addr,
                        l.master_port
                    )
                } else {
                    anyhow::anyhow!(
                        "rank {} could not reach rank 0's rendezvous at {}:{} within {} s: {e}. \
                         Check MASTER_ADDR, MASTER_PORT and that rank 0 started",
                        l.rank,
                        l.master_addr,
                        l.master_port,
                        timeout.as_secs()
                    )
                }
            })?;
        let interface = std::env::var("GLOO_SOCKET_IFNAME").ok();
        let group =
            ProcessGroup::new(&store, backend, l.rank, l.world, ms, interface.as_deref())
                .map_err(|e| anyhow::anyhow!("rank {}: forming the process group: {e}", l.rank))?;
        let beats = Store::connect(&l.master_addr, l.master_port, false, l.world, ms, &prefix)
            .map_err(|e| anyhow::anyhow!("rank {}: second store connection: {e}", l.rank))?;
        Ok(Engine {
            group,
            launch: launch.clone(),
            heartbeat: Heartbeat::start(beats, l.rank),
        })
    }

    /// The element-wise sum over the ranks of `tensor`, written into it (or into a contiguous
    /// copy: c10d's collectives take contiguous tensors only); pass one nothing else reads.
    pub fn all_reduce_sum<const D: usize>(&self, tensor: Tensor<D>) -> anyhow::Result<Tensor<D>> {
        self.all_reduce(tensor, ReduceOp::Sum)
    }

    /// The element-wise maximum over the ranks, as [`Engine::all_reduce_sum`].
    pub fn all_reduce_max<const D: usize>(&self, tensor: Tensor<D>) -> anyhow::Result<Tensor<D>> {
        self.all_reduce(tensor, ReduceOp::Max)
    }

    fn all_reduce<const D: usize>(
        &self,
        tensor: Tensor<D>,
        op: ReduceOp,
    ) -> anyhow::Result<Tensor<D>> {
        let mut primitive = tensor
            .try_into_primitive::<LibTorch>()
            .map_err(|e| anyhow::anyhow!("all-reduce of a tensor off LibTorch: {e:?}"))?;
        if !primitive.tensor.is_contiguous() {
            primitive = burn_tch::TchTensor::new(primitive.tensor.contiguous());
        }
        self.group
            .all_reduce(&primitive, op)
            .map_err(anyhow::Error::msg)?;
        Ok(Tensor::from_primitive::<LibTorch>(primitive))
    }

    /// Rank 0's values of `tensor` written into every rank's, in place (its storage).
    pub fn broadcast_in_place<const D: usize>(&self, tensor: Tensor<D>) -> anyhow::Result<()> {
        let primitive = tensor
            .try_into_primitive::<LibTorch>()
            .map_err(|e| anyhow::anyhow!("broadcast of a tensor off LibTorch: {e:?}"))?;
        if !primitive.tensor.is_contiguous() {
            anyhow::bail!("broadcast of a non-contiguous tensor");
        }
        self.group
            .broadcast(&primitive, 0)
            .map_err(anyhow::Error::msg)
    }

    /// `tensor` to rank `peer` ([`Engine::recv`] there).
    pub fn send<const D: usize>(&self, tensor: Tensor<D>, peer: usize) -> anyhow::Result<()> {
        let mut primitive = tensor
            .try_into_primitive::<LibTorch>()
            .map_err(|e| anyhow::anyhow!("send of a tensor off LibTorch: {e:?}"))?;
        if !primitive.tensor.is_contiguous() {
            primitive = burn_tch::TchTensor::new(primitive.tensor.contiguous());
        }
        self.group
            .send(&primitive, peer)
            .map_err(anyhow::Error::msg)
    }

    /// What rank `peer` sends, into a new tensor of `shape` on `device`.
    pub fn recv<const D: usize>(
        &self,
        shape: [usize; D],
        peer: usize,
        device: &Device,
    ) -> anyhow::Result<Tensor<D>> {
        let primitive = Tensor::<D>::zeros(shape, device)
            .try_into_primitive::<LibTorch>()
            .map_err(|e| anyhow::anyhow!("recv off LibTorch: {e:?}"))?;
        self.group
            .recv(&primitive, peer)
            .map_err(anyhow::Error::msg)?;
        Ok(Tensor::from_primitive::<LibTorch>(primitive))
    }

    /// Every rank's rows of `tensor` ([n, d], the same shape on every rank) stacked by rank:
    /// [world · n, d].
    pub fn all_gather_rows(&self, tensor: Tensor<2>) -> anyhow::Result<Tensor<2>> {
        let [n, d] = tensor.dims();
        let output = Tensor::<2>::zeros([self.launch.world * n, d], &tensor.device());
        let mut input = tensor
            .try_into_primitive::<LibTorch>()
            .map_err(|e| anyhow::anyhow!("all-gather of a tensor off LibTorch: {e:?}"))?;
        if !input.tensor.is_contiguous() {
            input = burn_tch::TchTensor::new(input.tensor.contiguous());
        }
        let output = output
            .try_into_primitive::<LibTorch>()
            .map_err(|e| anyhow::anyhow!("all-gather off LibTorch: {e:?}"))?;
        self.group
            .all_gather(&input, &output)
            .map_err(anyhow::Error::msg)?;
        Ok(Tensor::from_primitive::<LibTorch>(output))
    }

    /// Every rank's `values` (the same count on every rank), concatenated by rank.
    pub fn all_gather_i64(&self, values: &[i64], device: &Device) -> anyhow::Result<Vec<i64>> {
        let input =
            Tensor::<1, Int>::from_data(TensorData::new(values.to_vec(), [values.len()]), device);
        let output = Tensor::<1, Int>::zeros([self.launch.world * values.len()], device);
        let prim = |t: Tensor<1, Int>| {
            t.try_into_primitive::<LibTorch>()
                .map_err(|e| anyhow::anyhow!("all-gather off LibTorch: {e:?}"))
        };
        let output_primitive = prim(output)?;
        self.group
            .all_gather(&prim(input)?, &output_primitive)
            .map_err(anyhow::Error::msg)?;
        Tensor::<1, Int>::from_primitive::<LibTorch>(output_primitive)
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .map_err(|e| anyhow::anyhow!("all-gather's values: {e:?}"))
    }

    /// Which ranks stopped, as far as their heartbeats tell: read now and again after
    /// [`WATCH`]; a rank whose count did not move is dead or stuck (SIGSTOP, a hung device).
    /// The store itself unreachable means rank 0, which serves it, is gone.
    pub fn diagnose(&self) -> String {
        let l = &self.launch;
        let (_, prefix) = store_role(l.rank);
        let Ok(store) = Store::connect(
            &l.master_addr,
            l.master_port,
            false,
            l.world,
            5_000,
            &prefix,
        ) else {
            return format!(
                "the rendezvous store at {}:{} (served by rank 0, or by torchrun on the master \
                 node) is unreachable: rank 0 or its machine stopped",
                l.master_addr, l.master_port
            );
        };
        let read = |store: &Store| -> Vec<Option<u64>> {
            (0..l.world)
                .map(|r| {
                    store
                        .get(&heartbeat_key(r))
                        .ok()
                        .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
                })
                .collect()
        };
        let before = read(&store);
        std::thread::sleep(WATCH);
        let after = read(&store);
        if after.iter().all(Option::is_none) {
            return format!(
                "the rendezvous store at {}:{} no longer answers: rank 0 or its machine stopped",
                l.master_addr, l.master_port
            );
        }
        let stopped: Vec<String> = (0..l.world)
            .filter(|&r| r != l.rank && (after[r].is_none() || after[r] == before[r]))
            .map(|r| r.to_string())
            .collect();
        match stopped.len() {
            0 => "every rank's heartbeat is alive: one is stuck inside a collective (a hung \
                  device or network) or slower than dist_timeout"
                .to_string(),
            1 => format!(
                "rank {} stopped (its heartbeat did not move for {} s)",
                stopped[0],
                WATCH.as_secs()
            ),
            _ => format!(
                "ranks {} stopped (their heartbeats did not move for {} s)",
                stopped.join(", "),
                WATCH.as_secs()
            ),
        }
    }

    /// Rank 0 serves the store the others read heartbeats from when they diagnose a failure:
    /// it stays up a little longer before its process exits with the error.
    pub fn linger_for_diagnoses(&self) {
        if self.launch.rank == 0 {
            std::thread::sleep(WATCH + Duration::from_secs(2));
        }
    }

    pub fn stop_heartbeat(&mut self) {
        self.heartbeat.stop.store(true, Ordering::Relaxed);
    }
}

/// Whether this build's shim has ProcessGroupNCCL.
pub fn has_nccl() -> bool {
    burn_tch::distributed::has_nccl()
}

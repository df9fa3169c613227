//! Training across processes and machines on libtorch's c10d, the engine under
//! torch.distributed: one process per device, started by torchrun, by a Slurm script, or by
//! `arcface train` itself for the GPUs of one machine (`spawn`). This is the one place a
//! process group is chosen: a plain run is a [`Group::single`], a launched one joins the others.
//!
//! - `launch`: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT.
//! - `group`: the collectives training uses (DDP's broadcast at start, bucketed gradient
//!   averaging, agreements), the identity for a single rank.
//! - `c10d` (feature `tch`): TCPStore, ProcessGroupGloo / ProcessGroupNCCL, heartbeats.
//! - `spawn`: one process per listed GPU (or `--nproc-per-node` on LibTorch's CPU).

#[cfg(feature = "tch")]
mod c10d;
mod ddp;
mod group;
mod launch;
pub mod spawn;

use std::time::Duration;

use anyhow::{Result, bail};
use burn::tensor::Device;

pub use ddp::{BUCKET_BYTES, buckets, checksum};
pub use group::Group;
pub use launch::{Launch, VARIABLES};

use crate::device::DeviceSpec;

/// This rank's device under `launch`: for `cuda:0,1,2,3` with one process per listed GPU, the
/// local rank's entry; for plain `cuda`, `cuda:LOCAL_RANK` (as torchrun's scripts do); LibTorch's
/// CPU for `libtorch-cpu`. burn's own CPU backend has no process group.
pub fn rank_device(spec: &DeviceSpec, launch: &Launch) -> Result<DeviceSpec> {
    Ok(match spec {
        DeviceSpec::Cpu if launch.world == 1 => DeviceSpec::Cpu,
        DeviceSpec::Cpu => bail!(
            "{launch}: device \"cpu\" is burn's own CPU backend, which has no process group; \
             distributed training on the CPU runs on LibTorch's: device = \"libtorch-cpu\" \
             (a build with `--features tch`)"
        ),
        DeviceSpec::LibTorchCpu => DeviceSpec::LibTorchCpu,
        DeviceSpec::Cuda(list) if list.len() == 1 && list[0] == 0 => {
            DeviceSpec::Cuda(vec![launch.local_rank])
        }
        DeviceSpec::Cuda(list) if list.len() == launch.local_world => {
            DeviceSpec::Cuda(vec![list[launch.local_rank]])
        }
        DeviceSpec::Cuda(list) => bail!(
            "{launch}: device `{spec}` lists {} GPUs for {} processes on this machine: give \
             \"cuda\" (each rank takes cuda:LOCAL_RANK) or one GPU per local process",
            list.len(),
            launch.local_world
        ),
    })
}

/// The group of this process: joined with the others when launched (`launch`), else alone.
pub fn group_for(
    launch: Option<&Launch>,
    spec: &DeviceSpec,
    device: &Device,
    timeout: Duration,
) -> Result<Group> {
    match launch {
        None => Ok(Group::single(device)),
        // burn's own CPU backend alone under a launcher of one (rank_device refuses more).
        Some(l) if l.world == 1 && *spec == DeviceSpec::Cpu => Ok(Group::single(device)),
        Some(l) => Group::join(l, device, matches!(spec, DeviceSpec::Cuda(_)), timeout),
    }
}

/// How this process takes part in a run on `spec`.
// One per process, decided once at start-up: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Start {
    /// Start this many ranks on this machine ([`spawn::run_local`]) and wait for them.
    Spawn(usize),
    /// Be one rank (or the only one): its device and its group.
    Rank {
        spec: DeviceSpec,
        device: Device,
        group: Group,
    },
}

/// Decides, for `train` and `bench train`: under a launcher (the variables set) this process
/// is one rank and joins the others; else several listed GPUs or `nproc_per_node` > 1 mean
/// starting that many ranks here; else it runs alone.
fn start(spec: &DeviceSpec, nproc_per_node: Option<usize>, timeout: Duration) -> Result<Start> {
    let launch = Launch::from_env()?;
    let local_ranks = match (spec, nproc_per_node) {
        (_, Some(0)) => bail!("--nproc-per-node must be at least 1"),
        (DeviceSpec::Cuda(list), Some(n)) if n != list.len() => bail!(
            "--nproc-per-node {n} with device `{spec}`: one rank per listed GPU; list {n} GPUs instead"
        ),
        (DeviceSpec::Cpu, Some(n)) if n > 1 => bail!(
            "--nproc-per-node {n}: burn's own CPU backend (device \"cpu\") has no process group; \
             use --device libtorch-cpu (a build with `--features tch`)"
        ),
        (DeviceSpec::Cuda(list), _) => list.len(),
        (_, n) => n.unwrap_or(1),
    };
    if launch.is_none() && local_ranks > 1 {
        // The devices exist and this build can use them, before any process starts.
        spec.resolve()?;
        return Ok(Start::Spawn(local_ranks));
    }
    let rank_spec = match &launch {
        Some(l) => rank_device(spec, l)?,
        None => spec.clone(),
    };
    let device = rank_spec.resolve()?.remove(0);
    let group = group_for(launch.as_ref(), &rank_spec, &device, timeout)?;
    Ok(Start::Rank {
        spec: rank_spec,
        device,
        group,
    })
}

/// This process's rank, device and group, as [`start`] decides; where it decides to start the
/// ranks here instead, runs this same command line as each of them, waits, and returns None
/// (their outcome is the Result).
pub fn rank_or_spawn(
    spec: &DeviceSpec,
    nproc_per_node: Option<usize>,
    timeout: Duration,
) -> Result<Option<(DeviceSpec, Device, Group)>> {
    match start(spec, nproc_per_node, timeout)? {
        Start::Spawn(ranks) => {
            let args: Vec<_> = std::env::args_os().skip(1).collect();
            spawn::run_local(ranks, &args, timeout).map(|()| None)
        }
        Start::Rank {
            spec,
            device,
            group,
        } => Ok(Some((spec, device, group))),
    }
}

/// Bytes each rank sends in a ring all-reduce of `bytes` over `world` ranks: 2(n−1)/n of them
/// (reduce-scatter then all-gather; NCCL's and Gloo's ring).
pub fn ring_bytes(bytes: u64, world: usize) -> u64 {
    let n = world.max(1) as u64;
    bytes * 2 * (n - 1) / n
}

/// nccl-tests' bus bandwidth of an all-reduce of `bytes` in `seconds` over `world` ranks:
/// algbw = bytes / seconds, busbw = algbw · 2(n−1)/n (what each link carries, comparable
/// across world sizes), both in GB/s.
pub fn bus_bandwidth(bytes: usize, seconds: f64, world: usize) -> (f64, f64) {
    let algbw = bytes as f64 / seconds / 1e9;
    let n = world.max(1) as f64;
    (algbw, algbw * 2.0 * (n - 1.0) / n)
}

/// What rank 0 logs at the start of a run of several ranks: the engine, the world, the
/// network interface and a short measured all-reduce (16 MB, 3 times), so that a slow or
/// wrong link shows in the first seconds rather than as a stalled run. Every rank takes part.
pub fn link_report(group: &Group) -> Result<Option<String>> {
    if group.world() == 1 {
        return Ok(None);
    }
    const BYTES: usize = 16 << 20;
    let seconds = group.time_all_reduce(BYTES, 3)?;
    let (_, busbw) = bus_bandwidth(BYTES, seconds, group.world());
    let interface = match group.backend() {
        "NCCL" => std::env::var("NCCL_SOCKET_IFNAME").map_or(
            "NCCL's choice (NCCL_SOCKET_IFNAME unset; NCCL_DEBUG=INFO names it)".into(),
            |i| format!("{i} (NCCL_SOCKET_IFNAME)"),
        ),
        _ => std::env::var("GLOO_SOCKET_IFNAME").map_or(
            "the address of this machine's hostname (GLOO_SOCKET_IFNAME unset)".into(),
            |i| format!("{i} (GLOO_SOCKET_IFNAME)"),
        ),
    };
    Ok(Some(format!(
        "c10d {} over {} ranks, interface {interface}: all-reduce of 16 MB in {:.1} ms, bus bandwidth {busbw:.2} GB/s",
        group.backend(),
        group.world(),
        seconds * 1e3
    )))
}

/// Whether this build's c10d shim has ProcessGroupNCCL (false without the `tch` feature).
pub fn has_nccl() -> bool {
    #[cfg(feature = "tch")]
    return c10d::has_nccl();
    #[cfg(not(feature = "tch"))]
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(local_rank: usize, local_world: usize, world: usize) -> Launch {
        Launch {
            rank: local_rank,
            world,
            local_rank,
            local_world,
            master_addr: "127.0.0.1".into(),
            master_port: 29500,
        }
    }

    #[test]
    fn each_rank_takes_its_gpu() {
        let cuda = |v: &[usize]| DeviceSpec::Cuda(v.to_vec());
        assert_eq!(
            rank_device(&cuda(&[0]), &launch(3, 8, 16)).unwrap(),
            cuda(&[3])
        );
        assert_eq!(
            rank_device(&cuda(&[4, 5, 6, 7]), &launch(2, 4, 4)).unwrap(),
            cuda(&[6])
        );
        let err = rank_device(&cuda(&[0, 1]), &launch(0, 4, 4))
            .unwrap_err()
            .to_string();
        assert!(err.contains("lists 2 GPUs for 4 processes"), "{err}");
        let err = rank_device(&DeviceSpec::Cpu, &launch(0, 2, 2))
            .unwrap_err()
            .to_string();
        assert!(err.contains("libtorch-cpu"), "{err}");
        assert_eq!(
            rank_device(&DeviceSpec::Cpu, &launch(0, 1, 1)).unwrap(),
            DeviceSpec::Cpu
        );
    }
}

//! `arcface bench dist`: all-reduce bandwidth of the process group over message sizes, as
//! nccl-tests' all_reduce_perf reports it (algbw = bytes / time, busbw = algbw · 2(n−1)/n):
//! Gloo on LibTorch's CPU, NCCL on GPUs.

use anyhow::Result;
use serde::Serialize;

use crate::distributed::{Group, bus_bandwidth};

#[derive(Debug, Serialize)]
pub struct AllReduceRow {
    pub bytes: usize,
    /// Mean time of one all-reduce, µs.
    pub time_us: f64,
    /// GB/s.
    pub algbw: f64,
    pub busbw: f64,
}

/// One row per size in `sizes` (bytes of f32), each the mean of `iterations` all-reduces after
/// one untimed; every rank must call it with the same arguments.
pub fn all_reduce_sweep(
    group: &Group,
    sizes: &[usize],
    iterations: usize,
) -> Result<Vec<AllReduceRow>> {
    sizes
        .iter()
        .map(|&bytes| {
            let seconds = group.time_all_reduce(bytes, iterations)?;
            let (algbw, busbw) = bus_bandwidth(bytes, seconds, group.world());
            Ok(AllReduceRow {
                bytes,
                time_us: seconds * 1e6,
                algbw,
                busbw,
            })
        })
        .collect()
}

/// 8 B to 128 MB by factors of 4 (nccl-tests: -b 8 -e 128M -f 4).
pub fn default_sizes() -> Vec<usize> {
    std::iter::successors(Some(8usize), |s| Some(s * 4))
        .take_while(|&s| s <= 256 << 20)
        .collect()
}

//! `arcface bench`: throughput measurements (benchmarks, never timed tests).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use crate::data::dataset::RecDataset;
use crate::data::loader::{Cursor, Loader, LoaderConfig};

#[derive(Debug, Serialize)]
pub struct DataThroughput {
    pub threads: usize,
    pub images: usize,
    pub seconds: f64,
    pub images_per_second: f64,
    pub images_per_second_per_thread: f64,
}

/// Decoded + flipped images per second through the real loader (prefetch included), with 1
/// thread and with `threads`, over `batches` batches of 128 after one warm-up batch.
pub fn data(dir: &Path, threads: usize, batches: usize) -> Result<Vec<DataThroughput>> {
    let dataset = Arc::new(RecDataset::open(dir)?);
    let mut counts = vec![1];
    if threads > 1 {
        counts.push(threads);
    }
    let mut results = Vec::new();
    for t in counts {
        let config = LoaderConfig {
            batch_size: 128,
            seed: 1,
            num_workers: t,
            prefetch: 2,
            rank: 0,
            world: 1,
            flip: true,
        };
        let loader =
            Loader::new(dataset.clone(), config, Cursor::default()).map_err(anyhow::Error::msg)?;
        loader.next_batch()?;
        let start = Instant::now();
        let mut images = 0;
        for _ in 0..batches {
            images += loader.next_batch()?.len();
        }
        let seconds = start.elapsed().as_secs_f64();
        let rate = images as f64 / seconds;
        results.push(DataThroughput {
            threads: t,
            images,
            seconds,
            images_per_second: rate,
            images_per_second_per_thread: rate / t as f64,
        });
    }
    Ok(results)
}

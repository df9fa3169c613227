//! The training loader: per-epoch shuffling by seed, sharding across replicas, parallel JPEG
//! decoding with random horizontal flips, batches of raw 0–255 RGB in NCHW, a bounded prefetch
//! queue, and a cursor (epoch, batch) that a checkpoint stores so a resume continues with the
//! next batch.
//!
//! Everything random is drawn from counter-based seeds (seed, epoch, position), so a batch's
//! content does not depend on thread timing or on where the run was resumed.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use rand::Rng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::dataset::{DatasetError, RecDataset};
use super::image::{FACE_SIZE, decode_face, to_chw};

const SIDE: usize = FACE_SIZE as usize;
/// Seed paths of the epoch shuffles and the flips.
const SHUFFLE: u64 = 1;
const FLIP: u64 = 2;
/// Bytes of one image in a batch.
pub const IMAGE_BYTES: usize = 3 * SIDE * SIDE;

#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// Images per replica and batch.
    pub batch_size: usize,
    pub seed: u64,
    /// Decoding threads.
    pub num_workers: usize,
    /// Batches decoded ahead of the consumer.
    pub prefetch: usize,
    /// This replica and the number of replicas: each global batch of batch_size × world images
    /// is cut into `world` slices and replica `rank` takes slice `rank`.
    pub rank: usize,
    pub world: usize,
    /// Random horizontal flip with probability ½ (insightface's only training augmentation).
    pub flip: bool,
}

/// Where the loader stands: the epoch and the number of global batches already delivered in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: usize,
    pub batch: usize,
}

/// One replica's batch: `images` is [n, 3, 112, 112] u8 RGB, `labels` the identities.
#[derive(Debug, Clone)]
pub struct Batch {
    pub images: Vec<u8>,
    pub labels: Vec<u32>,
    pub keys: Vec<u64>,
    /// The cursor *after* this batch: store it to resume with the next one.
    pub next: Cursor,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The images as a float tensor of raw 0–255 values (the model normalises inside).
    pub fn images_tensor(&self, device: &burn::tensor::Device) -> burn::tensor::Tensor<4> {
        let data: Vec<f32> = self.images.iter().map(|&p| p as f32).collect();
        burn::tensor::Tensor::from_data(
            burn::tensor::TensorData::new(data, [self.len(), 3, SIDE, SIDE]),
            device,
        )
    }

    pub fn labels_tensor(
        &self,
        device: &burn::tensor::Device,
    ) -> burn::tensor::Tensor<1, burn::tensor::Int> {
        let data: Vec<i64> = self.labels.iter().map(|&l| l as i64).collect();
        burn::tensor::Tensor::from_data(burn::tensor::TensorData::new(data, [self.len()]), device)
    }
}

/// The sampling plan, separate from the threads so tests and resumes can reason about it.
#[derive(Debug, Clone)]
pub struct Plan {
    pub images: usize,
    pub config: LoaderConfig,
}

impl Plan {
    /// Global batches per epoch (the last incomplete one is dropped, as arcface_torch).
    pub fn batches_per_epoch(&self) -> usize {
        self.images / (self.config.batch_size * self.config.world)
    }

    /// The epoch's permutation of image indices.
    pub fn permutation(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.images).collect();
        order.shuffle(&mut crate::seed::rng(
            self.config.seed,
            &[SHUFFLE, epoch as u64],
        ));
        order
    }

    /// (image index, flip) of this replica's samples in global batch `batch` of `epoch`.
    pub fn batch(&self, order: &[usize], epoch: usize, batch: usize) -> Vec<(usize, bool)> {
        let c = &self.config;
        let start = (batch * c.world + c.rank) * c.batch_size;
        (start..start + c.batch_size)
            .map(|pos| {
                let flip = c.flip
                    && crate::seed::rng(c.seed, &[FLIP, epoch as u64, pos as u64]).random_bool(0.5);
                (order[pos], flip)
            })
            .collect()
    }
}

/// Decodes one sample into `out` (3×112×112, CHW), flipped if asked.
fn decode_into(
    dataset: &RecDataset,
    index: usize,
    flip: bool,
    out: &mut [u8],
) -> Result<(u32, u64), DatasetError> {
    let sample = dataset.sample(index)?;
    let rgb = decode_face(&sample.image).map_err(|message| DatasetError::Record {
        path: dataset.dir().join("train.rec"),
        key: sample.key,
        message,
    })?;
    to_chw(&rgb, flip, out);
    Ok((sample.label, sample.key))
}

/// Decodes the listed samples in parallel into one batch.
pub fn decode_batch(
    dataset: &RecDataset,
    samples: &[(usize, bool)],
    next: Cursor,
) -> Result<Batch, DatasetError> {
    let mut images = vec![0u8; samples.len() * IMAGE_BYTES];
    let meta: Vec<(u32, u64)> = images
        .par_chunks_mut(IMAGE_BYTES)
        .zip(samples.par_iter())
        .map(|(out, &(index, flip))| decode_into(dataset, index, flip, out))
        .collect::<Result<_, _>>()?;
    let (labels, keys) = meta.into_iter().unzip();
    Ok(Batch {
        images,
        labels,
        keys,
        next,
    })
}

/// Batches from a background thread, `prefetch` ahead, from `start` on, forever (epoch after
/// epoch); the consumer decides when to stop. Dropping the loader stops the thread.
pub struct Loader {
    receiver: Option<Receiver<Result<Batch, DatasetError>>>,
    worker: Option<JoinHandle<()>>,
    pub plan: Plan,
}

impl Loader {
    pub fn new(
        dataset: Arc<RecDataset>,
        config: LoaderConfig,
        start: Cursor,
    ) -> Result<Loader, String> {
        if config.batch_size == 0 || config.world == 0 || config.rank >= config.world {
            return Err(format!(
                "invalid loader set-up: batch_size {}, replica {} of {}",
                config.batch_size, config.rank, config.world
            ));
        }
        let plan = Plan {
            images: dataset.len(),
            config: config.clone(),
        };
        if plan.batches_per_epoch() == 0 {
            return Err(format!(
                "{}: {} images are fewer than one global batch ({} × {} replicas)",
                dataset.dir().display(),
                dataset.len(),
                config.batch_size,
                config.world
            ));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.num_workers.max(1))
            .thread_name(|i| format!("loader-{i}"))
            .build()
            .map_err(|e| e.to_string())?;
        let (sender, receiver) = sync_channel(config.prefetch.max(1));
        let worker_plan = plan.clone();
        let worker = std::thread::Builder::new()
            .name("loader".into())
            .spawn(move || {
                let per_epoch = worker_plan.batches_per_epoch();
                let mut cursor = start;
                loop {
                    let order = worker_plan.permutation(cursor.epoch);
                    while cursor.batch < per_epoch {
                        let samples = worker_plan.batch(&order, cursor.epoch, cursor.batch);
                        let next = Cursor {
                            epoch: cursor.epoch,
                            batch: cursor.batch + 1,
                        };
                        let batch = pool.install(|| decode_batch(&dataset, &samples, next));
                        let failed = batch.is_err();
                        if sender.send(batch).is_err() || failed {
                            return;
                        }
                        cursor.batch += 1;
                    }
                    cursor = Cursor {
                        epoch: cursor.epoch + 1,
                        batch: 0,
                    };
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(Loader {
            receiver: Some(receiver),
            worker: Some(worker),
            plan,
        })
    }

    /// The next batch (blocks while it is being decoded).
    pub fn next_batch(&self) -> Result<Batch, DatasetError> {
        self.receiver
            .as_ref()
            .expect("receiver lives until drop")
            .recv()
            .expect("the loader thread only stops after sending an error or when dropped")
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the channel makes the worker's next send fail, which ends it.
        drop(self.receiver.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

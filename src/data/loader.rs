//! The training loader: per-epoch shuffling by seed, sharding across ranks as PyTorch's
//! DistributedSampler, parallel JPEG decoding with the augmentations (`augment`) and random
//! horizontal flips, batches of raw
//! 0–255 RGB in NCHW, a bounded prefetch queue, and a cursor (epoch, sample) that a checkpoint
//! stores so a resume continues with the next sample, on any number of ranks.
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

use super::augment::{Augmentations, Drawn};
use super::dataset::{DatasetError, RecDataset};
use super::image::{FACE_SIZE, decode_face, to_chw};

const SIDE: usize = FACE_SIZE as usize;
/// Seed paths of the epoch shuffles, the flips and the augmentations.
const SHUFFLE: u64 = 1;
const FLIP: u64 = 2;
const AUGMENT: u64 = 3;
/// Bytes of one image in a batch.
pub const IMAGE_BYTES: usize = 3 * SIDE * SIDE;

#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// Images per rank and batch.
    pub batch_size: usize,
    pub seed: u64,
    /// Decoding threads.
    pub num_workers: usize,
    /// Batches decoded ahead of the consumer.
    pub prefetch: usize,
    /// This rank and the number of ranks. As DistributedSampler (shuffle, drop_last): each
    /// epoch's permutation is one for all ranks, rank r takes every world-th sample of it
    /// starting at r, and each global batch of batch_size × world samples is cut so; the tail
    /// that does not fill a global batch is dropped, so every rank runs the same steps.
    pub rank: usize,
    pub world: usize,
    /// Random horizontal flip with probability ½ (insightface's only training augmentation).
    pub flip: bool,
    /// AdaFace's augmentations, before the flip (all off by default).
    pub augment: Augmentations,
}

/// One sample of a batch: its image, whether it is flipped, and its augmentations.
#[derive(Debug, Clone, PartialEq)]
pub struct Pick {
    pub index: usize,
    pub flip: bool,
    pub augment: Drawn,
}

/// Where the loader stands: the epoch and the number of samples of its permutation already
/// delivered, over all ranks. Counted in samples, not steps, so that a run resumed on another
/// number of ranks continues with the same sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: usize,
    pub sample: usize,
}

/// One rank's batch: `images` is [n, 3, 112, 112] u8 RGB, `labels` the identities.
#[derive(Debug, Clone)]
pub struct Batch {
    pub images: Vec<u8>,
    pub labels: Vec<u32>,
    pub keys: Vec<u64>,
    /// The cursor *after* this batch: store it to resume with the next one.
    pub next: Cursor,
    /// Records of this batch that failed to decode, (key, what the reader said): another image
    /// of the batch took each one's place (`decode_batch`).
    pub skipped: Vec<(u64, String)>,
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
        self.images / self.global_batch()
    }

    /// Samples of one step over all ranks.
    pub fn global_batch(&self) -> usize {
        self.config.batch_size * self.config.world
    }

    /// Whether a global batch starting at sample `sample` fits in the epoch.
    pub fn fits(&self, sample: usize) -> bool {
        sample + self.global_batch() <= self.images
    }

    /// Whether `cursor` is past the epoch's last full global batch: the next step starts the
    /// next epoch.
    pub fn epoch_done(&self, cursor: Cursor) -> bool {
        !self.fits(cursor.sample)
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

    /// This rank's samples in the global batch that starts at sample `start` of `epoch`'s
    /// permutation `order` (positions start + rank + world·j), each drawn from (seed, epoch,
    /// position).
    pub fn batch(&self, order: &[usize], epoch: usize, start: usize) -> Vec<Pick> {
        let c = &self.config;
        (0..c.batch_size)
            .map(|j| start + c.rank + c.world * j)
            .map(|pos| {
                let flip = c.flip
                    && crate::seed::rng(c.seed, &[FLIP, epoch as u64, pos as u64]).random_bool(0.5);
                let augment = match c.augment.is_off() {
                    true => Drawn::default(),
                    false => {
                        let path = [AUGMENT, epoch as u64, pos as u64];
                        c.augment.draw(SIDE, &mut crate::seed::rng(c.seed, &path))
                    }
                };
                Pick {
                    index: order[pos],
                    flip,
                    augment,
                }
            })
            .collect()
    }
}

/// Decodes one sample into `out` (3×112×112, CHW), augmented and flipped as `pick` says.
fn decode_into(
    dataset: &RecDataset,
    pick: &Pick,
    out: &mut [u8],
) -> Result<(u32, u64), DatasetError> {
    let sample = dataset.sample(pick.index)?;
    let mut rgb = decode_face(&sample.image).map_err(|e| DatasetError::Record {
        path: dataset.source_of(sample.key),
        key: sample.key,
        message: e.to_string(),
    })?;
    if !pick.augment.is_empty() {
        pick.augment.apply(&mut rgb, SIDE);
    }
    to_chw(&rgb, pick.flip, out);
    Ok((sample.label, sample.key))
}

/// Decodes the listed samples in parallel into one batch. A sample that fails to decode is
/// replaced by the next one of the batch that decodes (its image, flip and label; the same
/// choice on every run, so a resume stays exact) and listed in `skipped`; a batch of which no
/// sample decodes is the first one's error, and so is a label outside the class count.
pub fn decode_batch(
    dataset: &RecDataset,
    samples: &[Pick],
    next: Cursor,
) -> Result<Batch, DatasetError> {
    let mut images = vec![0u8; samples.len() * IMAGE_BYTES];
    let decoded: Vec<Result<(u32, u64), DatasetError>> = images
        .par_chunks_mut(IMAGE_BYTES)
        .zip(samples.par_iter())
        .map(|(out, pick)| decode_into(dataset, pick, out))
        .collect();
    if let Some(label) = decoded
        .iter()
        .position(|d| matches!(d, Err(DatasetError::Label { .. })))
    {
        return Err(decoded
            .into_iter()
            .nth(label)
            .and_then(Result::err)
            .expect("an error"));
    }
    let Some(good) = decoded.iter().position(Result::is_ok) else {
        let first = decoded.into_iter().next().and_then(Result::err);
        return Err(first.expect("a batch has samples"));
    };
    let n = samples.len();
    let mut skipped = Vec::new();
    let (mut labels, mut keys) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let stand_in = match &decoded[i] {
            Ok(_) => i,
            Err(e) => {
                let key = dataset.images[samples[i].index].key;
                skipped.push((key, e.to_string()));
                (i + 1..n)
                    .chain(0..i)
                    .find(|&j| decoded[j].is_ok())
                    .unwrap_or(good)
            }
        };
        if stand_in != i {
            images.copy_within(
                stand_in * IMAGE_BYTES..(stand_in + 1) * IMAGE_BYTES,
                i * IMAGE_BYTES,
            );
        }
        let (label, key) = decoded[stand_in].as_ref().copied().expect("decoded");
        labels.push(label);
        keys.push(key);
    }
    Ok(Batch {
        images,
        labels,
        keys,
        next,
        skipped,
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
    ) -> anyhow::Result<Loader> {
        if config.batch_size == 0 || config.world == 0 || config.rank >= config.world {
            anyhow::bail!(
                "invalid loader set-up: batch_size {}, rank {} of {}",
                config.batch_size,
                config.rank,
                config.world
            );
        }
        let plan = Plan {
            images: dataset.len(),
            config: config.clone(),
        };
        if plan.batches_per_epoch() == 0 {
            anyhow::bail!(
                "{}: {} images are fewer than one global batch ({} per rank × {} ranks)",
                dataset.dir().display(),
                dataset.len(),
                config.batch_size,
                config.world
            );
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.num_workers.max(1))
            .thread_name(|i| format!("loader-{i}"))
            .build()
            .map_err(|e| anyhow::anyhow!("starting the loader's threads: {e}"))?;
        let (sender, receiver) = sync_channel(config.prefetch.max(1));
        let worker_plan = plan.clone();
        let worker = std::thread::Builder::new()
            .name("loader".into())
            .spawn(move || {
                let global = worker_plan.global_batch();
                let mut cursor = start;
                loop {
                    let order = worker_plan.permutation(cursor.epoch);
                    while worker_plan.fits(cursor.sample) {
                        let samples = worker_plan.batch(&order, cursor.epoch, cursor.sample);
                        let next = Cursor {
                            epoch: cursor.epoch,
                            sample: cursor.sample + global,
                        };
                        let batch = pool.install(|| decode_batch(&dataset, &samples, next));
                        let failed = batch.is_err();
                        if sender.send(batch).is_err() || failed {
                            return;
                        }
                        cursor = next;
                    }
                    cursor = Cursor {
                        epoch: cursor.epoch + 1,
                        sample: 0,
                    };
                }
            })
            .map_err(|e| anyhow::anyhow!("starting the loader's threads: {e}"))?;
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

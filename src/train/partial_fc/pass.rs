//! One step of the model-parallel head on one rank, in PartialFC_V2's order: gather every
//! rank's rows, find this rank's targets among its (sampled) centres, the margin logits, the
//! softmax cross-entropy over every rank's columns, and its backward to the embeddings and the
//! centres.

use std::time::Instant;

use anyhow::{Result, bail};
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::PartialFc;
use crate::distributed::Group;
use crate::model::head::l2_normalize;
use crate::model::{MarginSoftmax, NormStatistics};

/// DistCrossEntropy's floor under a target's probability before the log.
const PROB_FLOOR: f64 = 1e-30;

/// What the head's forward and backward gave on one rank.
pub struct HeadPass {
    /// The mean loss over all ranks' rows (the same on every rank).
    pub loss: f64,
    /// d loss / d this rank's embeddings, times the world size: [B, E], without autodiff.
    pub embedding_grad: Tensor<2>,
    /// d loss / d this rank's centres: [len, E] (rows not sampled are 0), without autodiff.
    pub weight_grad: Tensor<2>,
    /// The local centres used (None: all of them, sample_rate 1).
    pub index: Option<Vec<usize>>,
    /// Seconds spent in the head's collectives, waited for (only when asked for).
    pub collective_seconds: f64,
}

/// The head's collectives, each waited for and timed when a benchmark asks.
struct Collectives<'a> {
    group: &'a Group,
    timed: bool,
    seconds: f64,
}

impl Collectives<'_> {
    fn run<T>(&mut self, collective: impl FnOnce(&Group) -> Result<T>) -> Result<T> {
        if self.timed {
            self.group.sync()?;
        }
        let start = Instant::now();
        let out = collective(self.group)?;
        if self.timed {
            self.group.sync()?;
            self.seconds += start.elapsed().as_secs_f64();
        }
        Ok(out)
    }
}

/// Where each gathered row's identity sits among this rank's centres.
struct Targets {
    /// The local centres a step uses, sorted (None: all of them).
    index: Option<Vec<usize>>,
    /// The same as a tensor on the step's device, for the forward's select and the backward's
    /// scatter.
    index_tensor: Option<Tensor<1, Int>>,
    /// Each row's target column among them, or None where another rank holds its identity.
    columns: Vec<Option<usize>>,
}

/// The margin logits and what their backward needs.
struct Logits {
    /// s · cos θ with the margin on the targets this rank holds: [rows, columns], autodiff.
    logits: Tensor<2>,
    /// The gathered embeddings and the sampled centres, as the leaves of the graph.
    embeddings: Tensor<2>,
    centres: Tensor<2>,
    /// Each row's target column (0 where this rank holds none) and whether it holds one.
    target: Tensor<2, Int>,
    here: Tensor<2>,
}

impl PartialFc {
    /// The head's forward and backward for this rank's `embeddings` ([B, E], without autodiff)
    /// and `labels` at step `step`, with `head` holding this rank's centres; an AdaFace head
    /// moves `norm_statistics`. `timed` waits for the device around each collective to measure
    /// them (benchmarks).
    pub fn forward_backward(
        &mut self,
        head: &MarginSoftmax,
        embeddings: Tensor<2>,
        labels: &[u32],
        group: &Group,
        step: usize,
        timed: bool,
    ) -> Result<HeadPass> {
        let mut collectives = Collectives {
            group,
            timed,
            seconds: 0.0,
        };
        let batch = labels.len();
        if let Some(&bad) = labels.iter().find(|&&l| l as usize >= self.num_classes) {
            bail!(
                "label {bad} is not an identity in [0, {}): the head has {} classes",
                self.num_classes,
                self.num_classes
            );
        }
        let local: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
        let (all_labels, gathered) = collectives.run(|g| {
            let all_labels = g.all_gather_i64(&local, "all-gather of the labels")?;
            let gathered = g.all_gather_rows(embeddings.clone(), "all-gather of the embeddings")?;
            Ok((all_labels, gathered))
        })?;
        let targets = self.targets(&all_labels, step, &gathered.device());
        let logits = margin_logits(head, gathered, &targets, &mut self.norm_statistics);
        let (loss, p) = dist_cross_entropy(&logits, &mut collectives)?;

        // A scalar whose gradient on the logits is (p − onehot)/N: DistCrossEntropy's backward.
        let rows = all_labels.len();
        let Logits {
            logits,
            embeddings: e,
            centres: w,
            target,
            here,
        } = logits;
        let surrogate = ((logits.clone() * p.autodiff()).sum()
            - (logits.gather(1, target.autodiff()) * here.autodiff()).sum())
            / rows as f64;
        let grads = surrogate.backward();
        let embedding_grad = e.grad(&grads).expect("the embeddings require a gradient");
        let sampled_grad = w.grad(&grads).expect("the centres require a gradient");
        // Every rank's share of each embedding's gradient, summed. An all-reduce rather than a
        // reduce-scatter: [W·B, E] is a few MB, and the shim need not grow for it.
        let embedding_grad = collectives
            .run(|g| g.all_reduce_sum(embedding_grad, "all-reduce of the embeddings' gradients"))?;
        let embedding_grad =
            embedding_grad.narrow(0, group.rank() * batch, batch) * group.world() as f64;
        let weight_grad = self.scatter_rows(head, sampled_grad, &targets.index_tensor);
        Ok(HeadPass {
            loss,
            embedding_grad,
            weight_grad,
            index: targets.index,
            collective_seconds: collectives.seconds,
        })
    }

    /// This rank's positives (the distinct gathered labels in its range), the centres a step
    /// uses, and each row's target column among them.
    fn targets(&self, all_labels: &[i64], step: usize, device: &Device) -> Targets {
        let range = self.classes;
        let mut positives: Vec<usize> = all_labels
            .iter()
            .map(|&l| l as usize)
            .filter(|&l| range.contains(l))
            .map(|l| l - range.start)
            .collect();
        positives.sort_unstable();
        positives.dedup();
        let index = (self.sample_rate < 1.0).then(|| self.sample(&positives, step));
        let columns = all_labels
            .iter()
            .map(|&l| {
                let l = l as usize;
                range.contains(l).then(|| {
                    let c = l - range.start;
                    match &index {
                        Some(ix) => ix.binary_search(&c).expect("every positive is sampled"),
                        None => c,
                    }
                })
            })
            .collect();
        let index_tensor = index.as_ref().map(|ix| {
            let ix: Vec<i64> = ix.iter().map(|&i| i as i64).collect();
            let n = ix.len();
            Tensor::<1, Int>::from_data(TensorData::new(ix, [n]), device)
        });
        Targets {
            index,
            index_tensor,
            columns,
        }
    }

    /// The sampled centres' gradient as the gradient of all of this rank's centres (zero rows
    /// where a centre was not sampled).
    fn scatter_rows(
        &self,
        head: &MarginSoftmax,
        sampled_grad: Tensor<2>,
        index: &Option<Tensor<1, Int>>,
    ) -> Tensor<2> {
        let Some(index) = index else {
            return sampled_grad;
        };
        let device = sampled_grad.device();
        Tensor::<2>::zeros([self.classes.len, head.weight.dims()[1]], &device).select_assign(
            0,
            index.clone(),
            sampled_grad,
            burn::tensor::IndexingUpdateOp::Add,
        )
    }
}

/// Cosines of the gathered embeddings against the normalised (sampled) centres, clamped to
/// [−1, 1] (AdaFace: ±(1 − ε)), filtered (`interclass_filtering_threshold`), the margin on each
/// row's target where this rank holds it, times the scale. AdaFace's statistics take in every
/// rank's rows, the same on every rank.
fn margin_logits(
    head: &MarginSoftmax,
    gathered: Tensor<2>,
    targets: &Targets,
    statistics: &mut NormStatistics,
) -> Logits {
    let device = gathered.device();
    let weight = head.weight.val().inner();
    let sampled = match &targets.index_tensor {
        Some(index) => weight.select(0, index.clone()),
        None => weight,
    };
    let rows = targets.columns.len();
    let e = gathered.clone().autodiff().require_grad();
    let w = sampled.autodiff().require_grad();
    let bound = head.cosine_bound();
    let cos = l2_normalize(e.clone())
        .matmul(l2_normalize(w.clone()).transpose())
        .clamp(-bound, bound);
    let target: Vec<i64> = targets
        .columns
        .iter()
        .map(|c| c.unwrap_or(0) as i64)
        .collect();
    let here: Vec<f32> = targets
        .columns
        .iter()
        .map(|c| c.map_or(0.0, |_| 1.0))
        .collect();
    let target = Tensor::<2, Int>::from_data(TensorData::new(target, [rows, 1]), &device);
    let here = Tensor::<2>::from_data(TensorData::new(here, [rows, 1]), &device);
    let cos = head.filter_interclass(cos, target.clone(), here.clone());
    let target_ad = target.clone().autodiff();
    let cos_target = cos.clone().gather(1, target_ad.clone());
    let margin = head.margin_targets(cos_target.clone(), &gathered, statistics);
    let delta = (margin - cos_target) * here.clone().autodiff();
    let logits = cos.scatter(1, target_ad, delta, burn::tensor::IndexingUpdateOp::Add) * head.scale;
    Logits {
        logits,
        embeddings: e,
        centres: w,
        target,
        here,
    }
}

/// DistCrossEntropy: the softmax over every rank's columns (row maxima and sums of
/// exponentials all-reduced) and the mean loss over all rows; also the probabilities, for the
/// backward.
fn dist_cross_entropy(logits: &Logits, collectives: &mut Collectives) -> Result<(f64, Tensor<2>)> {
    let z = logits.logits.clone().inner();
    let max = z.clone().max_dim(1);
    let max = collectives.run(|g| g.all_reduce_max(max, "all-reduce of the logits' maxima"))?;
    let exp = (z - max).exp();
    let sum = exp.clone().sum_dim(1);
    let sum = collectives.run(|g| g.all_reduce_sum(sum, "all-reduce of the softmax sums"))?;
    let p = exp / sum;
    let p_target = p.clone().gather(1, logits.target.clone()) * logits.here.clone();
    let p_target = collectives
        .run(|g| g.all_reduce_sum(p_target, "all-reduce of the targets' probabilities"))?;
    let loss = -(p_target
        .clamp_min(PROB_FLOOR)
        .log()
        .mean()
        .into_scalar::<f32>() as f64);
    Ok((loss, p))
}

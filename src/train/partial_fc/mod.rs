//! The model-parallel margin-softmax head: arcface_torch's PartialFC_V2 (partial_fc_v2.py) on
//! our process group. Rank r holds the class centres of one contiguous range of identities
//! (⌊C/W⌋, one more for r < C mod W) and their momentum; nothing of the head is all-reduced.
//!
//! One step, as PartialFC_V2 runs it: the embeddings and labels of every rank all-gathered;
//! each rank's positives (the distinct gathered labels in its range) and, with
//! `sample_rate < 1`, uniformly drawn negatives up to ⌊sample_rate · range⌋ centres (sorted; the
//! positives alone when they are more); cosines against the normalised sampled centres, clamped
//! to [−1, 1], the margin on each row's target where this rank holds it, the scale; a softmax
//! cross-entropy over all ranks' columns (row maxima and sums of exponentials all-reduced, as
//! DistCrossEntropy). Its backward gives (p − onehot)/N on the logits; through the head that is
//! the centres' gradient (zero on unsampled rows) and every gathered embedding's, which is
//! summed over the ranks and returned to the rank that computed it, times the world size (as
//! PartialFC_V2's AllGather backward: DDP then averages the backbone's gradients).
//!
//! Unsampled centres are one tensor with the sampled ones, as in arcface_torch (one Parameter):
//! their gradient is 0 but weight decay and momentum still move them.
//!
//! Unlike arcface_torch's current CombinedMarginLoss, whose ArcFace branch edits the logits under
//! `no_grad` (the target's gradient passes as if there were no margin), the margin here is
//! differentiated exactly, as by our replicated head before, insightface's MXNet seed, and
//! arcface_torch's earlier `ArcFace` module.

mod pass;

use rand::Rng;

use crate::distributed::Group;
use crate::model::NormStatistics;

pub use pass::HeadPass;

/// Seed path of the negatives' draw: (seed, SAMPLE_SEED, step, rank).
const SAMPLE_SEED: u64 = 4;

/// The identities one rank holds: `start..start + len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassRange {
    pub start: usize,
    pub len: usize,
}

impl ClassRange {
    /// Rank `rank`'s share of `num_classes` over `world` ranks, as PartialFC_V2 splits them.
    pub fn of_rank(num_classes: usize, world: usize, rank: usize) -> ClassRange {
        let (base, extra) = (num_classes / world, num_classes % world);
        ClassRange {
            start: base * rank + rank.min(extra),
            len: base + usize::from(rank < extra),
        }
    }

    pub fn end(&self) -> usize {
        self.start + self.len
    }

    pub fn contains(&self, class: usize) -> bool {
        (self.start..self.end()).contains(&class)
    }
}

/// This rank's part of the head: which identities it holds, how many centres a step uses, and
/// AdaFace's running statistics of the feature norms (the same on every rank: they come from
/// the gathered rows).
#[derive(Debug, Clone)]
pub struct PartialFc {
    pub num_classes: usize,
    pub classes: ClassRange,
    pub sample_rate: f64,
    pub seed: u64,
    rank: usize,
    /// Moved by every step of an AdaFace head (unused by the combined margin).
    pub norm_statistics: NormStatistics,
}

impl PartialFc {
    /// The head of rank `rank` of `world` for `num_classes` identities.
    pub fn new(num_classes: usize, world: usize, rank: usize, sample_rate: f64, seed: u64) -> Self {
        PartialFc {
            num_classes,
            classes: ClassRange::of_rank(num_classes, world, rank),
            sample_rate,
            seed,
            rank,
            norm_statistics: NormStatistics::default(),
        }
    }

    /// The head `config` describes for `num_classes` identities, as this rank of `group`.
    pub fn for_rank(config: &crate::config::Config, num_classes: usize, group: &Group) -> Self {
        Self::new(
            num_classes,
            group.world(),
            group.rank(),
            config.sample_rate,
            config.seed,
        )
    }

    /// Centres one step uses when sampling: ⌊sample_rate · len⌋ (PartialFC_V2's num_sample),
    /// at least one: PartialFC_V2 fails on a rank left with no centre at all (no positive in
    /// the batch and ⌊sample_rate · len⌋ = 0), one drawn negative keeps its softmax defined.
    pub fn num_sample(&self) -> usize {
        ((self.sample_rate * self.classes.len as f64) as usize).clamp(1, self.classes.len.max(1))
    }

    /// The local centres step `step` uses: every positive (sorted local indices) and, when
    /// ⌊sample_rate · len⌋ leaves room, that many in all with negatives drawn uniformly without
    /// replacement from (seed, step, rank); sorted. The positives alone when they are more.
    pub fn sample(&self, positives: &[usize], step: usize) -> Vec<usize> {
        let num_sample = self.num_sample();
        let len = self.classes.len;
        if num_sample <= positives.len() {
            return positives.to_vec();
        }
        let candidates = len - positives.len();
        let wanted = num_sample - positives.len();
        let path = [SAMPLE_SEED, step as u64, self.rank as u64];
        let mut rng = crate::seed::rng(self.seed, &path);
        // Floyd's algorithm: `wanted` distinct candidates of `candidates`, O(wanted) draws
        // (a permutation of a million centres per step would cost more than the rest).
        let mut chosen = vec![0u64; candidates.div_ceil(64)];
        let mut set = |i: usize| {
            let (word, bit) = (i / 64, 1u64 << (i % 64));
            let fresh = chosen[word] & bit == 0;
            chosen[word] |= bit;
            fresh
        };
        for j in candidates - wanted..candidates {
            let t = rng.random_range(0..=j);
            if !set(t) {
                set(j);
            }
        }
        // Candidate c is the c-th local class that is not a positive: merge in one pass.
        let mut index = Vec::with_capacity(num_sample);
        let mut p = 0;
        for (word, &bits) in chosen.iter().enumerate() {
            let mut bits = bits;
            while bits != 0 {
                let c = word * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                while p < positives.len() && positives[p] <= c + p {
                    index.push(positives[p]);
                    p += 1;
                }
                index.push(c + p);
            }
        }
        index.extend_from_slice(&positives[p..]);
        index
    }
}

/// Bytes each rank sends per step in the head's collectives with `world` ranks of `batch`
/// rows of `embedding` floats: the all-gathers of embeddings (f32) and labels (i64), the ring
/// all-reduces of three numbers per row (maxima, sums, targets) and of the embeddings'
/// gradients. Independent of the classes and of the sample rate.
pub fn wire_bytes(world: usize, batch: usize, embedding: usize) -> u64 {
    let rows = (world * batch) as u64;
    let gather = (world as u64 - 1) * batch as u64 * (4 * embedding as u64 + 8);
    let reduce = crate::distributed::ring_bytes(rows * 4, world) * 3
        + crate::distributed::ring_bytes(rows * 4 * embedding as u64, world);
    if world == 1 { 0 } else { gather + reduce }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_split_as_partial_fc_v2() {
        // 10 classes on 3 ranks: 4, 3, 3.
        let got: Vec<ClassRange> = (0..3).map(|r| ClassRange::of_rank(10, 3, r)).collect();
        let want = [(0, 4), (4, 3), (7, 3)];
        for (g, (start, len)) in got.iter().zip(want) {
            assert_eq!((g.start, g.len), (start, len));
        }
        for (c, w) in [(93_431, 8), (360_232, 16), (7, 8)] {
            let ranges: Vec<ClassRange> = (0..w).map(|r| ClassRange::of_rank(c, w, r)).collect();
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges[w - 1].end(), c);
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].end(), pair[1].start);
                assert!(pair[0].len >= pair[1].len && pair[0].len <= pair[1].len + 1);
            }
        }
    }

    #[test]
    fn the_sample_holds_every_positive_and_num_sample_centres() {
        let pfc = PartialFc::new(1000, 1, 0, 0.1, 7);
        let positives = vec![0, 5, 99, 500, 998, 999];
        let mut seen = vec![0usize; 1000];
        for step in 0..400 {
            let index = pfc.sample(&positives, step);
            assert_eq!(index.len(), 100);
            assert!(index.windows(2).all(|w| w[0] < w[1]), "sorted, distinct");
            assert!(positives.iter().all(|p| index.binary_search(p).is_ok()));
            assert!(index.iter().all(|&i| i < 1000));
            for i in index {
                seen[i] += 1;
            }
        }
        // Negatives uniform: each of the 994 drawn 400 · 94/994 ≈ 37.8 times on average.
        let negatives: Vec<usize> = (0..1000)
            .filter(|i| !positives.contains(i))
            .map(|i| seen[i])
            .collect();
        let mean = negatives.iter().sum::<usize>() as f64 / negatives.len() as f64;
        assert!((mean - 400.0 * 94.0 / 994.0).abs() < 1e-9, "{mean}");
        let (lo, hi) = (
            negatives.iter().min().unwrap(),
            negatives.iter().max().unwrap(),
        );
        assert!(
            *lo >= 12 && *hi <= 70,
            "binomial(400, 0.095): min {lo}, max {hi}"
        );
        // The same step draws the same centres; another step others.
        assert_eq!(pfc.sample(&positives, 3), pfc.sample(&positives, 3));
        assert_ne!(pfc.sample(&positives, 3), pfc.sample(&positives, 4));
        // More positives than num_sample: the positives alone.
        let many: Vec<usize> = (0..150).map(|i| i * 6).collect();
        assert_eq!(pfc.sample(&many, 0), many);
    }
}

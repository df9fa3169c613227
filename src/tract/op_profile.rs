//! Where tract's time goes: every node of an embedder's plan timed as it runs, summed per kind
//! of operation (`arcface bench infer --tract-ops`). This is how the PRelu operation
//! (src/tract/prelu.rs) was found to be worth writing; docs/HISTORY.md has the tables.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::{SimpleState, eval};

use super::run::{OnnxEmbedder, image_tensor, on_all_threads};

#[derive(Debug, Clone, Serialize)]
pub struct OpTime {
    /// tract's name for the operation after optimisation (e.g. `OptMatMul`: a convolution's or
    /// the FC layer's matrix product with what tract fused into it).
    pub op: String,
    /// Nodes of this kind run per image.
    pub nodes: usize,
    pub ms_per_image: f64,
}

impl OnnxEmbedder {
    /// Runs `image` (one [3,112,112] raw RGB image) `runs` times, after one untimed run, and
    /// returns the time per operation kind, largest first: on this thread as a batch runs each
    /// of its images, or with `spread` over all threads as a lone image runs. The sum is a
    /// little under the run's time: what tract does between nodes is left out.
    pub fn op_times(&self, image: &[f32], runs: usize, spread: bool) -> Result<Vec<OpTime>> {
        if spread {
            on_all_threads(|| self.op_times_here(image, runs))
        } else {
            self.op_times_here(image, runs)
        }
    }

    fn op_times_here(&self, image: &[f32], runs: usize) -> Result<Vec<OpTime>> {
        let input = image_tensor(image)?;
        let runs = runs.max(1);
        let mut state = SimpleState::new(&self.plan).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let mut totals: HashMap<String, (f64, usize)> = HashMap::new();
        for run in 0..=runs {
            state
                .run_plan_with_eval(
                    tvec!(input.clone().into()),
                    |ctx, op_state, node, inputs| {
                        let start = Instant::now();
                        let outputs = eval(ctx, op_state, node, inputs);
                        if run > 0 {
                            let entry = totals.entry(node.op().name().to_string()).or_default();
                            entry.0 += start.elapsed().as_secs_f64();
                            entry.1 += 1;
                        }
                        outputs
                    },
                )
                .map_err(|e| anyhow::anyhow!("tract: {e:#}"))?;
        }
        let mut times: Vec<OpTime> = totals
            .into_iter()
            .map(|(op, (seconds, calls))| OpTime {
                op,
                nodes: calls / runs,
                ms_per_image: seconds * 1e3 / runs as f64,
            })
            .collect();
        times.sort_by(|a, b| b.ms_per_image.total_cmp(&a.ms_per_image));
        Ok(times)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::interop::onnx::{Batch, backbone_to_onnx};
    use crate::model::Network;
    use burn::tensor::Device;

    #[test]
    fn every_node_kind_of_the_tiny_net_is_timed_once_per_image() {
        let config = Config {
            network: Network::Tiny,
            embedding_size: 32,
            ..Config::default()
        };
        let model = config.backbone().init(&Device::flex());
        let proto = backbone_to_onnx(&model, Batch::Dynamic).unwrap();
        let embedder = OnnxEmbedder::from_proto(proto).unwrap();
        let times = embedder
            .op_times(&[128.0; crate::embedder::IMAGE_VALUES], 2, false)
            .unwrap();
        let nodes = |op: &str| times.iter().find(|t| t.op == op).map(|t| t.nodes);
        // Tiny: five PReLUs (the stem's, one per unit), some taken into a Winograd
        // convolution's output transform (src/tract/fusion.rs), the rest timed.
        let fused = embedder.ours.winograd.prelus_fused;
        assert!(fused > 0, "{:?}", embedder.ours.winograd);
        assert_eq!(nodes("PRelu"), Some(5 - fused), "{times:?}");
        assert_eq!(
            nodes("WinogradOutput"),
            Some(embedder.ours.winograd.total())
        );
        assert!(nodes("OptMatMul").is_some_and(|n| n >= 10), "{times:?}");
        assert!(
            times
                .windows(2)
                .all(|w| w[0].ms_per_image >= w[1].ms_per_image)
        );
        assert!(times.iter().all(|t| t.ms_per_image >= 0.0));
    }
}

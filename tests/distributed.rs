//! Training across processes on libtorch's c10d (`--features tch`; LibTorch's CPU with Gloo,
//! several processes on 127.0.0.1): DDP's arithmetic (2 ranks × B = 1 rank × 2B), world size 1
//! = a plain run, learning, exact resume and resume on another world size, a rank killed with
//! SIGKILL, launch errors, torchrun on one "node" and on two.
#![cfg(feature = "tch")]
#![allow(deprecated)] // burn-tch (Device::libtorch) is deprecated upstream; see src/device.rs.

mod common;
use common::ranks::*;
use common::torch_reference;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arcface::checkpoint::{Checkpoint, load_named, named_tensors};
use arcface::data::synth::{SynthConfig, generate};
use arcface::distributed::{Group, Launch};
use arcface::model::{AdaFaceMargin, MarginSoftmax, MarginSoftmaxConfig};
use arcface::train::partial_fc::{ClassRange, PartialFc};
use arcface::train::sgd::{Sgd, SgdSettings};
use arcface::train::step::backbone_and_head_gradients;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PRelu, PReluConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor, TensorData};

// ---------------------------------------------------------------------------------------------
// DDP's arithmetic with the model-parallel head, on a model without BatchNorm.

/// Convolution, PReLU and FC: everything of the real backbone but BatchNorm, whose batch
/// statistics make ranks differ from one big batch by design (as DDP).
#[derive(Module, Debug)]
struct NoBatchNorm {
    conv: Conv2d,
    prelu: PRelu,
    fc: Linear,
}

/// The backbone and this rank's centres, stepped by one SGD as training steps a `BackboneAndHead`.
#[derive(Module, Debug)]
struct Whole {
    backbone: NoBatchNorm,
    head: MarginSoftmax,
}

const CLASSES: usize = 10;
const WIDTH: usize = 16;
/// The tiny config's logit scale: at 64 the softmax of 10 classes is nearly one-hot and f32
/// rounding, amplified over the steps, reaches 1e-5.
const SCALE: f64 = 16.0;

impl NoBatchNorm {
    fn new(device: &Device) -> NoBatchNorm {
        NoBatchNorm {
            conv: Conv2dConfig::new([3, 4], [3, 3])
                .with_stride([4, 4])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device),
            prelu: PReluConfig::new().with_num_parameters(4).init(device),
            fc: LinearConfig::new(4 * 8 * 8, WIDTH).init(device),
        }
    }

    fn embed(&self, images: Tensor<4>) -> Tensor<2> {
        let x = self.prelu.forward(self.conv.forward(images / 255.0));
        self.fc.forward(x.flatten(1, 3))
    }
}

const B: usize = 4;
const STEPS: usize = 3;

/// The global batch of 2B images 32×32 and labels, the same in every process.
fn global_batch(device: &Device) -> (Tensor<4>, Vec<u32>) {
    let n = 2 * B * 3 * 32 * 32;
    let pixels: Vec<f32> = (0..n).map(|i| ((i * 7919 + 13) % 256) as f32).collect();
    let images = Tensor::<4>::from_data(TensorData::new(pixels, [2 * B, 3, 32, 32]), device);
    let labels: Vec<u32> = (0..2 * B as u32)
        .map(|i| (i * 3) % CLASSES as u32)
        .collect();
    (images, labels)
}

/// Rows `range` of a [rows, width] tensor stored flat.
fn rows_of(data: &TensorData, range: ClassRange) -> TensorData {
    let width = data.shape()[1];
    let values: Vec<f32> = data.to_vec().unwrap();
    let cut = values[range.start * width..range.end() * width].to_vec();
    TensorData::new(cut, [range.len, width])
}

/// Three SGD steps with momentum and weight decay on `rows` of the global batch as one rank
/// of `group`, as training steps (`backbone_and_head_gradients`, then SGD); the weights after,
/// by path: the backbone and this rank's centres.
fn three_steps(
    start: &BTreeMap<String, TensorData>,
    group: &mut Group,
    rows: std::ops::Range<usize>,
    sample_rate: f64,
    adaface: Option<AdaFaceMargin>,
) -> BTreeMap<String, Vec<f32>> {
    let device = Device::libtorch().autodiff();
    let mut pfc = PartialFc::new(CLASSES, group.world(), group.rank(), sample_rate, 9);
    let mut start = start.clone();
    let shard = rows_of(&start["head.weight"], pfc.classes);
    start.insert("head.weight".into(), shard);
    let fresh = Whole {
        backbone: NoBatchNorm::new(&device),
        head: MarginSoftmaxConfig::new(pfc.classes.len, WIDTH)
            .with_scale(SCALE)
            .with_adaface(adaface)
            .init(&device),
    };
    let mut model = load_named(fresh, "", &start).unwrap();
    let (images, labels) = global_batch(&device);
    let images = images.slice([rows.clone()]);
    let labels = &labels[rows];
    let mut sgd = Sgd::new(SgdSettings {
        momentum: 0.9,
        weight_decay: 5e-4,
        no_decay_on_norm_and_prelu: false,
    });
    for step in 0..STEPS {
        let embeddings = model.backbone.embed(images.clone());
        let mut g = backbone_and_head_gradients(
            &model.backbone,
            embeddings,
            (&model.head, &mut pfc),
            labels,
            group,
            step,
            None,
        )
        .unwrap();
        model = sgd.step(model, &mut g.grads, 0.1, 1.0, "");
    }
    let mut weights: BTreeMap<String, Vec<f32>> = named_tensors(&model, "")
        .into_iter()
        .map(|(k, v)| (k, v.convert::<f32>().to_vec().unwrap()))
        .collect();
    let norms = pfc.norm_statistics;
    weights.insert(
        "adaface norm statistics".into(),
        vec![norms.mean as f32, norms.std as f32],
    );
    weights
}

fn as_data(weights: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) -> BTreeMap<String, TensorData> {
    weights
        .iter()
        .map(|(k, (shape, v))| (k.clone(), TensorData::new(v.clone(), shape.clone())))
        .collect()
}

/// Runs `test` (this binary's test of that name) as ranks 0..world in child processes with the
/// launch variables and ARCFACE_TEST_OUT = `<dir>/rank<r>`, after writing `input` beside each
/// as `<out>.in`; every rank's JSON output, by rank.
fn run_ranks(
    test: &str,
    world: usize,
    dir: &Path,
    input: &serde_json::Value,
) -> Vec<serde_json::Value> {
    let port = free_port();
    let outs: Vec<PathBuf> = (0..world).map(|r| dir.join(format!("rank{r}"))).collect();
    let children: Vec<Child> = (0..world)
        .map(|rank| {
            std::fs::write(format!("{}.in", outs[rank].display()), input.to_string()).unwrap();
            let mut command = Command::new(std::env::current_exe().unwrap());
            command
                .args(["--exact", test, "--nocapture"])
                .env("ARCFACE_TEST_OUT", &outs[rank]);
            rank_env(&mut command, rank, world, port).spawn().unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success(), "a rank failed");
    }
    outs.iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

/// In a child process of `run_ranks`: the group, and the input written for this rank.
fn as_rank() -> Option<(Group, serde_json::Value, String)> {
    let out = std::env::var("ARCFACE_TEST_OUT").ok()?;
    let launch = Launch::from_env().unwrap().expect("launched");
    let group = Group::join(&launch, &Device::libtorch(), false, Duration::from_secs(60)).unwrap();
    let input = serde_json::from_slice(&std::fs::read(format!("{out}.in")).unwrap()).unwrap();
    Some((group, input, out))
}

/// 2 ranks × B with the head split over them (5 centres each) update the backbone and the
/// centres as 1 rank × 2B does, within 1e-5, at sample rate 1: PartialFC_V2's arithmetic
/// (all-gathered embeddings, the softmax over both ranks' columns, embedding gradients back to
/// their rank) plus DDP's averaging is the single-device step.
#[test]
fn two_ranks_of_b_update_like_one_rank_of_2b() {
    two_ranks_against_one("two_ranks_of_b_update_like_one_rank_of_2b", None);
}

/// The same with AdaFace's head: its norm statistics over the global batch (every rank's rows,
/// gathered) are one rank's over 2B, and so is every update they margin.
#[test]
fn adaface_on_two_ranks_updates_like_one_rank() {
    let margin = AdaFaceMargin {
        m: 0.4,
        h: 1.0,
        t_alpha: 0.5,
    };
    two_ranks_against_one("adaface_on_two_ranks_updates_like_one_rank", Some(margin));
}

/// The body of the two tests above, `test` their name (the ranks run it again).
fn two_ranks_against_one(test: &str, adaface: Option<AdaFaceMargin>) {
    if let Some((mut group, input, out)) = as_rank() {
        let start: BTreeMap<String, (Vec<usize>, Vec<f32>)> =
            serde_json::from_value(input).unwrap();
        let rows = group.rank() * B..(group.rank() + 1) * B;
        let weights = three_steps(&as_data(&start), &mut group, rows, 1.0, adaface);
        group.finish();
        std::fs::write(&out, serde_json::to_vec(&weights).unwrap()).unwrap();
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let device = Device::libtorch();
    device.seed(5);
    let whole = Whole {
        backbone: NoBatchNorm::new(&device),
        head: MarginSoftmaxConfig::new(CLASSES, WIDTH).init(&device),
    };
    let start: BTreeMap<String, (Vec<usize>, Vec<f32>)> = named_tensors(&whole, "")
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                (v.shape().to_vec(), v.convert::<f32>().to_vec().unwrap()),
            )
        })
        .collect();
    let one = three_steps(
        &as_data(&start),
        &mut Group::single(&device),
        0..2 * B,
        1.0,
        adaface,
    );
    let ranks: Vec<BTreeMap<String, Vec<f32>>> =
        run_ranks(test, 2, dir.path(), &serde_json::to_value(&start).unwrap())
            .into_iter()
            .map(|v| serde_json::from_value(v).unwrap())
            .collect();
    let mut moved = 0.0f32;
    for (name, a) in &one {
        // The backbone: one identical update everywhere, bit for bit. The head: the shards
        // side by side.
        let b = match name.as_str() {
            "head.weight" => [ranks[0][name].clone(), ranks[1][name].clone()].concat(),
            _ => {
                assert_eq!(
                    ranks[0][name], ranks[1][name],
                    "{name}: the ranks' backbones differ"
                );
                ranks[0][name].clone()
            }
        };
        assert_eq!(a.len(), b.len(), "{name}");
        let Some((_, w0)) = start.get(name) else {
            // The norm statistics: AdaFace's move from head.py's (20, 100), alike.
            assert_eq!(adaface.is_some(), a != &[20.0, 100.0], "{name} {a:?}");
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() <= 1e-5 * x.abs(), "{name}: {a:?} and {b:?}");
            }
            continue;
        };
        for ((x, y), w0) in a.iter().zip(&b).zip(w0) {
            assert!(
                (x - y).abs() <= 1e-5 * x.abs().max(1.0),
                "{name}: 1 rank × 2B gives {x}, 2 ranks × B {y}"
            );
            moved = moved.max((x - w0).abs());
        }
    }
    assert_eq!(
        ranks[0]["head.weight"].len(),
        5 * WIDTH,
        "rank 0 holds 5 centres"
    );
    assert!(moved > 1e-3, "the steps changed the weights ({moved})");
}

/// The head's forward and backward on 2 ranks at sample rate 0.5 against an independent
/// PyTorch implementation of PartialFC_V2 (tests/reference/partial_fc.py) fed the same
/// sampled index: loss, the gradients of the embeddings and of the centres, within 1e-5.
#[test]
fn partial_fc_equals_pytorch_on_the_same_index() {
    const ROWS: usize = 6;
    const CLASSES: usize = 41;
    const E: usize = 8;
    if let Some((mut group, input, out)) = as_rank() {
        let device = Device::libtorch();
        let mut pfc = PartialFc::new(CLASSES, group.world(), group.rank(), 0.5, 3);
        let embeddings: Vec<f32> = serde_json::from_value(input["embeddings"].clone()).unwrap();
        let weight: Vec<f32> = serde_json::from_value(input["weight"].clone()).unwrap();
        let labels: Vec<u32> = serde_json::from_value(input["labels"].clone()).unwrap();
        let rows = group.rank() * ROWS..(group.rank() + 1) * ROWS;
        let mine = Tensor::<2>::from_data(
            TensorData::new(embeddings[rows.start * E..rows.end * E].to_vec(), [ROWS, E]),
            &device,
        );
        let full = TensorData::new(weight, [CLASSES, E]);
        let margins: [f64; 3] = serde_json::from_value(input["margins"].clone()).unwrap();
        let threshold = input["threshold"].as_f64().unwrap();
        let mut head = MarginSoftmaxConfig::new(pfc.classes.len, E)
            .with_margins(margins)
            .with_scale(16.0)
            .with_interclass_filtering_threshold(threshold)
            .init(&device);
        head = load_named(
            head,
            "",
            &BTreeMap::from([("weight".to_string(), rows_of(&full, pfc.classes))]),
        )
        .unwrap();
        let pass = pfc
            .forward_backward(&head, mine, &labels[rows], &group, 7, false)
            .unwrap();
        group.finish();
        let out_json = serde_json::json!({
            "start": pfc.classes.start,
            "len": pfc.classes.len,
            "num_sample": pfc.num_sample(),
            "index": pass.index.unwrap(),
            "loss": pass.loss,
            "embedding_grad": pass.embedding_grad.into_data().to_vec::<f32>().unwrap(),
            "weight_grad": pass.weight_grad.into_data().to_vec::<f32>().unwrap(),
        });
        std::fs::write(&out, out_json.to_string()).unwrap();
        return;
    }
    // Hashed, not a ramp: ramps make an embedding and a centre nearly parallel, where f32's
    // √(1 − cos²) has lost its digits.
    let value = |i: usize, seed: u64| {
        (arcface::seed::mix(seed, &[i as u64]) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    };
    let embeddings: Vec<f32> = (0..2 * ROWS * E).map(|i| value(i, 1)).collect();
    let weight: Vec<f32> = (0..CLASSES * E).map(|i| value(i, 2)).collect();
    // Labels on both ranks' halves of the classes, one repeated (a positive once).
    let labels: Vec<u32> = vec![3, 30, 17, 3, 40, 0, 21, 8, 35, 20, 19, 1];
    // ArcFace, CosFace, and the combined margin with m1 ≠ 1 (SphereFace's angle factor); then
    // ArcFace with arcface_torch's interclass filtering (at 0.2 about a quarter of these
    // 8-d cosines are above it).
    let mut unfiltered_loss = None;
    for (margins, threshold) in [
        ([1.0, 0.5, 0.0], 0.0),
        ([1.0, 0.0, 0.35], 0.0),
        ([1.2, 0.2, 0.1], 0.0),
        ([1.0, 0.5, 0.0], 0.2),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let input = serde_json::json!({
            "embeddings": embeddings, "weight": weight, "labels": labels, "margins": margins,
            "threshold": threshold,
        });
        let ranks = run_ranks(
            "partial_fc_equals_pytorch_on_the_same_index",
            2,
            dir.path(),
            &input,
        );
        for (rank, r) in ranks.iter().enumerate() {
            let index: Vec<usize> = serde_json::from_value(r["index"].clone()).unwrap();
            let (start, len) = (
                r["start"].as_u64().unwrap() as usize,
                r["len"].as_u64().unwrap() as usize,
            );
            assert_eq!((start, len), [(0, 21), (21, 20)][rank]);
            assert_eq!(index.len(), r["num_sample"].as_u64().unwrap() as usize);
            assert_eq!(index.len(), len / 2);
            for &l in &labels {
                let l = l as usize;
                if (start..start + len).contains(&l) {
                    assert!(
                        index.contains(&(l - start)),
                        "rank {rank}: positive {l} not sampled"
                    );
                }
            }
        }
        let query = serde_json::json!({
            "embeddings": embeddings, "weight": weight, "labels": labels, "margins": margins,
            "threshold": threshold, "scale": 16.0, "world": 2, "rows_per_rank": ROWS, "embedding_size": E,
            "ranges": ranks.iter().map(|r| [r["start"].clone(), r["len"].clone()]).collect::<Vec<_>>(),
            "indices": ranks.iter().map(|r| r["index"].clone()).collect::<Vec<_>>(),
        });
        let want = torch_reference("partial_fc.py", &query);
        // The filtering case must filter: its loss is not ArcFace's without it.
        let reference_loss = want["loss"].as_f64().unwrap();
        match threshold > 0.0 {
            false => unfiltered_loss = unfiltered_loss.or(Some(reference_loss)),
            true => assert!(
                (reference_loss - unfiltered_loss.unwrap()).abs() > 1e-3,
                "filtering at {threshold} changed nothing ({reference_loss})"
            ),
        }
        let close = |what: &str, ours: &serde_json::Value, theirs: &serde_json::Value| {
            let ours: Vec<f64> = serde_json::from_value(ours.clone()).unwrap();
            let theirs: Vec<f64> = serde_json::from_value(theirs.clone()).unwrap();
            assert_eq!(ours.len(), theirs.len(), "{what}");
            let scale = theirs.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            assert!(scale > 1e-4, "{what}: the reference's gradient is all zero");
            for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * scale.max(1.0),
                    "{margins:?} {what}[{i}]: ours {a}, PyTorch {b}"
                );
            }
        };
        for (rank, r) in ranks.iter().enumerate() {
            let loss = r["loss"].as_f64().unwrap();
            let theirs = want["loss"].as_f64().unwrap();
            assert!(
                (loss - theirs).abs() <= 1e-5 * theirs.abs().max(1.0),
                "loss: ours {loss}, PyTorch {theirs}"
            );
            // Ours is returned times the world size, for DDP's averaging.
            let ours: Vec<f64> = serde_json::from_value::<Vec<f64>>(r["embedding_grad"].clone())
                .unwrap()
                .iter()
                .map(|g| g / 2.0)
                .collect();
            close(
                "embedding gradient",
                &serde_json::to_value(ours).unwrap(),
                &want["embedding_grads"][rank],
            );
            close(
                "centre gradient",
                &r["weight_grad"],
                &want["weight_grads"][rank],
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Runs of the `arcface` binary.

#[test]
fn world_size_one_is_a_plain_run_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let (plain, one) = (dir.path().join("plain"), dir.path().join("one"));
    let plain_cfg = config(dir.path(), "plain.toml", &data, &plain, "");
    let one_cfg = config(dir.path(), "one.toml", &data, &one, "");
    run_ok(&mut arcface(&[
        "train",
        "--config",
        plain_cfg.to_str().unwrap(),
        "--max-steps",
        "4",
    ]));
    let port = free_port();
    let mut launched = arcface(&[
        "train",
        "--config",
        one_cfg.to_str().unwrap(),
        "--max-steps",
        "4",
    ]);
    rank_env(&mut launched, 0, 1, port);
    run_ok(&mut launched);
    assert_eq!(losses(&plain), losses(&one));
    assert_eq!(losses(&plain).len(), 4);
    assert_eq!(tensors(&step_ckpt(&plain, 4)), tensors(&step_ckpt(&one, 4)));
}

/// `arcface train --config CFG --resume CKPT --max-steps STEPS` on one rank, which must succeed.
fn resume_on_one_rank(cfg: &Path, ckpt: &Path, steps: usize) {
    let steps = steps.to_string();
    let (cfg, ckpt) = (cfg.to_str().unwrap(), ckpt.to_str().unwrap());
    let args = [
        "train",
        "--config",
        cfg,
        "--resume",
        ckpt,
        "--max-steps",
        &steps,
    ];
    let one = arcface(&args).output().unwrap();
    assert!(one.status.success(), "{}", text(&one));
}

/// AdamW with two micro-batches per step on two ranks: 3 + 3 steps with a resume equal 6 straight (both moments of every
/// rank's centres in its shard, the backbone's in the main file), and the 2-rank checkpoint
/// resumes on one rank, the centres' moments re-cut with the centres.
#[test]
fn adamw_on_two_ranks_resumes_exactly_and_on_one_rank() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let (straight, split) = (dir.path().join("straight"), dir.path().join("split"));
    let adamw = "optimizer = \"adamw\"\nlr = 0.001\nweight_decay = 0.1\nsample_rate = 0.5\ngradient_acc = 2\n";
    let a = config(dir.path(), "a.toml", &data, &straight, adamw);
    let b = config(dir.path(), "b.toml", &data, &split, adamw);
    let two = |cfg: &Path, extra: &[&str]| run_ok(&mut two_ranks(cfg, extra));
    two(&a, &["--max-steps", "6"]);
    two(&b, &["--max-steps", "3"]);
    two(&b, &["--max-steps", "3", "--resume"]);
    assert_eq!(losses(&straight), losses(&split));
    let head = whole_head(&step_ckpt(&split, 6));
    for name in ["exp_avg.head.weight", "exp_avg_sq.head.weight"] {
        assert_eq!(head[name].len(), head["head.weight"].len(), "{name}");
    }
    assert!(head.keys().any(|k| k.starts_with("exp_avg_sq.backbone.")));
    assert!(!head.keys().any(|k| k.starts_with("momentum.")));
    assert_eq!(head, whole_head(&step_ckpt(&straight, 6)));
    resume_on_one_rank(&b, &step_ckpt(&split, 6), 2);
    let end = whole_head(&step_ckpt(&split, 8));
    assert_eq!(
        end["exp_avg.head.weight"].len(),
        head["exp_avg.head.weight"].len()
    );
}

#[test]
fn two_ranks_resume_exactly_and_on_one_rank() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let (straight, split) = (dir.path().join("straight"), dir.path().join("split"));
    let a = config(dir.path(), "a.toml", &data, &straight, "");
    let b = config(dir.path(), "b.toml", &data, &split, "");
    let two = |cfg: &Path, extra: &[&str]| run_ok(&mut two_ranks(cfg, extra));
    let log = two(&a, &["--max-steps", "6"]);
    two(&b, &["--max-steps", "3"]);
    two(&b, &["--max-steps", "3", "--resume"]);
    // 120 images, 4 per rank × 2 ranks: 15 steps per epoch of 8.
    let written = std::fs::read_to_string(straight.join("training.log")).unwrap();
    assert!(
        written.contains("15 steps per epoch of 8 images"),
        "{written}"
    );
    assert!(
        written.contains("data parallel over 2 ranks (Gloo)"),
        "{written}"
    );
    assert!(
        written.contains("identical backbone on all 2 ranks"),
        "{written}"
    );
    assert!(
        written.contains("this rank's centres 0..10 of 20, every centre every step"),
        "{written}"
    );
    assert!(!log.contains("error"), "{log}");
    assert_eq!(losses(&straight), losses(&split));
    assert_eq!(losses(&straight).len(), 6);
    // Weights, momentum and BatchNorm statistics (rank 0's, which the main file holds), and
    // both ranks' head shards with their momentum.
    let main = Checkpoint::load(&step_ckpt(&split, 6)).unwrap();
    assert_eq!(main.meta.head_shards.len(), 2);
    assert!(
        !main.tensors.contains_key("head.weight"),
        "the head is in the shards"
    );
    assert_eq!(
        whole_head(&step_ckpt(&straight, 6)),
        whole_head(&step_ckpt(&split, 6))
    );

    // The 2-rank checkpoint of step 6 (48 samples in) resumed on one rank: it continues with
    // sample 48 at 4 per step, to the end of epoch 0 (sample 120) at step 6 + 18.
    resume_on_one_rank(&b, &step_ckpt(&split, 6), 18);
    let log = std::fs::read_to_string(split.join("training.log")).unwrap();
    assert!(
        log.contains("at step 6 (epoch 0, sample 48; written by 2 rank(s))"),
        "{log}"
    );
    let end = Checkpoint::load(&step_ckpt(&split, 24)).unwrap().meta;
    assert_eq!(
        (end.cursor.epoch, end.cursor.sample, end.world_size),
        (0, 120, 1)
    );

    // And on three ranks (the head re-cut 7/7/6): from sample 48 at 12 per step, the epoch's
    // 120 at step 6 + 6, and a checkpoint of three shards.
    let three = dir.path().join("three");
    std::fs::create_dir_all(&three).unwrap();
    for entry in std::fs::read_dir(&split).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("step-000000006.ckpt") {
            std::fs::copy(entry.path(), three.join(&name)).unwrap();
        }
    }
    let c = config(dir.path(), "c.toml", &data, &three, "");
    let out = arcface(&[
        "train",
        "--config",
        c.to_str().unwrap(),
        "--nproc-per-node",
        "3",
        "--resume",
        "--max-steps",
        "6",
    ])
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let log = std::fs::read_to_string(three.join("training.log")).unwrap();
    assert!(log.contains("written by 2 rank(s)"), "{log}");
    assert!(log.contains("this rank's centres 0..7 of 20"), "{log}");
    let end = Checkpoint::load(&step_ckpt(&three, 12)).unwrap().meta;
    assert_eq!(
        (end.cursor.epoch, end.cursor.sample, end.world_size),
        (0, 120, 3)
    );
    let ranges: Vec<(usize, usize)> = end.head_shards.iter().map(|s| (s.start, s.len)).collect();
    assert_eq!(ranges, vec![(0, 7), (7, 7), (14, 6)]);
    whole_head(&step_ckpt(&three, 12));
    // eval reads a sharded checkpoint's backbone (the folder: its newest step here).
    let bin = data.join("synth_val.bin");
    let evaluated = run_ok(&mut arcface(&[
        "eval",
        "--model",
        three.to_str().unwrap(),
        "--bin",
        bin.to_str().unwrap(),
        "--json",
    ]));
    assert!(evaluated.contains("\"accuracy\""), "{evaluated}");
}

#[test]
fn two_ranks_learn() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("faces");
    generate(
        &data,
        &SynthConfig::new(80, 12, 200, 21),
        &indicatif::ProgressBar::hidden(),
    )
    .unwrap();
    let output = dir.path().join("out");
    let extra = "batch_size = 16\nnum_epoch = 6\nlr = 0.1\nlr_steps = [150]\nsave_every = 1000\nfrequent = 10\nsample_rate = 0.5\n";
    let cfg = config(dir.path(), "learn.toml", &data, &output, extra);
    // The untrained network (the config's seeded start) on the same pairs.
    let start = dir.path().join("start.onnx");
    let cfg_arg = cfg.to_str().unwrap();
    run_ok(&mut arcface(&[
        "export",
        "--config",
        cfg_arg,
        "--onnx",
        start.to_str().unwrap(),
    ]));
    let bin = data.join("synth_val.bin");
    // stdout alone: the JSON (stderr says what the ONNX file takes).
    let out = arcface(&[
        "eval",
        "--model",
        start.to_str().unwrap(),
        "--bin",
        bin.to_str().unwrap(),
        "--json",
    ])
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let untrained: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let before = untrained["targets"][0]["accuracy"].as_f64().unwrap();
    let trained = run_ok(&mut arcface(&[
        "train",
        "--config",
        cfg_arg,
        "--nproc-per-node",
        "2",
    ]));
    let line = trained
        .lines()
        .rfind(|l| l.starts_with("synth_val at step"))
        .unwrap_or_else(|| panic!("no validation in:\n{trained}"));
    let after: f64 = common::word_after(line, "accuracy ")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        trained.contains("20 centres per step (sample_rate 0.5) and every positive"),
        "{trained}"
    );
    println!("untrained {before:.3}, 2 ranks at sample rate 0.5 trained {after:.3}");
    // Measured: 0.56 untrained, 0.86 trained (200 pairs: one accuracy's std is ~0.03).
    assert!(
        after > 0.75 && after > before + 0.2,
        "untrained {before}, trained {after}"
    );
}

/// Signal `signal` (KILL: the rank dies; STOP: it hangs) to rank `victim` once step 4's
/// checkpoint exists: the other rank stops within `timeout` (dist_timeout) and a margin, naming
/// the rank, exit ≠ 0; every checkpoint there loads.
fn stop_one(victim: usize, signal: &str, timeout: u64) {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let output = dir.path().join("out");
    let extra = format!("dist_timeout = {timeout}\nsave_every = 2\nnum_epoch = 50\n");
    let cfg = config(dir.path(), "stop.toml", &data, &output, &extra);
    let mut children = start_ranks(&cfg, 2, free_port(), &[]);
    let waited = Instant::now();
    while !step_ckpt(&output, 4).exists() {
        assert!(
            waited.elapsed() < Duration::from_secs(120),
            "no checkpoint of step 4"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = children[victim].id().to_string();
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let stopped_at = Instant::now();
    let survivor = children.remove(1 - victim).wait_with_output().unwrap();
    let took = stopped_at.elapsed();
    let said = text(&survivor);
    assert!(!survivor.status.success(), "{said}");
    assert!(took < Duration::from_secs(timeout + 15), "took {took:?}");
    assert!(
        said.contains(&format!("rank {victim} stopped"))
            || (victim == 0 && said.contains("rank 0 or its machine stopped")),
        "{said}"
    );
    let _ = children[0].kill();
    let _ = children[0].wait();
    for path in arcface::checkpoint::list(&output) {
        whole_head(&path);
    }
    assert!(step_ckpt(&output, 4).exists());
}

/// kill -9 of the rank that writes the checkpoint (rank 0, which writes every rank's head shard)
/// while it writes rank 1's shard (a head of 400,000 centres, so that the write takes a while):
/// rank 1 stops naming it, no main file of that step appears, the previous checkpoint is the
/// newest and loads whole, and `--resume` continues from it, on one rank.
#[test]
fn a_rank_killed_while_saving_leaves_the_previous_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let output = dir.path().join("out");
    let extra = "dist_timeout = 20\nsave_every = 3\nnum_epoch = 50\nnum_classes = 400000\n";
    let cfg = config(dir.path(), "save.toml", &data, &output, extra);
    let mut children = start_ranks(&cfg, 2, free_port(), &[]);
    let shard_in_progress = output.join("step-000000006.ckpt.head-1-of-2.tmp");
    let waited = Instant::now();
    while !shard_in_progress.exists() {
        assert!(
            waited.elapsed() < Duration::from_secs(300),
            "no save of step 6"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    signal(children[0].id(), "KILL");
    let survivor = children.remove(1).wait_with_output().unwrap();
    let _ = children[0].wait();
    let said = text(&survivor);
    assert!(!survivor.status.success(), "{said}");
    assert!(
        said.contains("rank 0 stopped") || said.contains("rank 0 or its machine stopped"),
        "{said}"
    );
    assert!(
        !step_ckpt(&output, 6).exists(),
        "a main file of the interrupted save"
    );
    assert_eq!(
        arcface::checkpoint::list(&output),
        vec![step_ckpt(&output, 3)]
    );
    let head = whole_head(&step_ckpt(&output, 3));
    assert_eq!(head["head.weight"].len(), 400_000 * 32);

    // A shard gone (a rank's files not copied over): `--resume` names it and stops.
    let shard = output.join("step-000000003.ckpt.head-1-of-2");
    let away = dir.path().join("away");
    std::fs::rename(&shard, &away).unwrap();
    let out = arcface(&["train", "--config", cfg.to_str().unwrap(), "--resume"])
        .output()
        .unwrap();
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains(&shard.display().to_string()) && said.contains("missing"),
        "{said}"
    );
    std::fs::rename(&away, &shard).unwrap();

    let resumed = run_ok(&mut arcface(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--resume",
        "--max-steps",
        "1",
    ]));
    assert!(!resumed.contains("error"), "{resumed}");
    let log = std::fs::read_to_string(output.join("training.log")).unwrap();
    assert!(
        log.contains("at step 3 (epoch 0, sample 24; written by 2 rank(s))"),
        "{log}"
    );
    let ckpt = Checkpoint::load(&step_ckpt(&output, 4)).unwrap();
    assert_eq!((ckpt.meta.world_size, ckpt.meta.head_shards.len()), (1, 0));
}

#[test]
fn a_killed_rank_stops_the_other_naming_it() {
    stop_one(1, "KILL", 20);
    stop_one(0, "KILL", 20);
}

/// A rank that hangs (SIGSTOP): the other waits dist_timeout in its collective, then names it.
#[test]
fn a_hung_rank_is_named_after_dist_timeout() {
    stop_one(1, "STOP", 8);
}

#[test]
fn launch_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let output = dir.path().join("out");
    let cfg = config(dir.path(), "ok.toml", &data, &output, "");
    let cfg_arg = cfg.to_str().unwrap();

    // A variable missing.
    let out = arcface(&["train", "--config", cfg_arg])
        .env("RANK", "0")
        .env("WORLD_SIZE", "2")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT missing"),
        "{}",
        text(&out)
    );

    // The port taken by another program.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut command = arcface(&["train", "--config", cfg_arg]);
    let out = rank_env(&mut command, 0, 2, port).output().unwrap();
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains(&format!(
            "rank 0 could not serve the rendezvous at 127.0.0.1:{port}"
        )),
        "{said}"
    );
    assert!(said.contains("Pick another MASTER_PORT"), "{said}");
    drop(taken);

    // Ranks started with different configs.
    let other = config(dir.path(), "other.toml", &data, &output, "lr = 0.02\n");
    let port = free_port();
    let children: Vec<Child> = [&cfg, &other]
        .iter()
        .enumerate()
        .map(|(rank, c)| {
            let mut command = arcface(&["train", "--config", c.to_str().unwrap()]);
            rank_env(&mut command, rank, 2, port)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success());
        let said = text(&out);
        assert!(
            said.contains("the configs and options differ between the ranks"),
            "{said}"
        );
        assert!(
            said.contains("start every rank with the same config file"),
            "{said}"
        );
    }

    // A world the data cannot feed: 120 images, 4 per rank × 40 ranks.
    let out = arcface(&["train", "--config", cfg_arg, "--nproc-per-node", "40"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("fewer than one global batch (4 per rank × 40 ranks)"),
        "{}",
        text(&out)
    );
}

#[test]
fn torchrun_on_one_node_and_on_two() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let exe = env!("CARGO_BIN_EXE_arcface");
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let one_cfg = config(dir.path(), "one.toml", &data, &one, "");
    let two_cfg = config(dir.path(), "two.toml", &data, &two, "");
    let out = torchrun()
        .args([
            "--nproc_per_node=2",
            "--no-python",
            exe,
            "train",
            "--config",
        ])
        .arg(&one_cfg)
        .args(["--max-steps", "3"])
        .output()
        .unwrap_or_else(|e| panic!("torchrun: {e} (scripts/setup-libtorch.sh installs it)"));
    assert!(out.status.success(), "{}", text(&out));

    // Two "nodes" of one process each on this machine.
    let port = free_port().to_string();
    let nodes: Vec<Child> = (0..2)
        .map(|node| {
            torchrun()
                .args([
                    "--nnodes=2",
                    &format!("--node_rank={node}"),
                    "--nproc_per_node=1",
                ])
                .args(["--master_addr=127.0.0.1", &format!("--master_port={port}")])
                .args(["--no-python", exe, "train", "--config"])
                .arg(&two_cfg)
                .args(["--max-steps", "3"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for node in nodes {
        let out = node.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    // Both are 2 ranks × 4 on the same data: the same run.
    assert_eq!(losses(&one).len(), 3);
    assert_eq!(losses(&one), losses(&two));
    let log = std::fs::read_to_string(two.join("training.log")).unwrap();
    assert!(log.contains("data parallel over 2 ranks (Gloo)"), "{log}");
}

/// ProcessGroupNCCL is compiled in (scripts/setup-libtorch.sh installs the CUDA header wheels it
/// needs) and, on a machine without a GPU, refuses with c10d's own message rather than crashing.
#[test]
fn nccl_is_built_and_refuses_cleanly_without_a_gpu() {
    assert!(
        arcface::distributed::has_nccl(),
        "the c10d shim was built without ProcessGroupNCCL: run scripts/setup-libtorch.sh (it \
         installs nvidia-cuda-crt and nvidia-cuda-cccl) and rebuild"
    );
    if tch::Cuda::is_available() {
        return;
    }
    let launch = Launch {
        rank: 0,
        world: 1,
        local_rank: 0,
        local_world: 1,
        master_addr: "127.0.0.1".into(),
        master_port: free_port(),
    };
    let err = Group::join(&launch, &Device::libtorch(), true, Duration::from_secs(10))
        .err()
        .expect("NCCL without a GPU is refused")
        .to_string();
    assert!(
        err.contains("ProcessGroupNCCL") || err.contains("GPU"),
        "{err}"
    );
    assert!(err.contains("no GPUs found"), "{err}");
}

/// bf16 mixed precision on two ranks: fp32 master weights and gradients, so the all-reduce is
/// the fp32 one. The first step's loss (the same weights and images) is fp32's within bf16's
/// rounding; after that, batches of 4 make the two curves part (measured: 10.53 / 10.57 at step
/// 1, 14.07 / 13.02 at step 3), so they are only checked to be finite.
#[test]
fn bf16_trains_on_two_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let mut runs = Vec::new();
    for precision in ["fp32", "bf16"] {
        let output = dir.path().join(precision);
        let extra = format!("precision = \"{precision}\"\n");
        let cfg = config(
            dir.path(),
            &format!("{precision}.toml"),
            &data,
            &output,
            &extra,
        );
        run_ok(&mut arcface(&[
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--nproc-per-node",
            "2",
            "--max-steps",
            "4",
        ]));
        let losses: Vec<f64> = losses(&output)
            .values()
            .map(|l| l.parse().unwrap())
            .collect();
        runs.push(losses);
    }
    println!("fp32 {:?}\nbf16 {:?}", runs[0], runs[1]);
    assert_eq!(runs[1].len(), 4);
    assert!(runs[1].iter().all(|l| l.is_finite()), "{:?}", runs[1]);
    let (a, b) = (runs[0][0], runs[1][0]);
    assert!((a - b).abs() < 0.02 * a, "step 1: fp32 {a} vs bf16 {b}");
    assert_ne!(a, b, "bf16 computed in bf16");
}

/// `bench train` on two ranks reports the global rate, the all-reduce's time and bytes, and the
/// head's bytes per rank; `bench dist` reports nccl-tests' algbw and busbw.
#[test]
fn benches_report_the_group() {
    let out = arcface(&[
        "bench",
        "train",
        "--config",
        "configs/tiny.toml",
        "--device",
        "libtorch-cpu",
        "--nproc-per-node",
        "2",
        "--batch-size",
        "4",
        "--num-classes",
        "10",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--json",
    ])
    .current_dir(common::root())
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["world_size"].as_u64(), v["backend"].as_str()),
        (Some(2), Some("Gloo"))
    );
    let f = |key: &str| v[key].as_f64().unwrap_or_else(|| panic!("{key}: {v}"));
    assert!(f("all_reduce_ms") > 0.0, "{v}");
    // 2 ranks × 4 images per step.
    assert!(
        (f("images_per_second") - 8.0 / f("step_ms") * 1e3).abs() < 1e-6 * f("images_per_second")
    );
    // The tiny config's 128-d embedding, 10 classes, 5 on each rank: weight, gradient and
    // momentum in f32.
    assert_eq!(v["head_bytes_per_rank"].as_u64(), Some(3 * 4 * 5 * 128));
    assert!(f("head_ms") > 0.0 && f("head_collectives_ms") > 0.0, "{v}");
    // The head's wire per rank and step: its 4 embeddings (f32) and labels (i64) to the other
    // rank, then ring all-reduces (1× the bytes at n = 2) of 3 numbers per row of 8 and of
    // the 8 × 128 embedding gradients.
    assert_eq!(
        v["head_bytes_sent_per_rank"].as_u64(),
        Some(4 * 128 * 4 + 4 * 8 + 3 * 8 * 4 + 8 * 128 * 4)
    );
    // The ring sends 2(n−1)/n = 1 gradient's bytes at n = 2; the backbone's trainable
    // parameters are those `summary` counts less the head's.
    let summary = run_ok(
        arcface(&["summary", "--config", "configs/tiny.toml", "--json"])
            .current_dir(common::root()),
    );
    let s: serde_json::Value =
        serde_json::from_str(&summary[summary.find('{').unwrap()..]).unwrap();
    let backbone = s["trainable_params"]
        .as_u64()
        .unwrap_or_else(|| panic!("{s}"));
    assert_eq!(v["all_reduce_bytes_per_rank"].as_u64(), Some(4 * backbone));

    let out = arcface(&[
        "bench",
        "dist",
        "--nproc-per-node",
        "2",
        "--sizes",
        "1024,4194304",
        "--iterations",
        "3",
        "--json",
    ])
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["world_size"].as_u64(), Some(2));
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        let (bytes, us) = (r["bytes"].as_f64().unwrap(), r["time_us"].as_f64().unwrap());
        let algbw = r["algbw"].as_f64().unwrap();
        assert!(
            (algbw - bytes / (us * 1e-6) / 1e9).abs() <= 1e-9 * algbw.max(1.0),
            "{r}"
        );
        // busbw = algbw · 2(n−1)/n = algbw at n = 2.
        assert!((r["busbw"].as_f64().unwrap() - algbw).abs() <= 1e-12, "{r}");
    }
}

/// The ranks `arcface train --nproc-per-node` starts stop when it is killed (a cancelled job),
/// rather than training on without it.
#[test]
fn ranks_stop_with_their_launcher() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let output = dir.path().join("out");
    let cfg = config(
        dir.path(),
        "long.toml",
        &data,
        &output,
        "num_epoch = 50\nsave_every = 2\n",
    );
    let mut launcher = arcface(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--nproc-per-node",
        "2",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let waited = Instant::now();
    while !step_ckpt(&output, 2).exists() {
        assert!(
            waited.elapsed() < Duration::from_secs(120),
            "no checkpoint of step 2"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let children_file = format!("/proc/{0}/task/{0}/children", launcher.id());
    let ranks: Vec<String> = std::fs::read_to_string(&children_file)
        .unwrap()
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(ranks.len(), 2, "{ranks:?}");
    launcher.kill().unwrap();
    launcher.wait().unwrap();
    let killed = Instant::now();
    // Gone, or zombies of init (state Z) once their launcher no longer reaps them.
    let alive = |pid: &String| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| stat.split_whitespace().nth(2) != Some("Z"))
    };
    while ranks.iter().any(alive) {
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "ranks {ranks:?} outlived their launcher"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

//! The margin-softmax head against an independent numpy implementation (loss value and
//! finite-difference gradient, in float64), and at the numerically dangerous edges.

mod common;

use arcface::model::{MarginSoftmax, MarginSoftmaxConfig};
use burn::module::Param;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde_json::json;

/// Deterministic values in [-1, 1) (a 64-bit LCG), so the inputs are fixed without a rand crate.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn rows(flat: &[f32], width: usize) -> Vec<Vec<f32>> {
    flat.chunks(width).map(|r| r.to_vec()).collect()
}

fn tensor2(flat: &[f32], shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(flat.to_vec(), shape), device)
}

struct Case {
    embeddings: Vec<f32>,
    weight: Vec<f32>,
    labels: Vec<i64>,
    batch: usize,
    dim: usize,
    classes: usize,
}

/// Six embeddings of 8 dims, 5 classes. Row 0 points almost opposite its class centre
/// (cos θ ≈ −0.95, so θ + 0.5 > π: the seed's fallback branch), row 1 close to it.
fn case() -> Case {
    let (batch, dim, classes) = (6, 8, 5);
    let weight = values(classes * dim, 7);
    let mut embeddings = values(batch * dim, 11);
    let labels = vec![2i64, 4, 0, 1, 2, 3];
    for d in 0..dim {
        let w0 = weight[labels[0] as usize * dim + d];
        let w1 = weight[labels[1] as usize * dim + d];
        embeddings[d] = -3.0 * w0 + 0.3 * embeddings[d];
        embeddings[dim + d] = 2.0 * w1 + 0.2 * embeddings[dim + d];
    }
    Case {
        embeddings,
        weight,
        labels,
        batch,
        dim,
        classes,
    }
}

fn head(case: &Case, margins: [f64; 3], scale: f64, easy: bool, device: &Device) -> MarginSoftmax {
    let mut head = MarginSoftmaxConfig::new(case.classes, case.dim)
        .with_margins(margins)
        .with_scale(scale)
        .with_easy_margin(easy)
        .init(device);
    head.weight = Param::from_tensor(tensor2(&case.weight, [case.classes, case.dim], device));
    head
}

/// Burn's loss and d loss / d embeddings.
fn burn_loss_and_grad(case: &Case, margins: [f64; 3], scale: f64, easy: bool) -> (f32, Vec<f32>) {
    let device = Device::flex().autodiff();
    let head = head(case, margins, scale, easy, &device);
    let emb = tensor2(&case.embeddings, [case.batch, case.dim], &device).require_grad();
    let labels =
        Tensor::<1, Int>::from_data(TensorData::new(case.labels.clone(), [case.batch]), &device);
    let loss = head.forward(emb.clone(), labels);
    let grads = loss.backward();
    let grad = emb.grad(&grads).expect("embedding gradient");
    let loss: f32 = loss.into_scalar();
    (loss, grad.into_data().try_to_vec::<f32>().unwrap())
}

fn check_against_numpy(margins: [f64; 3], scale: f64, easy: bool) {
    let case = case();
    let reference = common::run_reference(
        "margin_softmax.py",
        &json!({
            "embeddings": rows(&case.embeddings, case.dim),
            "weight": rows(&case.weight, case.dim),
            "labels": case.labels,
            "margins": margins,
            "scale": scale,
            "easy_margin": easy,
        }),
    );
    let ref_loss = reference["loss"].as_f64().unwrap();
    let ref_grad: Vec<f64> = reference["grad"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect();

    let (loss, grad) = burn_loss_and_grad(&case, margins, scale, easy);
    println!("margins {margins:?} s {scale} easy {easy}: burn {loss} numpy {ref_loss}");
    assert!(
        ((loss as f64) - ref_loss).abs() <= 1e-4 * ref_loss.abs().max(1.0),
        "loss {loss} vs numpy {ref_loss}"
    );
    let scale_g = ref_grad.iter().fold(0f64, |m, g| m.max(g.abs()));
    for (i, (g, r)) in grad.iter().zip(&ref_grad).enumerate() {
        assert!(
            ((*g as f64) - r).abs() <= 2e-3 * scale_g + 1e-5,
            "grad[{i}] {g} vs finite differences {r} (max |g| {scale_g})"
        );
    }
}

#[test]
fn arcface_matches_numpy() {
    check_against_numpy([1.0, 0.5, 0.0], 64.0, false);
}

#[test]
fn arcface_easy_margin_matches_numpy() {
    check_against_numpy([1.0, 0.5, 0.0], 64.0, true);
}

#[test]
fn cosface_matches_numpy() {
    check_against_numpy([1.0, 0.0, 0.35], 64.0, false);
}

#[test]
fn combined_margin_matches_numpy() {
    check_against_numpy([1.0, 0.3, 0.2], 32.0, false);
}

#[test]
fn sphereface_style_margin_matches_numpy() {
    check_against_numpy([1.35, 0.0, 0.0], 30.0, false);
}

#[test]
fn the_case_covers_the_fallback_branch() {
    // Row 0 must really have θ + m > π, or the ArcFace test above would not test the fallback.
    let case = case();
    let device = Device::flex();
    let head = head(&case, [1.0, 0.5, 0.0], 64.0, false, &device);
    let cos = head.cosine(tensor2(&case.embeddings, [case.batch, case.dim], &device));
    let c0: f32 = cos.slice([0..1, 2..3]).into_scalar();
    let th = (std::f64::consts::PI - 0.5).cos() as f32;
    assert!(c0 < th, "cos θ {c0} should be below th {th}");
}

/// Embeddings exactly on (cos θ = 1) and exactly opposite (cos θ = −1) their class centre:
/// loss and gradients stay finite for every margin type.
#[test]
fn no_nan_at_cos_plus_minus_one() {
    let (dim, classes) = (4, 3);
    let weight = vec![
        1.0, 0.0, 0.0, 0.0, //
        0.0, 1.0, 0.0, 0.0, //
        0.0, 0.0, 1.0, 0.0,
    ];
    let embeddings = vec![
        2.0, 0.0, 0.0, 0.0, // cos = 1 with class 0
        0.0, -3.0, 0.0, 0.0, // cos = -1 with class 1
        0.0, 0.0, 0.5, 0.0, // cos = 1 with class 2
    ];
    let case = Case {
        embeddings,
        weight,
        labels: vec![0, 1, 2],
        batch: 3,
        dim,
        classes,
    };
    for (margins, easy) in [
        ([1.0, 0.5, 0.0], false),
        ([1.0, 0.5, 0.0], true),
        ([1.0, 0.0, 0.35], false),
        ([1.35, 0.0, 0.0], false),
        ([1.0, 0.3, 0.2], false),
    ] {
        let device = Device::flex().autodiff();
        let head = head(&case, margins, 64.0, easy, &device);
        let emb = tensor2(&case.embeddings, [3, dim], &device).require_grad();
        let labels =
            Tensor::<1, Int>::from_data(TensorData::new(case.labels.clone(), [3]), &device);
        let loss = head.forward(emb.clone(), labels);
        let grads = loss.backward();
        let value: f32 = loss.into_scalar();
        assert!(value.is_finite(), "{margins:?}: loss {value}");
        let g = emb
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!(
            g.iter().all(|v| v.is_finite()),
            "{margins:?}: embedding grad {g:?}"
        );
        let gw = head
            .weight
            .val()
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!(
            gw.iter().all(|v| v.is_finite()),
            "{margins:?}: weight grad {gw:?}"
        );
    }
}

/// At exactly cos θ = 1 the ArcFace target logit is s·cos(m); at cos θ = −1 it is the seed's
/// fallback s·(−1 − m·sin m).
#[test]
fn arcface_target_logit_at_the_edges() {
    let device = Device::flex();
    let case = Case {
        embeddings: vec![1.0, 0.0, -1.0, 0.0],
        weight: vec![1.0, 0.0, 0.0, 1.0],
        labels: vec![0, 0],
        batch: 2,
        dim: 2,
        classes: 2,
    };
    let head = head(&case, [1.0, 0.5, 0.0], 64.0, false, &device);
    let labels = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 0], [2]), &device);
    let logits = head.logits(tensor2(&case.embeddings, [2, 2], &device), labels);
    let l = logits.into_data().try_to_vec::<f32>().unwrap();
    let m = 0.5f64;
    let expect_top = (64.0 * m.cos()) as f32;
    let expect_bottom = (64.0 * (-1.0 - (std::f64::consts::PI - m).sin() * m)) as f32;
    assert!((l[0] - expect_top).abs() < 1e-3, "{} vs {expect_top}", l[0]);
    assert!(
        (l[2] - expect_bottom).abs() < 1e-3,
        "{} vs {expect_bottom}",
        l[2]
    );
    assert!(
        l[1].abs() < 1e-5 && l[3].abs() < 1e-5,
        "non-targets are s·cos = 0: {l:?}"
    );
}

/// AdaFace's head (`head = "adaface"`) as training runs it (Partial FC on one rank, all
/// centres) against mk-minchul/AdaFace's head.py in PyTorch float64 (tests/reference/adaface.py)
/// on three batches in a row: the logits, the loss, the gradients of the embeddings (before
/// normalisation, through it) and of the centres, and the norms' running mean and std after
/// each batch, within 1e-5. Once with the published m, h, t_alpha, once with h 1 and t_alpha
/// 0.5, where ĝ reaches ±1 and a near-parallel row of large norm hits the angle's floor ε.
#[test]
fn adaface_equals_head_py() {
    use arcface::distributed::Group;
    use arcface::model::{AdaFaceMargin, NormStatistics};
    use arcface::train::partial_fc::PartialFc;
    let (batch, dim, classes) = (8, 16, 11);
    let device = Device::flex();
    let weight = values(classes * dim, 3);
    let batches: Vec<(Vec<f32>, Vec<i64>)> = (0..3u64)
        .map(|b| {
            let mut x = values(batch * dim, 20 + b);
            let labels: Vec<i64> = (0..batch)
                .map(|i| ((i as u64 * 7 + b) % 11) as i64)
                .collect();
            for (i, row) in x.chunks_mut(dim).enumerate() {
                // Norms from ~1 to ~100, each row leaning towards its centre (a target far
                // below the rest would meet DistCrossEntropy's floor under its probability,
                // 1e-30, which head.py's cross-entropy lacks); the last row nearly its centre
                // at a large norm.
                let scale = 0.5 + (i * i) as f32 * (1.0 + b as f32);
                let centre = &weight[labels[i] as usize * dim..][..dim];
                for (d, v) in row.iter_mut().enumerate() {
                    *v = match i == batch - 1 {
                        true => 30.0 * centre[d] + 0.01 * *v,
                        false => scale * (centre[d] + 0.7 * *v),
                    };
                }
            }
            (x, labels)
        })
        .collect();
    for margin in [
        AdaFaceMargin {
            m: 0.4,
            h: 0.333,
            t_alpha: 0.01,
        },
        AdaFaceMargin {
            m: 0.5,
            h: 1.0,
            t_alpha: 0.5,
        },
    ] {
        // head.py's kernel is our centre matrix transposed: [E, C].
        let kernel: Vec<f32> = (0..dim * classes)
            .map(|k| weight[(k % classes) * dim + k / classes])
            .collect();
        let want = common::torch_reference(
            "adaface.py",
            &json!({"m": margin.m, "h": margin.h, "s": 64.0, "t_alpha": margin.t_alpha,
                    "embedding_size": dim, "classes": classes, "kernel": kernel,
                    "batches": batches.iter().map(|(x, l)| json!({"x": x, "labels": l}))
                        .collect::<Vec<_>>()}),
        );
        let mut head = MarginSoftmaxConfig::new(classes, dim)
            .with_adaface(Some(margin))
            .init(&device);
        head.weight = Param::from_tensor(tensor2(&weight, [classes, dim], &device));
        let group = Group::single(&device);
        let mut pfc = PartialFc::new(classes, 1, 0, 1.0, 1);
        let (mut saturated, mut floored) = (0, 0);
        for (b, (x, labels)) in batches.iter().enumerate() {
            let want = &want[b];
            let close = |what: &str, ours: &[f32], theirs: &serde_json::Value| {
                let theirs: Vec<f64> = serde_json::from_value(theirs.clone()).unwrap();
                assert_eq!(ours.len(), theirs.len(), "{what}");
                let scale = theirs.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                for (i, (&a, t)) in ours.iter().zip(&theirs).enumerate() {
                    assert!(
                        (a as f64 - t).abs() <= 1e-5 * scale,
                        "{margin:?} batch {b}: {what}[{i}] ours {a}, head.py {t}"
                    );
                }
            };
            let mut before = pfc.norm_statistics;
            let l = Tensor::<1, Int>::from_data(TensorData::new(labels.clone(), [batch]), &device);
            let logits = head.logits_with(tensor2(x, [batch, dim], &device), l, &mut before);
            close(
                "logits",
                &logits.into_data().try_to_vec::<f32>().unwrap(),
                &want["logits"],
            );
            let labels: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
            let pass = pfc
                .forward_backward(
                    &head,
                    tensor2(x, [batch, dim], &device),
                    &labels,
                    &group,
                    b,
                    false,
                )
                .unwrap();
            assert_eq!(
                pfc.norm_statistics, before,
                "logits_with and training agree"
            );
            let NormStatistics { mean, std } = pfc.norm_statistics;
            close(
                "batch_mean, batch_std",
                &[mean as f32, std as f32],
                &json!([want["batch_mean"], want["batch_std"]]),
            );
            close("loss", &[pass.loss as f32], &json!([want["loss"]]));
            close(
                "embedding gradient",
                &pass.embedding_grad.into_data().try_to_vec::<f32>().unwrap(),
                &want["x_grad"],
            );
            let grad: Vec<f32> = pass.weight_grad.into_data().try_to_vec().unwrap();
            let grad_t: Vec<f32> = (0..dim * classes)
                .map(|k| grad[(k % classes) * dim + k / classes])
                .collect();
            close("centre gradient", &grad_t, &want["kernel_grad"]);
            // ĝ of each row from head.py's statistics after the batch: the strong case
            // saturates some at ±1; the last row's angle θ − m·ĝ is at the floor ε, where its
            // target logit is s·(cos ε − m − m·ĝ).
            let (mean, std) = (
                want["batch_mean"].as_f64().unwrap(),
                want["batch_std"].as_f64().unwrap(),
            );
            let g: Vec<f64> = x
                .chunks(dim)
                .map(|row| {
                    let norm = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
                    ((norm.clamp(0.001, 100.0) - mean) / (std + 1e-3) * margin.h).clamp(-1.0, 1.0)
                })
                .collect();
            saturated += g.iter().filter(|v| v.abs() == 1.0).count();
            let last = batch - 1;
            let target = want["logits"][last * classes + labels[last] as usize]
                .as_f64()
                .unwrap();
            let floor = 64.0 * (1e-3f64.cos() - margin.m - margin.m * g[last]);
            floored += usize::from((target - floor).abs() < 1e-6);
        }
        assert_eq!(floored, 3, "{margin:?}: the last rows at the angle's floor");
        assert_eq!(saturated > 0, margin.h == 1.0, "{margin:?}: ĝ at ±1");
    }
}

//! arcface_torch's Vision Transformer: our ViTs against vit.py's modules run in PyTorch
//! (tests/reference/vit.py) on the same weights, which reach PyTorch through our
//! `export --safetensors` conversion and load there with strict=True.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use arcface::checkpoint::{named_gradients, named_tensors};
use arcface::interop::arcface_torch::{Family, TORCH_INPUT_SCALE, is_linear_weight, transpose};
use arcface::model::layers::INPUT_SCALE;
use arcface::model::summary::count_params;
use arcface::model::vit::{TOKENS, kept_tokens};
use arcface::model::{Network, Precision, VisionTransformer, VitConfig};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde_json::json;

/// Our parameter counts of every ViT get_model builds are PyTorch's.
#[test]
fn parameter_counts_are_get_models() {
    // Building draws from the CPU backend's generator, which the other tests seed.
    let _turn = common::serial();
    // vit_l and vit_tiny are ours: get_model has no such names.
    let networks: Vec<Network> = Network::ALL
        .into_iter()
        .filter(|n| n.is_vit() && !matches!(n, Network::VitL | Network::VitTiny))
        .collect();
    let names: Vec<&str> = networks.iter().map(|n| n.name()).collect();
    let torch = common::torch_reference("vit.py", &json!({"op": "count", "networks": names}));
    for network in networks {
        let config = arcface::config::Config {
            network,
            ..Default::default()
        };
        let model = config.backbone().init(&Device::flex());
        let ours = count_params(&model).0 as u64;
        assert_eq!(ours, torch[network.name()].as_u64().unwrap(), "{network}");
    }
}

/// ‖ours − theirs‖ / ‖theirs‖, relative to 0.01 at least: the biases of the final LayerNorm
/// and of the first BatchNorm1d, and the last one's mean, are 0 in exact arithmetic (a
/// BatchNorm further on takes every per-channel shift away), float noise in any run.
fn distance(ours: &[f64], theirs: &[f64]) -> f64 {
    let diff: f64 = ours.iter().zip(theirs).map(|(a, b)| (a - b).powi(2)).sum();
    let norm: f64 = theirs.iter().map(|b| b * b).sum();
    diff.sqrt() / norm.sqrt().max(0.01)
}

fn f64s(data: &TensorData) -> Vec<f64> {
    data.clone().convert::<f64>().try_to_vec::<f64>().unwrap()
}

/// burn's CPU backend (`flex`), and LibTorch's CPU with `--features tch`.
fn backends(flex: &Device) -> Vec<(&'static str, Device)> {
    #[allow(unused_mut)] // LibTorch joins with `--features tch`.
    let mut devices = vec![("flex", flex.clone())];
    #[cfg(feature = "tch")]
    #[allow(deprecated)] // burn-tch (LibTorch) is deprecated upstream; see src/device.rs.
    devices.push(("libtorch-cpu", Device::libtorch()));
    devices
}

/// One image order per row: a permutation of the 144 tokens (vit.py's `ids_shuffle`).
fn orders(n: usize, seed: u64) -> Vec<Vec<i64>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let mut order: Vec<i64> = (0..TOKENS as i64).collect();
            order.shuffle(&mut rng);
            order
        })
        .collect()
}

/// Our embedding, gradients (torch names and layouts) and running statistics after one
/// forward and backward of sum(embedding · direction) in training.
fn ours(
    model: VisionTransformer,
    images: &TensorData,
    direction: &TensorData,
    order: Option<&Vec<Vec<i64>>>,
    device: &Device,
) -> BTreeMap<String, Vec<f64>> {
    let images = Tensor::<4>::from_data(images.clone(), device);
    let order = order.map(|o| {
        let flat: Vec<i64> = o.iter().flatten().copied().collect();
        Tensor::<2, Int>::from_data(TensorData::new(flat, [o.len(), TOKENS]), device)
    });
    let embedding = model.forward_with_order(images, order, Precision::Fp32);
    let loss = (embedding.clone() * Tensor::from_data(direction.clone(), device)).sum();
    let mut grads = loss.backward();
    let grads = GradientsParams::from_module(&mut grads, &model);
    let mut out = BTreeMap::new();
    out.insert("embedding".to_string(), f64s(&embedding.into_data()));
    let k = INPUT_SCALE as f64 / TORCH_INPUT_SCALE;
    for (path, g) in named_gradients(&model, &grads) {
        let shape = g.shape().to_vec();
        let mut values = f64s(&g);
        if is_linear_weight(&path, &shape) {
            let f32s: Vec<f32> = values.iter().map(|&v| v as f32).collect();
            values = transpose(&f32s, shape[0], shape[1])
                .into_iter()
                .map(f64::from)
                .collect();
        }
        // PyTorch's patch convolution sees the input ×128/127.5 with its weights ×127.5/128:
        // its gradient is ours ÷ k.
        if path == "patch_embed.proj.weight" {
            values.iter_mut().for_each(|v| *v /= k);
        }
        out.insert(Family::Vit.torch_name(&path), values);
    }
    for (path, data) in named_tensors(&model, "") {
        if path.contains("running_") {
            out.insert(Family::Vit.torch_name(&path), f64s(&data));
        }
    }
    out
}

/// PyTorch's embedding, gradients and running statistics for the same step (float64).
fn pytorch(
    config: &VitConfig,
    model: &VisionTransformer,
    images: &TensorData,
    direction: &TensorData,
    order: Option<&Vec<Vec<i64>>>,
    dir: &Path,
) -> BTreeMap<String, Vec<f64>> {
    let state = dir.join("state.safetensors");
    arcface::interop::safetensors::write(Family::Vit, &named_tensors(model, ""), &state).unwrap();
    let f32s = |d: &TensorData| d.clone().convert::<f32>().try_to_vec::<f32>().unwrap();
    common::write_f32(&dir.join("images.f32"), &f32s(images));
    common::write_f32(&dir.join("direction.f32"), &f32s(direction));
    let out = dir.join("out.safetensors");
    common::torch_reference(
        "vit.py",
        &json!({"op": "step", "width": config.width, "depth": config.depth,
                "heads": config.heads, "embedding": config.embedding_size,
                "mask_ratio": config.mask_ratio, "safetensors": state,
                "images": dir.join("images.f32"), "n": images.shape()[0], "order": order,
                "direction": dir.join("direction.f32"), "out": out}),
    );
    let bytes = std::fs::read(&out).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (name, values)
        })
        .collect()
}

/// Forward and backward of a ViT equal vit.py's run in float64: embedding, every parameter's
/// gradient and the BatchNorm statistics after the step, each within 1e-4 relative L2 or within
/// 2× PyTorch's own float32 distance to it, on burn's CPU backend and on LibTorch. With an order
/// given, `mask_ratio` masks as random_masking.
///
/// `flex_floor` replaces 1e-4 on burn's CPU backend. Its float32 sum over a dimension adds the
/// rows one after another where PyTorch's cascades, and the gradients of biases and LayerNorm
/// γ/β are such sums over every token of the batch (864 rows in vit_t's case), which cancel:
/// over eight draws of vit_t at batch 6 those tensors were up to 2.9e-3 from float64 where
/// PyTorch's float32 (and LibTorch through burn) stay near 3e-6. The small ViTs are held to
/// 1e-4 there too; a wrong operation is off by far more (a 2 % error in the attention scale:
/// 5e-4 to 4e-3 in the small ViTs, 0.13 in vit_t).
fn equals_vit_py(config: VitConfig, n: usize, masked: bool, flex_floor: f64) {
    let _turn = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let flex = Device::flex();
    flex.seed(11);
    let images =
        Tensor::<4>::random([n, 3, 112, 112], Distribution::Uniform(0.0, 255.0), &flex).into_data();
    let direction =
        Tensor::<2>::random([n, config.embedding_size], Distribution::Default, &flex).into_data();
    let order = masked.then(|| orders(n, 5));
    let weights = named_tensors(&config.init(&flex), "");
    let model_on = |device: &Device| {
        arcface::checkpoint::load_named(config.init(device), "", &weights).unwrap()
    };
    let theirs = pytorch(
        &config,
        &model_on(&flex),
        &images,
        &direction,
        order.as_ref(),
        dir.path(),
    );
    let devices = backends(&flex);
    let mut failures = Vec::new();
    for (name, device) in devices {
        let device = device.autodiff();
        let ours = ours(
            model_on(&device),
            &images,
            &direction,
            order.as_ref(),
            &device,
        );
        let (exact, fp32): (Vec<_>, Vec<_>) =
            theirs.iter().partition(|(k, _)| !k.ends_with("@fp32"));
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            exact.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            "{name}: the same tensors"
        );
        let fp32: BTreeMap<&str, &Vec<f64>> =
            fp32.into_iter().map(|(k, v)| (k.as_str(), v)).collect();
        for (key, exact) in exact {
            // PyTorch's own float32 is this far from its float64: BatchNorm over a handful of
            // images amplifies rounding, more so through vit_t's twelve blocks.
            let torch32 = distance(fp32[format!("{key}@fp32").as_str()], exact);
            let d = distance(&ours[key], exact);
            eprintln!(
                "RATIO {name} {key} {:.3} {d:.2e} {torch32:.2e}",
                d / (1e-4f64).max(2.0 * torch32)
            );
            let floor = if name == "flex" { flex_floor } else { 1e-4 };
            if !(d < floor || d < 2.0 * torch32) {
                failures.push(format!(
                    "{name}: {key} is {d:.2e} from PyTorch's float64 (PyTorch's float32: \
                     {torch32:.2e})"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_small_vit_trains_as_vit_py() {
    let config = VitConfig::new(64, 2)
        .with_heads(8)
        .with_embedding_size(32)
        .with_drop_path_rate(0.0)
        .with_mask_ratio(0.0);
    equals_vit_py(config, 4, false, 1e-4);
}

#[test]
fn a_small_vit_masks_as_vit_py() {
    let config = VitConfig::new(32, 2)
        .with_heads(4)
        .with_embedding_size(16)
        .with_drop_path_rate(0.0)
        .with_mask_ratio(0.25);
    assert_eq!(kept_tokens(0.25), 108);
    equals_vit_py(config, 3, true, 1e-4);
}

/// vit.py's `using_checkpoint` (each block recomputed in the backward): the step still equals
/// vit.py's in float64, on burn's CPU backend and on LibTorch.
#[test]
fn a_small_vit_recomputing_its_blocks_trains_as_vit_py() {
    let config = VitConfig::new(32, 3)
        .with_heads(4)
        .with_embedding_size(16)
        .with_drop_path_rate(0.0)
        .with_mask_ratio(0.25)
        .with_using_checkpoint(true);
    equals_vit_py(config, 3, true, 1e-4);
}

/// With drop path on, recomputing the blocks changes nothing: the embedding, every gradient and
/// the statistics equal the plain step's to the bit (the drop-path draws are made before each
/// block and replayed; both passes run the same operations), on burn's CPU backend and on
/// LibTorch; and the draws did drop branches (the step differs from one without drop path).
#[test]
fn recomputed_blocks_give_the_plain_steps_values_bit_for_bit() {
    let _turn = common::serial();
    let flex = Device::flex();
    flex.seed(21);
    let n = 4;
    let config = |checkpoint: bool, rate: f64| {
        VitConfig::new(32, 3)
            .with_heads(4)
            .with_embedding_size(16)
            .with_drop_path_rate(rate)
            .with_mask_ratio(0.25)
            .with_using_checkpoint(checkpoint)
    };
    let weights = named_tensors(&config(false, 0.5).init(&flex), "");
    let images =
        Tensor::<4>::random([n, 3, 112, 112], Distribution::Uniform(0.0, 255.0), &flex).into_data();
    let direction = Tensor::<2>::random([n, 16], Distribution::Default, &flex).into_data();
    let order = orders(n, 9);
    let devices = backends(&flex);
    for (name, device) in devices {
        let device = device.autodiff();
        let run = |checkpoint: bool, rate: f64| {
            let model = arcface::checkpoint::load_named(
                config(checkpoint, rate).init(&device),
                "",
                &weights,
            )
            .unwrap();
            device.seed(5);
            ours(model, &images, &direction, Some(&order), &device)
        };
        let (plain, recomputed) = (run(false, 0.5), run(true, 0.5));
        assert_eq!(plain.len(), recomputed.len());
        for (key, values) in &plain {
            assert!(
                values == &recomputed[key],
                "{name}: {key} is {:.2e} from the plain step's",
                distance(&recomputed[key], values)
            );
        }
        assert!(
            run(false, 0.0)["embedding"] != plain["embedding"],
            "{name}: drop path dropped nothing"
        );
    }
}

#[test]
fn vit_t_trains_as_vit_py() {
    let config = VitConfig::new(256, 12)
        .with_drop_path_rate(0.0)
        .with_mask_ratio(0.1);
    equals_vit_py(config, 6, true, 5e-3);
}

/// arcface_torch's ViT as backbone.pth (torch.save of a state dict with trained-like BatchNorm
/// statistics) and as torch2onnx.py's ONNX file imports as our vit_tiny and embeds a real photo
/// as PyTorch does, and so does our ONNX export of it; exported back to safetensors it is the
/// state dict it came from.
#[test]
fn arcface_torchs_vit_pth_imports_and_exports_back() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let config = arcface::config::Config {
        network: Network::VitTiny,
        embedding_size: 32,
        ..Default::default()
    };
    let mut weights = {
        let _turn = common::serial();
        let flex = Device::flex();
        flex.seed(21);
        named_tensors(&config.backbone().init(&flex), "")
    };
    // Running statistics, LayerNorm affines and biases a trained network could have (not the
    // 0 and 1 of a fresh one, which hide a swapped or dropped one), each tensor its own.
    for (k, (path, data)) in weights.iter_mut().enumerate() {
        let n = data.shape()[0];
        let value: fn(usize, usize) -> f32 = if path.ends_with("running_var") {
            |i, _| 0.5 + (i % 7) as f32 * 0.25
        } else if path.ends_with("running_mean") {
            |i, _| (i % 5) as f32 * 0.1 - 0.2
        } else if path.ends_with("gamma") {
            |i, k| 0.8 + ((i + k) % 9) as f32 * 0.05
        } else if path.ends_with("beta") || path.ends_with("bias") {
            |i, k| ((i + 3 * k) % 11) as f32 * 0.02 - 0.1
        } else {
            continue;
        };
        let values: Vec<f32> = (0..n).map(|i| value(i, k)).collect();
        *data = TensorData::new(values, [n]);
    }
    let state = dir.path().join("state.safetensors");
    arcface::interop::safetensors::write(Family::Vit, &weights, &state).unwrap();
    let photo = common::root().join("models/photos/Tom_Hanks_54745.png");
    assert!(
        photo.exists(),
        "{}: run scripts/fetch-models.sh",
        photo.display()
    );
    let rgb = arcface::data::image::decode_rgb(&std::fs::read(&photo).unwrap()).unwrap();
    let mut image = vec![0f32; 3 * 112 * 112];
    arcface::data::image::to_chw(&rgb, false, &mut image);
    common::write_f32(&dir.path().join("image.f32"), &image);
    let made = common::torch_reference(
        "vit.py",
        &json!({"op": "pth", "width": 64, "depth": 4, "heads": 8, "embedding": 32,
                "safetensors": state, "dir": dir.path(), "images": p("image.f32"), "n": 1}),
    );
    let torch: Vec<f64> = serde_json::from_value(made["embeddings"][0].clone()).unwrap();

    let run = |args: &[&str]| -> String {
        let out = common::arcface().args(args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let stdout = run(&[
        "import",
        "--pth",
        &p("backbone.pth"),
        "--out",
        &p("vit.ckpt"),
    ]);
    assert!(
        stdout.contains("as vit_tiny, 32-d") && stdout.contains("with 8 attention heads"),
        "{stdout}"
    );
    let photo = photo.to_string_lossy();
    let unit = |v: &[f64]| -> Vec<f64> {
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter().map(|x| x / n).collect()
    };
    // `infer`'s embedding of the photo by `model`, against PyTorch's.
    let distance_to_torch = |model: &str| -> f64 {
        let json = run(&["infer", &photo, "--model", model, "--no-detect", "--json"]);
        let json: serde_json::Value = serde_json::from_str(&json).unwrap();
        let ours: Vec<f64> =
            serde_json::from_value(json["images"][0]["faces"][0]["embedding"].clone()).unwrap();
        distance(&unit(&ours), &unit(&torch))
    };
    let d = distance_to_torch(&p("vit.ckpt"));
    assert!(d < 1e-4, "infer on the imported .pth vs PyTorch: {d:.2e}");

    // torch2onnx.py's export (opset 11, LayerNorm spelt out, the Linear weights transposed under
    // new names, equal initializers shared through Identity) runs in tract and imports; our
    // opset-8 export of the import imports back.
    let d = distance_to_torch(&p("model.onnx"));
    assert!(
        d < 1e-4,
        "infer on torch2onnx.py's file vs PyTorch: {d:.2e}"
    );
    for (file, out) in [("model.onnx", "onnx.ckpt"), ("ours.onnx", "ours.ckpt")] {
        if file == "ours.onnx" {
            run(&["export", "--model", &p("onnx.ckpt"), "--onnx", &p(file)]);
        }
        let stdout = run(&["import", "--onnx", &p(file), "--out", &p(out)]);
        assert!(
            stdout.contains("as vit_tiny, 32-d") && stdout.contains("(8 heads)"),
            "{stdout}"
        );
        let d = distance_to_torch(&p(out));
        assert!(d < 1e-4, "infer on {file} imported vs PyTorch: {d:.2e}");
    }

    run(&[
        "export",
        "--model",
        &p("vit.ckpt"),
        "--safetensors",
        &p("back.safetensors"),
    ]);
    let read = |path: &str| -> BTreeMap<String, Vec<f32>> {
        let bytes = std::fs::read(path).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        file.tensors()
            .into_iter()
            .map(|(name, view)| {
                let values = view.data().chunks_exact(4);
                (
                    name,
                    values
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                )
            })
            .collect()
    };
    let (before, after) = (read(&state.to_string_lossy()), read(&p("back.safetensors")));
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (name, values) in &before {
        let (a, b): (Vec<f64>, Vec<f64>) = values
            .iter()
            .zip(&after[name])
            .map(|(&x, &y)| (f64::from(x), f64::from(y)))
            .unzip();
        assert!(
            distance(&b, &a) < 1e-6,
            "{name} changed on the way through import"
        );
    }
}

/// Mixed precision (`precision = "bf16"`): the Linear layers and the patch convolution in bf16,
/// q·kᵀ, the softmax, LayerNorm and BatchNorm in fp32, as vit.py under autocast. The forward
/// stays within bf16's reach of fp32's (8 bits of mantissa; measured 4.3e-3 relative on both),
/// and is not fp32's (bf16 did run), on burn's CPU backend and on LibTorch.
#[test]
fn bf16_stays_near_fp32() {
    let _turn = common::serial();
    let config = VitConfig::new(64, 2).with_embedding_size(32);
    let flex = Device::flex();
    flex.seed(3);
    let weights = named_tensors(&config.init(&flex), "");
    let images =
        Tensor::<4>::random([4, 3, 112, 112], Distribution::Uniform(0.0, 255.0), &flex).into_data();
    let devices = backends(&flex);
    for (name, device) in devices {
        let model = arcface::checkpoint::load_named(config.init(&device), "", &weights).unwrap();
        let embed = |precision| {
            let x = Tensor::<4>::from_data(images.clone(), &device);
            f64s(&model.forward_at(x, precision).into_data())
        };
        let (fp32, bf16) = (embed(Precision::Fp32), embed(Precision::Bf16));
        let d = distance(&bf16, &fp32);
        assert!(d < 3e-2 && d > 1e-5, "{name}: bf16 is {d:.2e} from fp32");
    }
}

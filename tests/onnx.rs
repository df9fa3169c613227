//! ONNX: our opset-8 export against the `onnx` checker and onnxruntime, tract against both,
//! the zoo's defects reproduced by an independent graph builder (tests/reference/onnx_models.py),
//! import from MXNet- and PyTorch-style files, the round trip, and bad files.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, TensorData};
use serde_json::json;

use arcface::checkpoint::{load_named, named_tensors};
use arcface::config::Config;
use arcface::embedder::{Embedder, IMAGE_VALUES};
use arcface::interop::onnx::{self, Batch, InputConvention};
use arcface::model::summary::count_params;
use arcface::model::{Backbone, Network};
use arcface::tract::{ConvAlgorithm, OnnxEmbedder};
use common::{arcface, read_f32, run_reference, write_f32};

/// A deterministic stream in [0, 1).
fn uniform(seed: u64) -> impl FnMut() -> f32 {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32
    }
}

fn random_images(n: usize, seed: u64) -> Vec<f32> {
    let mut u = uniform(seed);
    (0..n * IMAGE_VALUES)
        .map(|_| (u() * 255.0).floor())
        .collect()
}

/// A freshly initialised backbone with random BatchNorm statistics and affine parameters and
/// PReLU slopes, so that a swapped or misplaced parameter changes the output.
fn randomized(network: Network, embedding_size: usize, seed: u64) -> Backbone {
    let config = Config {
        network,
        embedding_size,
        ..Config::default()
    };
    let device = Device::flex();
    device.seed(seed);
    let model = config.backbone().init(&device);
    let mut u = uniform(seed);
    let tensors: BTreeMap<String, TensorData> = named_tensors(&model, "")
        .into_iter()
        .map(|(name, data)| {
            let (lo, hi) = match name.rsplit('.').next().unwrap() {
                "gamma" => (0.5, 1.5),
                "beta" | "running_mean" => (-0.1, 0.1),
                "running_var" => (0.5, 2.0),
                "alpha" => (0.1, 0.4),
                // Zero at init in a ViT's Linear layers: a dropped bias would go unseen.
                "bias" => (-0.1, 0.1),
                _ => return (name, data),
            };
            let shape = data.shape().to_vec();
            let n = data.num_elements();
            let values: Vec<f32> = (0..n).map(|_| lo + (hi - lo) * u()).collect();
            (name, TensorData::new(values, shape))
        })
        .collect();
    load_named(model, "", &tensors).unwrap().valid()
}

fn burn_embed(model: &Backbone, images: &[f32]) -> Vec<f32> {
    Embedder::burn(model.clone(), &Device::flex())
        .embed(images)
        .unwrap()
}

/// Largest over rows of ‖a − b‖ / ‖b‖.
fn relative(a: &[f32], b: &[f32], e: usize) -> f64 {
    assert_eq!(a.len(), b.len());
    a.chunks(e)
        .zip(b.chunks(e))
        .map(|(x, y)| {
            let d: f64 = x.iter().zip(y).map(|(p, q)| ((p - q) as f64).powi(2)).sum();
            let n: f64 = y.iter().map(|q| (*q as f64).powi(2)).sum();
            (d / n).sqrt()
        })
        .fold(0.0, f64::max)
}

/// onnxruntime's `fc1` for `images` and the checker's facts about `model`.
fn onnxruntime(model: &Path, images: &[f32], dir: &Path) -> (Vec<f32>, serde_json::Value) {
    let (input, output) = (dir.join("in.f32"), dir.join("out.f32"));
    write_f32(&input, images);
    let facts = run_reference(
        "onnx_models.py",
        &json!({"op": "check", "model": model, "input": input, "n": images.len() / IMAGE_VALUES,
                "output": output}),
    );
    (read_f32(&output), facts)
}

fn check_export(network: Network, embedding_size: usize) {
    let dir = tempfile::tempdir().unwrap();
    let model = randomized(network, embedding_size, 7);
    let file = dir.path().join("model.onnx");
    onnx::export::write(
        &onnx::backbone_to_onnx(&model, Batch::Dynamic).unwrap(),
        &file,
    )
    .unwrap();

    let images = random_images(4, 11);
    let (reference, facts) = onnxruntime(&file, &images, dir.path());
    assert_eq!(facts["ir_version"], 3);
    assert_eq!(facts["opsets"], json!([["", 8]]));
    assert_eq!(facts["input"], "data");
    assert_eq!(facts["input_dims"], json!(["N", 3, 112, 112]));
    assert_eq!(facts["outputs"], json!(["fc1"]));
    assert_eq!(facts["output_dims"], json!(["N", embedding_size]));
    assert_eq!(
        facts["ops"],
        json!([
            "Add",
            "BatchNormalization",
            "Constant",
            "Conv",
            "Flatten",
            "Gemm",
            "Mul",
            "PRelu",
            "Sub"
        ])
    );
    assert_eq!(facts["initializers_in_inputs"], true);
    assert_eq!(
        facts["prelu_slope_shapes"],
        json!([[64, 1, 1], [128, 1, 1], [256, 1, 1], [512, 1, 1]])
    );
    assert_eq!(facts["bn_attributes"], json!(["epsilon", "momentum"]));
    let (params, _) = count_params(&model);
    assert_eq!(
        facts["parameters"], params,
        "every backbone parameter, nothing else"
    );
    let stats: usize = named_tensors(&model, "")
        .iter()
        .filter(|(k, _)| k.contains("running_"))
        .map(|(_, v)| v.num_elements())
        .sum();
    assert_eq!(facts["values"], params + stats);
    let names: Vec<String> = serde_json::from_value(facts["names"].clone()).unwrap();
    for name in [
        "conv1.weight",
        "bn1.running_var",
        "prelu.weight",
        "layer1.0.downsample.0.weight",
        "layer4.1.conv2.weight",
        "fc.weight",
        "fc.bias",
        "features.weight",
    ] {
        assert!(names.contains(&name.to_string()), "{name} in {names:?}");
    }

    // tract by default (Winograd for the 3×3 convolutions where it pays) and with its own
    // im2col everywhere.
    let tract = OnnxEmbedder::load(&file).unwrap();
    // Every 3×3 stride-1 convolution with 7×7 outputs or more: F(4×4) from 28×28 up, F(2×2)
    // at 14×14 (src/tract/winograd/mod.rs, tile_edge); the BatchNorm before and the PReLU after
    // each unit's first convolution taken in, but in the 7×7 stage (fusion.rs).
    let (f4x4, f2x2, unit_convs) = match network {
        Network::R18 => (7, 3, 7),
        _ => (31, 59, 47),
    };
    let w = tract.ours.winograd;
    assert_eq!(
        (w.f4x4, w.f2x2, w.affines_fused, w.prelus_fused),
        (f4x4, f2x2, unit_convs, unit_convs),
        "Winograd convolutions in {network}"
    );
    let im2col = OnnxEmbedder::load_with(&file, ConvAlgorithm::Im2col, Default::default()).unwrap();
    assert_eq!(im2col.ours.winograd.total(), 0);
    for n in [1, 4] {
        let batch = &images[..n * IMAGE_VALUES];
        let ours = burn_embed(&model, batch);
        let want = &reference[..n * embedding_size];
        let b = relative(&ours, want, embedding_size);
        let t = relative(&tract.embed(batch).unwrap(), want, embedding_size);
        let i = relative(&im2col.embed(batch).unwrap(), want, embedding_size);
        println!(
            "{network} batch {n} vs onnxruntime: burn {b:.2e}, tract {t:.2e} (Winograd {:?}), \
             tract im2col {i:.2e}",
            tract.ours.winograd
        );
        assert!(b < 1e-4, "burn vs onnxruntime: {b}");
        assert!(t < 1e-4, "tract vs onnxruntime: {t}");
        assert!(i < 1e-4, "tract (im2col) vs onnxruntime: {i}");
    }
}

#[test]
fn r18_export_passes_the_checker_and_runs_equal_in_onnxruntime_tract_and_burn() {
    check_export(Network::R18, 512);
}

#[test]
fn r100_export_passes_the_checker_and_runs_equal_in_onnxruntime_tract_and_burn() {
    check_export(Network::R100, 512);
}

/// `model` with its qkv weights ×4: vit.py's init (σ 0.02) gives near-uniform attention, in
/// which a wrong scale or softmax axis hardly shows.
fn with_peaked_attention(model: Backbone) -> Backbone {
    let tensors: BTreeMap<String, TensorData> = named_tensors(&model, "")
        .into_iter()
        .map(|(name, data)| {
            if !name.ends_with("attn.qkv.weight") {
                return (name, data);
            }
            let shape = data.shape().to_vec();
            let values: Vec<f32> = data.iter::<f32>().map(|v| 4.0 * v).collect();
            (name, TensorData::new(values, shape))
        })
        .collect();
    load_named(model, "", &tensors).unwrap()
}

/// A ViT's opset-8 export (export_vit.rs: LayerNorm, attention and ReLU6 in opset 8's
/// operators) passes the checker, and onnxruntime, tract and our burn forward (which
/// tests/vit.rs holds to vit.py in PyTorch) give the same embeddings; vit_t at batch 2 too.
#[test]
fn vit_export_passes_the_checker_and_runs_equal_in_onnxruntime_tract_and_burn() {
    for (network, embedding_size, n) in [(Network::VitTiny, 128, 3), (Network::VitT, 512, 2)] {
        let dir = tempfile::tempdir().unwrap();
        let model = with_peaked_attention(randomized(network, embedding_size, 9));
        let file = dir.path().join("vit.onnx");
        onnx::export::write(
            &onnx::backbone_to_onnx(&model, Batch::Dynamic).unwrap(),
            &file,
        )
        .unwrap();
        let images = random_images(n, 13);
        let (reference, facts) = onnxruntime(&file, &images, dir.path());
        assert_eq!(facts["opsets"], json!([["", 8]]));
        assert_eq!(facts["input_dims"], json!(["N", 3, 112, 112]));
        assert_eq!(facts["output_dims"], json!(["N", embedding_size]));
        assert_eq!(
            facts["ops"],
            json!([
                "Add",
                "BatchNormalization",
                "Clip",
                "Constant",
                "Conv",
                "Div",
                "Flatten",
                "Gather",
                "Gemm",
                "MatMul",
                "Mul",
                "ReduceMean",
                "Relu",
                "Reshape",
                "Softmax",
                "Sqrt",
                "Sub",
                "Transpose"
            ])
        );
        assert_eq!(facts["initializers_in_inputs"], true);
        // Every parameter but the training-only mask token (width D), and the zero biases of
        // the two bias-free Gemms (D + E).
        let (params, _) = count_params(&model);
        assert_eq!(facts["parameters"], params + embedding_size);
        let names: Vec<String> = serde_json::from_value(facts["names"].clone()).unwrap();
        for name in [
            "patch_embed.proj.bias",
            "pos_embed",
            "blocks.3.attn.qkv.weight",
            "blocks.3.norm2.weight",
            "blocks.0.mlp.fc2.bias",
            "feature.0.weight",
            "feature.3.running_var",
        ] {
            assert!(names.contains(&name.to_string()), "{name} in {names:?}");
        }
        assert!(!names.contains(&"mask_token".to_string()));
        let ours = burn_embed(&model, &images);
        let tract = OnnxEmbedder::load(&file).unwrap().embed(&images).unwrap();
        let b = relative(&ours, &reference, embedding_size);
        let t = relative(&tract, &reference, embedding_size);
        println!("{network} batch {n} vs onnxruntime: burn {b:.2e}, tract {t:.2e}");
        assert!(b < 1e-4, "burn vs onnxruntime: {b}");
        assert!(t < 1e-4, "tract vs onnxruntime: {t}");

        // Imported back (import_vit.rs), every tensor bit for bit but the mask token, which
        // the graph does not hold.
        let mut proto = onnx::load::read_model(&file).unwrap();
        onnx::load::prepare(&mut proto, InputConvention::Auto).unwrap();
        let imported = onnx::import::import(&proto).unwrap();
        assert_eq!(
            (imported.network, imported.embedding_size),
            (network, embedding_size)
        );
        let mut ours = named_tensors(&model, "");
        let width = ours["pos_embed"].shape()[2];
        ours.insert(
            "mask_token".into(),
            TensorData::zeros::<f32, _>([1, 1, width]),
        );
        assert_eq!(imported.tensors, ours, "import gives back every tensor");

        // A weight of the wrong shape: the error names the node and the tensor it should be.
        let proto = onnx::load::read_model(&file).unwrap();
        let mut graph = proto.graph.clone().unwrap();
        let fc1 = graph
            .initializer
            .iter_mut()
            .find(|t| t.name == "blocks.1.mlp.fc1.weight")
            .unwrap();
        fc1.dims.swap(0, 1);
        let mut altered = proto.clone();
        altered.graph = Some(graph);
        onnx::load::prepare(&mut altered, InputConvention::Auto).unwrap();
        let e = format!("{:#}", onnx::import::import(&altered).err().unwrap());
        assert!(
            e.contains("blocks.1.mlp.fc1.weight_t") && e.contains("`blocks.1.mlp.fc1.weight`"),
            "{e}"
        );
    }
}

/// MobileFaceNet through tract with our convolutions (src/tract/pointwise.rs, grouped.rs) and
/// with tract's own, against onnxruntime, a lone image (spread over the threads) and a batch.
#[test]
fn mbf_export_runs_equal_in_onnxruntime_and_tract_with_our_convolutions() {
    let dir = tempfile::tempdir().unwrap();
    let model = randomized(Network::Mbf, 512, 5);
    let file = dir.path().join("mbf.onnx");
    onnx::export::write(
        &onnx::backbone_to_onnx(&model, Batch::Dynamic).unwrap(),
        &file,
    )
    .unwrap();
    let images = random_images(4, 17);
    let (reference, _) = onnxruntime(&file, &images, dir.path());
    let tract = OnnxEmbedder::load(&file).unwrap();
    // Every 1×1 convolution (each with its BatchNorm; a PReLU after the 15 expansions and
    // conv_sep), every depthwise one and the grouped second layer (each with its BatchNorm; a
    // PReLU after all but the global 7×7).
    let (p, g) = (tract.ours.pointwise, tract.ours.grouped);
    assert_eq!(
        (p.convolutions, p.affines_fused, p.prelus_fused),
        (31, 31, 16)
    );
    assert_eq!(
        (g.convolutions, g.affines_fused, g.prelus_fused),
        (17, 17, 16)
    );
    let im2col = OnnxEmbedder::load_with(&file, ConvAlgorithm::Im2col, Default::default()).unwrap();
    assert_eq!(im2col.ours, Default::default());
    for n in [1, 4] {
        let batch = &images[..n * IMAGE_VALUES];
        let want = &reference[..n * 512];
        let t = relative(&tract.embed(batch).unwrap(), want, 512);
        let i = relative(&im2col.embed(batch).unwrap(), want, 512);
        println!("mbf batch {n} vs onnxruntime: tract {t:.2e}, tract's own convolutions {i:.2e}");
        assert!(t < 1e-4, "tract vs onnxruntime: {t}");
        assert!(i < 1e-4, "tract (its own convolutions) vs onnxruntime: {i}");
    }
}

/// Callers embedding at once, two a single image each (spread over every thread) and one a
/// batch (an image per thread), get what each gets alone. tract keeps a thread's
/// matrix-product scratch space borrowed across the rayon join it forks its products with; a
/// worker waiting in that join that picked up another caller's image re-entered it and aborted
/// the process ("RefCell already borrowed", seen in CI when two tests embedded at once; this
/// test did so 3 times in 3). The spread mode now has a pool of its own, for one caller at a
/// time (src/tract/run.rs).
#[test]
fn callers_embedding_at_once_get_what_each_gets_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("r18.onnx");
    let model = randomized(Network::R18, 512, 5);
    onnx::export::write(
        &onnx::backbone_to_onnx(&model, Batch::Dynamic).unwrap(),
        &file,
    )
    .unwrap();
    let tract = OnnxEmbedder::load(&file).unwrap();
    let threads = rayon::current_num_threads();
    let one = random_images(1, 3);
    let batch = random_images(threads.max(2), 4);
    assert!(arcface::tract::spreads_each_image(1) || threads == 1);
    assert!(!arcface::tract::spreads_each_image(threads.max(2)));
    let (one_alone, batch_alone) = (tract.embed(&one).unwrap(), tract.embed(&batch).unwrap());
    std::thread::scope(|scope| {
        let callers = [
            (&one, &one_alone),
            (&one, &one_alone),
            (&batch, &batch_alone),
        ]
        .map(|(images, alone)| {
            let tract = &tract;
            scope.spawn(move || {
                for _ in 0..30 {
                    assert_eq!(&tract.embed(images).unwrap(), alone);
                }
            })
        });
        for caller in callers {
            caller.join().unwrap();
        }
    });
}

/// A zoo-style or torch-style file from the independent builder; returns (defective, fixed).
fn reference_file(
    dir: &Path,
    style: &str,
    units: [usize; 4],
    widths: [usize; 4],
    e: usize,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let (defective, fixed) = (
        dir.join(format!("{style}.onnx")),
        dir.join(format!("{style}-fixed.onnx")),
    );
    let out = run_reference(
        "onnx_models.py",
        &json!({"op": "zoo", "defective": defective, "fixed": fixed, "units": units,
                "widths": widths, "embedding": e, "style": style, "seed": 5}),
    );
    if style == "mxnet" {
        assert_eq!(
            out["onnxruntime_refuses_defective"], true,
            "the defects are reproduced"
        );
    }
    (defective, fixed)
}

#[test]
fn zoo_style_file_runs_in_tract_and_imports_after_repair() {
    let dir = tempfile::tempdir().unwrap();
    let (zoo, fixed) = reference_file(dir.path(), "mxnet", [2, 2, 2, 2], [64, 128, 256, 512], 512);
    let images = random_images(2, 3);
    let (reference, _) = onnxruntime(&fixed, &images, dir.path());

    // tract loads the defective file itself.
    let tract = OnnxEmbedder::load(&zoo).unwrap();
    assert!(
        tract
            .prepared
            .repairs
            .iter()
            .any(|r| r.contains("spatial=0")),
        "{:?}",
        tract.prepared.repairs
    );
    assert!(
        tract
            .prepared
            .repairs
            .iter()
            .any(|r| r.contains("reshaped to [64, 1, 1]")),
        "{:?}",
        tract.prepared.repairs
    );
    let t = relative(&tract.embed(&images).unwrap(), &reference, 512);
    assert!(
        t < 1e-4,
        "tract on the zoo-style file vs onnxruntime on the fixed one: {t}"
    );

    // Import finds an r18 by its structure (MXNet names) and gives the same embeddings.
    let mut proto = onnx::load::read_model(&zoo).unwrap();
    let prepared = onnx::load::prepare(&mut proto, InputConvention::Auto).unwrap();
    assert!(
        !prepared.input.normalized && prepared.input.detected,
        "Sub and Mul inside: raw 0–255 in"
    );
    let imported = onnx::import::import(&proto).unwrap();
    assert_eq!(imported.network, Network::R18);
    assert_eq!(imported.embedding_size, 512);
    let model = imported.backbone(&Device::flex()).unwrap();
    let b = relative(&burn_embed(&model, &images), &reference, 512);
    assert!(b < 1e-4, "imported burn model vs onnxruntime: {b}");

    // And the CLI does the same, reporting the repairs.
    let ckpt = dir.path().join("zoo.ckpt");
    let out = arcface()
        .args(["import", "--onnx"])
        .arg(&zoo)
        .arg("--out")
        .arg(&ckpt)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("as r18, 512-d"), "{stdout}");
    assert!(stdout.contains("spatial=0"), "{stdout}");
}

#[test]
fn torch_style_file_takes_normalised_input_and_imports_with_its_epsilon_and_scale() {
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = reference_file(dir.path(), "torch", [1, 1, 1, 1], [8, 16, 32, 64], 128);
    let images = random_images(2, 9);
    // No Sub/Mul inside: insightface feeds such a file (x − 127.5) / 127.5.
    let normalised: Vec<f32> = images.iter().map(|x| (x - 127.5) / 127.5).collect();
    let (reference, facts) = onnxruntime(&file, &normalised, dir.path());
    assert_eq!(facts["ir_version"], 4);

    // tract, given raw pixels, normalises them as insightface would.
    let tract = OnnxEmbedder::load(&file).unwrap();
    assert!(tract.prepared.input.normalized && tract.prepared.input.detected);
    assert!(
        tract
            .prepared
            .notes()
            .iter()
            .any(|n| n.contains("(x − 127.5) / 127.5")),
        "{:?}",
        tract.prepared.notes()
    );
    let t = relative(&tract.embed(&images).unwrap(), &reference, 128);
    assert!(
        t < 1e-5,
        "tract on raw pixels vs onnxruntime on normalised ones: {t}"
    );
    // Told the file takes raw pixels, it gets them as they are: another (wrong) answer.
    let raw = OnnxEmbedder::load_with(&file, Default::default(), InputConvention::Raw).unwrap();
    let r = relative(&raw.embed(&images).unwrap(), &reference, 128);
    assert!(r > 1e-2, "--onnx-input raw changes what goes in: {r}");

    let mut proto = onnx::load::read_model(&file).unwrap();
    let prepared = onnx::load::prepare(&mut proto, InputConvention::Auto).unwrap();
    assert!(prepared.repairs.is_empty());
    let imported = onnx::import::import(&proto).unwrap();
    assert_eq!(imported.network, Network::Tiny);
    for note in ["epsilon 0.00001", "folded into the stem convolution"] {
        assert!(
            imported.notes.iter().any(|n| n.contains(note)),
            "{note}: {:?}",
            imported.notes
        );
    }
    let model = imported.backbone(&Device::flex()).unwrap();
    let b = relative(&burn_embed(&model, &images), &reference, 128);
    assert!(b < 1e-4, "imported vs onnxruntime: {b}");
    // An unnormalised input cannot be carried by our backbone exactly: refused.
    let mut proto = onnx::load::read_model(&file).unwrap();
    onnx::load::prepare(&mut proto, InputConvention::Raw).unwrap();
    let e = onnx::import::import(&proto).err().unwrap().to_string();
    assert!(e.contains("unnormalised"), "{e}");
}

#[test]
fn import_export_import_round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let model = randomized(Network::Tiny, 128, 3);
    let first = onnx::backbone_to_onnx(&model, Batch::Fixed(2)).unwrap();
    let (_, dims) = onnx::signature::data_input(first.graph.as_ref().unwrap()).unwrap();
    assert_eq!(
        dims,
        [Some(2), Some(3), Some(112), Some(112)],
        "--batch 2 fixes the batch"
    );
    let imported = onnx::import::import(&first).unwrap();
    assert_eq!(imported.network, Network::Tiny);
    assert_eq!(
        imported.tensors,
        named_tensors(&model, ""),
        "import gives back every tensor bit for bit"
    );
    assert!(imported.notes.is_empty(), "{:?}", imported.notes);

    // Through the CLI: checkpoint → ONNX → checkpoint → ONNX, files equal.
    let ckpt = dir.path().join("a.ckpt");
    imported.checkpoint().save(&ckpt).unwrap();
    let run = |args: &[&str]| {
        let out = arcface().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let p = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    run(&["export", "--model", &p("a.ckpt"), "--onnx", &p("a.onnx")]);
    let stdout = run(&["import", "--onnx", &p("a.onnx"), "--out", &p("b.ckpt")]);
    assert!(stdout.contains("as tiny, 128-d"), "{stdout}");
    run(&["export", "--model", &p("b.ckpt"), "--onnx", &p("b.onnx")]);
    assert_eq!(
        std::fs::read(p("a.onnx")).unwrap(),
        std::fs::read(p("b.onnx")).unwrap()
    );
}

#[test]
fn bad_onnx_files_give_errors_that_name_the_file_or_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let fails = |args: &[&std::ffi::OsStr]| {
        let out = arcface().args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "{stderr}");
        stderr
    };
    // `arcface import` of the file `name`: its error message.
    let import_fails = |name: &str| {
        fails(&[
            "import".as_ref(),
            "--onnx".as_ref(),
            p(name).as_os_str(),
            "--out".as_ref(),
            p("x.ckpt").as_os_str(),
        ])
    };
    let model = randomized(Network::Tiny, 64, 1);
    let proto = onnx::backbone_to_onnx(&model, Batch::Dynamic).unwrap();
    let good = prost_bytes(&proto);
    // `proto` with the initializer `name` changed by `change`, written to `file`.
    let altered = |file: &str, name: &str, change: &dyn Fn(&mut tract_onnx::pb::TensorProto)| {
        let mut bad = proto.clone();
        let initializers = &mut bad.graph.as_mut().unwrap().initializer;
        change(initializers.iter_mut().find(|t| t.name == name).unwrap());
        std::fs::write(p(file), prost_bytes(&bad)).unwrap();
    };

    // Not protobuf at all, and a truncated file.
    std::fs::write(p("junk.onnx"), b"this is not a model").unwrap();
    std::fs::write(p("cut.onnx"), &good[..good.len() / 2]).unwrap();
    for name in ["junk.onnx", "cut.onnx"] {
        let e = import_fails(name);
        assert!(e.contains(name) && e.contains("not an ONNX model"), "{e}");
        assert!(!p("x.ckpt").exists());
    }

    // A weight with the wrong shape: the error names the tensor.
    altered("shape.onnx", "layer2.0.conv1.weight", &|t| {
        t.dims = vec![16, 8, 3]
    });
    let e = import_fails("shape.onnx");
    assert!(e.contains("layer2.0.conv1.weight"), "{e}");

    // Raw bytes that do not fill the dims.
    altered("bytes.onnx", "bn1.running_var", &|t| t.raw_data.truncate(6));
    let e = import_fails("bytes.onnx");
    assert!(e.contains("bn1.running_var"), "{e}");

    // Two outputs: which one is the embedding is not guessed.
    let mut two = proto.clone();
    let graph = two.graph.as_mut().unwrap();
    let mut extra = graph.output[0].clone();
    extra.name = "bn1.out".into();
    graph.output.push(extra);
    std::fs::write(p("two.onnx"), prost_bytes(&two)).unwrap();
    let e = import_fails("two.onnx");
    assert!(
        e.contains("two.onnx") && e.contains("2 outputs") && e.contains("`fc1`"),
        "{e}"
    );

    // A graph that is not an embedder (wrong input size) in eval.
    let mut small = proto.clone();
    if let Some(tract_onnx::pb::type_proto::Value::TensorType(t)) =
        small.graph.as_mut().unwrap().input[0]
            .r#type
            .as_mut()
            .unwrap()
            .value
            .as_mut()
    {
        let dims = &mut t.shape.as_mut().unwrap().dim;
        dims[2].value = Some(tract_onnx::pb::tensor_shape_proto::dimension::Value::DimValue(12));
    }
    std::fs::write(p("small.onnx"), prost_bytes(&small)).unwrap();
    let eval_small = |precision: &str| {
        fails(&[
            "eval".as_ref(),
            "--model".as_ref(),
            p("small.onnx").as_os_str(),
            "--bin".as_ref(),
            p("none.bin").as_os_str(),
            "--precision".as_ref(),
            precision.as_ref(),
        ])
    };
    let e = eval_small("fp32");
    assert!(
        e.contains("small.onnx") && e.contains("[N,3,112,112]"),
        "{e}"
    );
    // In bf16 the file goes to the import, which says why it runs no other way.
    let e = eval_small("bf16");
    assert!(
        e.contains("small.onnx") && e.contains("does not import") && e.contains("[N,3,112,112]"),
        "{e}"
    );
}

fn prost_bytes(model: &tract_onnx::pb::ModelProto) -> Vec<u8> {
    use prost::Message;
    model.encode_to_vec()
}

#[test]
fn eval_scores_an_onnx_file_as_its_imported_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let config = arcface::data::synth::SynthConfig::new(10, 2, 60, 4);
    arcface::data::synth::val_pairs(&config)
        .write(Path::new(&p("val.bin")))
        .unwrap();
    let run_noting = |args: &[&str]| {
        let out = arcface().args(args).output().unwrap();
        let notes = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?}: {notes}");
        let json = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or(json!(null));
        (json, notes)
    };
    let run = |args: &[&str]| run_noting(args).0;
    run(&[
        "export",
        "--config",
        &format!("{}/configs/tiny.toml", env!("CARGO_MANIFEST_DIR")),
        "--seed",
        "3",
        "--onnx",
        &p("m.onnx"),
    ]);
    run(&["import", "--onnx", &p("m.onnx"), "--out", &p("m.ckpt")]);
    let a = run(&[
        "eval",
        "--model",
        &p("m.onnx"),
        "--bin",
        &p("val.bin"),
        "--json",
    ]);
    let b = run(&[
        "eval",
        "--model",
        &p("m.ckpt"),
        "--bin",
        &p("val.bin"),
        "--json",
    ]);
    let (a, b) = (&a["targets"][0], &b["targets"][0]);
    assert_eq!(a["pairs"], 60);
    assert_eq!(a["accuracy"], b["accuracy"]);
    let xnorm = |v: &serde_json::Value| v["xnorm"].as_f64().unwrap();
    let (xa, xb) = (xnorm(a), xnorm(b));
    assert!((xa - xb).abs() <= 1e-4 * xb, "XNorm {xa} vs {xb}");

    // In bf16 tract cannot run the file: its weights run in our backbone, as the checkpoint's
    // do, so both give the same numbers, and those are bf16's, not fp32's.
    let bf16 = |model: &str| {
        let (model, bin) = (p(model), p("val.bin"));
        let (json, notes) = run_noting(&[
            "eval",
            "--model",
            &model,
            "--bin",
            &bin,
            "--precision",
            "bf16",
            "--json",
        ]);
        (json["targets"][0].clone(), notes)
    };
    let ((onnx, notes), (ckpt, _)) = (bf16("m.onnx"), bf16("m.ckpt"));
    assert!(notes.contains("runs as our tiny backbone"), "{notes}");
    assert_eq!(onnx, ckpt);
    let x16 = xnorm(&onnx);
    // bf16 keeps 8 bits of mantissa: the norms move, by far less than they are.
    assert!(
        x16 != xb && (x16 - xb).abs() <= 0.02 * xb,
        "XNorm bf16 {x16} vs fp32 {xb}"
    );
}

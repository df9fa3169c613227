//! The files arcface_torch users have, written by PyTorch itself (tests/reference/
//! arcface_torch.py, run with the torch venv's Python): its iresnet18 and MobileFaceNet as
//! `torch.save`'s backbone.pth (zip and legacy formats) and as torch2onnx.py exports it (BatchNorm folded, no
//! normalisation inside). Each way in gives PyTorch's and onnxruntime's embedding of a real
//! photo, and our safetensors export goes back into arcface_torch's model with strict=True.
//! And insightface's validation numbers on a JPEG .bin, pixels decoded as PIL decodes them.

mod common;

use std::path::PathBuf;

use serde_json::json;

use arcface::data::image::{decode_rgb, to_chw};
use common::{arcface, mxnet_reference, read_f32, run_reference, torch_reference, write_f32};

fn photo() -> PathBuf {
    let path = common::root().join("models/photos/Tom_Hanks_54745.png");
    assert!(
        path.exists(),
        "{}: run scripts/fetch-models.sh (`bash .ci/run` does)",
        path.display()
    );
    path
}

fn normalised(v: &[f64]) -> Vec<f64> {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.iter().map(|x| x / n).collect()
}

/// Relative L2 distance of two embeddings after L2 normalisation (what infer prints).
fn distance(a: &[f64], b: &[f64]) -> f64 {
    let (a, b) = (normalised(a), normalised(b));
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn run(args: &[&str]) -> (String, String) {
    let out = arcface().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?}: {stderr}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

/// `arcface infer PHOTO --model MODEL --no-detect --json`: the embedding and the model facts.
fn infer(model: &str, extra: &[&str]) -> (Vec<f64>, serde_json::Value) {
    let photo = photo();
    let mut args = vec![
        "infer",
        photo.to_str().unwrap(),
        "--model",
        model,
        "--no-detect",
        "--json",
    ];
    args.extend(extra);
    let (stdout, _) = run(&args);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    (
        floats(&json["images"][0]["faces"][0]["embedding"]),
        json["model"].clone(),
    )
}

#[test]
fn arcface_torch_r18_as_pth_onnx_and_back_embeds_as_pytorch_and_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let image = photo_f32(dir.path());

    let made = torch_reference(
        "arcface_torch.py",
        &json!({"op": "make", "network": "r18", "dir": dir.path(), "seed": 7,
                "images": p("image.f32"), "n": 1}),
    );
    let torch = floats(&made["embeddings"][0]);
    assert!(
        made["conv_with_bias"].as_u64().unwrap() > 0
            && !made["ops"].as_array().unwrap().contains(&json!("Sub")),
        "the exporter folded BatchNorm and left the normalisation outside: {made}"
    );

    let d = distance(&onnxruntime_on_normalised(dir.path(), &image), &torch);
    assert!(d < 1e-4, "onnxruntime vs PyTorch: {d}");

    // The ONNX file run by tract: its convention found and said.
    let (ours, model) = infer(&p("model.onnx"), &[]);
    assert_eq!(model["input"], "normalized", "{model}");
    assert_eq!(model["input_detected"], true);
    let d = distance(&ours, &torch);
    assert!(d < 1e-4, "infer --model model.onnx vs PyTorch: {d}");
    // Overridden, it is fed raw pixels: not the model's embedding any more.
    let (raw, _) = infer(&p("model.onnx"), &["--onnx-input", "raw"]);
    assert!(distance(&raw, &torch) > 1e-2);

    // import --onnx (BatchNorm folded, input scale into the stem) and import --pth, zip and
    // legacy formats.
    let (stdout, _) = run(&[
        "import",
        "--onnx",
        &p("model.onnx"),
        "--out",
        &p("onnx.ckpt"),
    ]);
    assert!(
        stdout.contains("BatchNorm folded") && stdout.contains("as r18, 512-d"),
        "{stdout}"
    );
    for (file, ckpt) in [
        ("backbone.pth", "pth.ckpt"),
        ("backbone_legacy.pth", "legacy.ckpt"),
    ] {
        let (stdout, _) = run(&["import", "--pth", &p(file), "--out", &p(ckpt)]);
        assert!(stdout.contains("as r18, 512-d"), "{stdout}");
    }
    for ckpt in ["onnx.ckpt", "pth.ckpt", "legacy.ckpt"] {
        let (ours, _) = infer(&p(ckpt), &[]);
        let d = distance(&ours, &torch);
        assert!(d < 1e-4, "{ckpt} vs PyTorch: {d}");
    }
    // --network must be what the file holds.
    let out = arcface()
        .args(["import", "--pth", &p("backbone.pth"), "--network", "r50"])
        .args(["--out", &p("r50.ckpt")])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("holds an r18"), "{e}");

    // Back to PyTorch: strict loading into arcface_torch's model, the same embedding.
    run(&[
        "export",
        "--model",
        &p("pth.ckpt"),
        "--safetensors",
        &p("back.safetensors"),
    ]);
    let back = torch_reference(
        "arcface_torch.py",
        &json!({"op": "load", "network": "r18", "safetensors": p("back.safetensors"),
                "images": p("image.f32"), "n": 1}),
    );
    let d = distance(&floats(&back["embeddings"][0]), &torch);
    assert!(
        d < 1e-4,
        "exported safetensors in PyTorch vs the original: {d}"
    );
}

/// onnxruntime's embedding by `dir`/model.onnx (torch2onnx.py's export) of the raw RGB
/// `image`, fed as insightface feeds it: (x − 127.5)/127.5.
fn onnxruntime_on_normalised(dir: &std::path::Path, image: &[f32]) -> Vec<f64> {
    let p = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let fed: Vec<f32> = image.iter().map(|x| (x - 127.5) / 127.5).collect();
    write_f32(&dir.join("fed.f32"), &fed);
    run_reference(
        "onnx_models.py",
        &json!({"op": "check", "model": p("model.onnx"), "input": p("fed.f32"), "n": 1,
                "output": p("ort_torch.f32")}),
    );
    read_f32(&dir.join("ort_torch.f32"))
        .iter()
        .map(|&x| x as f64)
        .collect()
}

/// `arcface import FLAG FILE` says `said` and gives a checkpoint (beside FILE) whose
/// embedding of the photo is within 1e-4 of `reference`.
fn import_embeds_as(reference: &[f64], flag: &str, file: &str, said: &str) {
    let ckpt = format!("{file}.ckpt");
    let (stdout, _) = run(&["import", flag, file, "--out", &ckpt]);
    assert!(stdout.contains(said), "{file}: {stdout}");
    let (ours, _) = infer(&ckpt, &[]);
    let d = distance(&ours, reference);
    assert!(d < 1e-4, "{file} imported vs the reference: {d}");
}

/// The photo as raw RGB [3,112,112] in `dir`/image.f32.
fn photo_f32(dir: &std::path::Path) -> Vec<f32> {
    let rgb = decode_rgb(&std::fs::read(photo()).unwrap()).unwrap();
    assert_eq!(rgb.dimensions(), (112, 112), "an aligned crop");
    let mut image = vec![0f32; 3 * 112 * 112];
    to_chw(&rgb, false, &mut image);
    write_f32(&dir.join("image.f32"), &image);
    image
}

/// arcface_torch's MobileFaceNet (get_mbf) with trained-like weights, as backbone.pth and as
/// torch2onnx.py exports it: onnxruntime and `infer` on the ONNX file (its grouped convolutions
/// run by tract), `import --pth` (both formats), our own ONNX export (opset 8, grouped Conv)
/// run by onnxruntime, `import --onnx` of both ONNX files, and the safetensors export loaded
/// strict into PyTorch: each gives PyTorch's embedding of the photo within 1e-4.
#[test]
fn arcface_torch_mbf_as_pth_and_onnx_and_back_embeds_as_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let image = photo_f32(dir.path());
    let made = torch_reference(
        "arcface_torch.py",
        &json!({"op": "make", "network": "mbf", "dir": dir.path(), "seed": 5,
                "images": p("image.f32"), "n": 1}),
    );
    let torch = floats(&made["embeddings"][0]);
    let d = distance(&onnxruntime_on_normalised(dir.path(), &image), &torch);
    assert!(
        d < 1e-4,
        "onnxruntime on torch2onnx.py's mbf vs PyTorch: {d}"
    );

    let (ours, model) = infer(&p("model.onnx"), &[]);
    assert_eq!(model["input"], "normalized", "{model}");
    let d = distance(&ours, &torch);
    assert!(d < 1e-4, "infer --model model.onnx (mbf) vs PyTorch: {d}");

    for file in ["backbone.pth", "backbone_legacy.pth"] {
        import_embeds_as(&torch, "--pth", &p(file), "as mbf, 512-d");
    }

    let ckpt = p("backbone.pth.ckpt");
    run(&["export", "--model", &ckpt, "--onnx", &p("ours.onnx")]);
    let facts = run_reference(
        "onnx_models.py",
        &json!({"op": "check", "model": p("ours.onnx"), "input": p("image.f32"), "n": 1,
                "output": p("ort.f32")}),
    );
    assert_eq!(facts["opsets"], json!([["", 8]]), "{facts}");
    let ort: Vec<f64> = read_f32(&dir.path().join("ort.f32"))
        .iter()
        .map(|&x| x as f64)
        .collect();
    let d = distance(&ort, &torch);
    assert!(
        d < 1e-4,
        "our mbf ONNX export in onnxruntime vs PyTorch: {d}"
    );

    // Both ONNX files import: torch2onnx.py's (BatchNorm folded, the FC layer a MatMul) and
    // ours (BatchNorm kept, Gemm with a zero bias).
    for file in ["model.onnx", "ours.onnx"] {
        import_embeds_as(&torch, "--onnx", &p(file), "as mbf, 512-d");
    }

    run(&[
        "export",
        "--model",
        &ckpt,
        "--safetensors",
        &p("back.safetensors"),
    ]);
    let back = torch_reference(
        "arcface_torch.py",
        &json!({"op": "load", "network": "mbf", "safetensors": p("back.safetensors"),
                "images": p("image.f32"), "n": 1}),
    );
    let d = distance(&floats(&back["embeddings"][0]), &torch);
    assert!(
        d < 1e-4,
        "exported mbf safetensors in PyTorch vs the original: {d}"
    );
}

#[test]
fn bad_pth_files_are_refused_naming_the_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    torch_reference("arcface_torch.py", &json!({"op": "bad", "dir": dir.path()}));
    std::fs::write(dir.path().join("junk.pth"), b"not a pickle at all").unwrap();
    for (file, expected) in [
        ("linear.pth", "no `conv1.weight`"),
        ("not_a_state_dict.pth", "not a state dict"),
        ("truncated.pth", "not a PyTorch file"),
        ("junk.pth", "not a PyTorch file"),
        ("missing.pth", "`layer3.1.bn2.running_var` is missing"),
        (
            "wrong_shape.pth",
            "`layer2.0.conv1.weight` has shape [128, 64, 1, 1]",
        ),
    ] {
        let out = arcface()
            .args(["import", "--pth", &p(file), "--out", &p("x.ckpt")])
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file} imported");
        assert!(e.contains(file) && e.contains(expected), "{file}: {e}");
        assert!(!e.contains("panicked"), "{e}");
        assert!(!dir.path().join("x.ckpt").exists());
    }
    // The good one imports.
    let (stdout, _) = run(&["import", "--pth", &p("good.pth"), "--out", &p("x.ckpt")]);
    assert!(stdout.contains("as r18"), "{stdout}");
}

#[test]
fn parameter_counts_equal_pytorch_for_arcface_torchs_backbones() {
    let networks = ["r50", "r100", "r200", "mbf", "mbf_large"];
    let counts = torch_reference(
        "arcface_torch.py",
        &json!({"op": "count", "networks": networks}),
    );
    let dir = tempfile::tempdir().unwrap();
    let large = dir.path().join("mbf_large.toml");
    std::fs::write(&large, "network = \"mbf_large\"\n").unwrap();
    for name in networks {
        let config = match name {
            "mbf_large" => large.to_string_lossy().into_owned(),
            _ => format!("configs/{name}.toml"),
        };
        let config = config.as_str();
        let (stdout, _) = run(&["summary", "--config", config, "--device", "cpu"]);
        let line = stdout
            .lines()
            .find(|l| l.starts_with("total:"))
            .unwrap_or_else(|| panic!("{stdout}"));
        // "total: 118,833,920 parameters (118,833,408 trainable), …": PyTorch's count
        // includes the fixed γ of `features` (requires_grad=False is still a parameter).
        let ours: u64 = line["total: ".len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .replace(',', "")
            .parse()
            .unwrap();
        assert_eq!(ours, counts[name].as_u64().unwrap(), "{name}: {line}");
    }
}

#[test]
fn a_jpeg_bin_scores_as_verification_py_on_libjpeg_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let photos: Vec<String> = [
        "obama.jpg",
        "biden.jpg",
        "grace_hopper.jpg",
        "astronaut.png",
    ]
    .iter()
    .map(|f| photo().with_file_name(f).to_string_lossy().into_owned())
    .collect();
    run_reference(
        "jpeg_bin.py",
        &json!({"op": "write", "bin": p("jpeg.bin"), "photos": photos, "pairs": 60, "seed": 4}),
    );
    run(&[
        "export",
        "--config",
        "configs/tiny.toml",
        "--seed",
        "3",
        "--onnx",
        &p("tiny.onnx"),
    ]);
    let reference = run_reference(
        "jpeg_bin.py",
        &json!({"op": "evaluate", "bin": p("jpeg.bin"), "model": p("tiny.onnx")}),
    );
    let (stdout, _) = run(&[
        "eval",
        "--model",
        &p("tiny.onnx"),
        "--bin",
        &p("jpeg.bin"),
        "--json",
    ]);
    let ours: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let ours = &ours["targets"][0];
    let get = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap();
    for key in ["accuracy", "std", "threshold"] {
        assert!(
            (get(ours, key) - get(&reference, key)).abs() < 1e-9,
            "{key}: ours {ours}, verification.py {reference}"
        );
    }
    let x = (get(ours, "xnorm") / get(&reference, "xnorm") - 1.0).abs();
    assert!(x < 1e-4, "XNorm: ours {ours}, verification.py {reference}");
}

#[test]
fn an_lresnet_exported_by_mxnet_runs_and_imports_as_mxnet_computes_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    photo_f32(dir.path());
    let made = mxnet_reference(
        "mxnet_export.py",
        &json!({"dir": dir.path(), "images": p("image.f32"), "n": 1, "seed": 3}),
    );
    for op in ["Shape", "Slice", "Concat", "Reshape", "Identity"] {
        assert!(
            made["ops"].as_array().unwrap().contains(&json!(op)),
            "MXNet's exporter writes {op} around the FC layer: {made}"
        );
    }
    let mxnet = floats(&made["embeddings"][0]);

    let (ours, model) = infer(&p("mxnet.onnx"), &[]);
    assert_eq!(model["input"], "raw", "Sub and Mul inside: {model}");
    let d = distance(&ours, &mxnet);
    assert!(d < 1e-4, "tract on MXNet's export vs MXNet: {d}");
    let (stdout, _) = run(&["import", "--onnx", &p("mxnet.onnx"), "--out", &p("mx.ckpt")]);
    assert!(stdout.contains("as tiny, 128-d"), "{stdout}");
    let (ours, _) = infer(&p("mx.ckpt"), &[]);
    let d = distance(&ours, &mxnet);
    assert!(d < 1e-4, "imported MXNet export vs MXNet: {d}");
}

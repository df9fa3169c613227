//! IJB-B/C 1:1 verification (`arcface eval --ijb`) against tests/reference/ijb.py, a numpy +
//! scikit-learn implementation of arcface_torch's eval_ijbc.py: TAR at each FAR and AUC within
//! 1e-9 on the same image features, in each of its modes; the alignment of rotated and scaled
//! loose crops against skimage's SimilarityTransform + OpenCV's warpAffine; bad meta files.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use arcface::data::dataset::RecDataset;
use arcface::data::image::decode_face;
use arcface::data::synth::{SynthConfig, generate};
use arcface::infer::TEMPLATE;
use arcface::infer::align::{Similarity, warp};

const IDENTITIES: usize = 6;
/// Side of the loose crops.
const SIDE: usize = 160;

/// Face → crop: rotation `degrees`, `scale`, the face's centre (56, 56) to the crop's.
fn placement(degrees: f64, scale: f64) -> Similarity {
    let (a, b) = (
        scale * degrees.to_radians().cos(),
        scale * degrees.to_radians().sin(),
    );
    let c = SIDE as f64 / 2.0;
    Similarity {
        a,
        b,
        tx: c - (a * 56.0 - b * 56.0),
        ty: c - (b * 56.0 + a * 56.0),
    }
}

/// An IJB-C folder of 6 synthetic identities × 8 images: per identity two templates of two
/// media of two images; crops rotated and scaled into 160×160 (landmarks moved with them);
/// detector scores from 0.60 to 0.98; every pair of templates.
fn ijb_folder(root: &Path) -> PathBuf {
    let faces = root.join("faces");
    generate(
        &faces,
        &SynthConfig::new(IDENTITIES, 8, 10, 13),
        &indicatif::ProgressBar::hidden(),
    )
    .unwrap();
    let data = RecDataset::open(&faces).unwrap();
    let dir = root.join("IJBC");
    std::fs::create_dir_all(dir.join("meta")).unwrap();
    std::fs::create_dir_all(dir.join("loose_crop")).unwrap();
    let (mut media_lines, mut point_lines) = (String::new(), String::new());
    let mut seen = [0usize; IDENTITIES];
    let mut template_of = Vec::new();
    for i in 0..data.len() {
        let sample = data.sample(i).unwrap();
        let id = sample.label as usize;
        let k = seen[id];
        seen[id] += 1;
        let template = 10 * id + k / 4 + 1;
        let media = 100 * id + k / 2;
        let (degrees, scale) = [(0.0, 1.0), (17.0, 1.3), (-24.0, 0.85), (8.0, 1.15)][i % 4];
        let place = placement(degrees, scale);
        let face = decode_face(&sample.image).unwrap();
        let pixels = warp(&face, &place, SIDE);
        let raw: Vec<u8> = pixels
            .iter()
            .flat_map(|p| p.map(|v| v.round().clamp(0.0, 255.0) as u8))
            .collect();
        let name = format!("{i}.png");
        image::RgbImage::from_raw(SIDE as u32, SIDE as u32, raw)
            .unwrap()
            .save(dir.join("loose_crop").join(&name))
            .unwrap();
        let points: Vec<String> = TEMPLATE
            .iter()
            .flat_map(|p| {
                let [x, y] = place.apply([p[0] as f64, p[1] as f64]);
                [format!("{x:.3}"), format!("{y:.3}")]
            })
            .collect();
        let score = 0.60 + 0.38 * ((i * 7) % 11) as f64 / 10.0;
        media_lines.push_str(&format!("{name} {template} {media}\n"));
        point_lines.push_str(&format!("{name} {} {score:.4}\n", points.join(" ")));
        template_of.push((template, id));
    }
    template_of.sort();
    template_of.dedup();
    let mut pairs = String::new();
    for (x, &(t1, i1)) in template_of.iter().enumerate() {
        for &(t2, i2) in &template_of[x + 1..] {
            pairs.push_str(&format!("{t1} {t2} {}\n", u8::from(i1 == i2)));
        }
    }
    std::fs::write(dir.join("meta/ijbc_face_tid_mid.txt"), media_lines).unwrap();
    std::fs::write(dir.join("meta/ijbc_name_5pts_score.txt"), point_lines).unwrap();
    std::fs::write(dir.join("meta/ijbc_template_pair_label.txt"), pairs).unwrap();
    dir
}

fn run(args: &[&str]) -> std::process::Output {
    common::arcface().args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{args:?}:\n{text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The tiny config's untrained network as ONNX, in `dir`.
fn tiny_onnx(dir: &Path) -> PathBuf {
    let model = dir.join("tiny.onnx");
    let config = common::root().join("configs/tiny.toml");
    ok(&[
        "export",
        "--config",
        config.to_str().unwrap(),
        "--onnx",
        model.to_str().unwrap(),
    ]);
    model
}

fn reference(args: &[&str]) -> serde_json::Value {
    let out = Command::new(common::python())
        .arg(common::root().join("tests/reference/ijb.py"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ijb.py {args:?} (numpy, scikit-learn, scikit-image, OpenCV: `bash .ci/run` installs them):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

#[test]
fn ijb_verification_equals_eval_ijbc_and_aligns_as_opencv() {
    let root = tempfile::tempdir().unwrap();
    let dir = ijb_folder(root.path());
    let model = tiny_onnx(root.path());
    let features = root.path().join("features.npy");
    let roc = root.path().join("roc.png");
    let d = dir.to_str().unwrap();
    let out = ok(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--ijb",
        d,
        "--target",
        "IJBC",
        "--json",
        "--save-features",
        features.to_str().unwrap(),
        "--roc",
        roc.to_str().unwrap(),
        "--batch-size",
        "16",
    ]);
    let ours: serde_json::Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
    let target = &ours["targets"][0];
    assert_eq!(target["name"], "IJBC");
    assert_eq!(target["images"], 48);
    assert_eq!(target["templates"], 12);
    assert_eq!(target["pairs"], 66);
    assert!(image::open(&roc).is_ok(), "the ROC picture");
    println!("{target}");

    // Every mode of eval_ijbc.py on the saved features, ours from --features.
    for flags in [
        &[][..],
        &["--no-flip"],
        &["--no-norm"],
        &["--no-detector-score"],
        &["--no-flip", "--no-norm", "--no-detector-score"],
    ] {
        let mut args = vec![
            "eval",
            "--ijb",
            d,
            "--features",
            features.to_str().unwrap(),
            "--json",
        ];
        args.extend_from_slice(flags);
        let out = ok(&args);
        let ours: serde_json::Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
        let ours = &ours["targets"][0];
        let mut ref_args = vec!["verify", d, "ijbc", features.to_str().unwrap()];
        ref_args.extend_from_slice(flags);
        let want = reference(&ref_args);
        assert_eq!(ours["templates"], want["templates"]);
        let close = |a: &serde_json::Value, b: &serde_json::Value, what: &str| {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!(
                (a - b).abs() <= 1e-9,
                "{flags:?} {what}: ours {a}, eval_ijbc {b}"
            );
        };
        close(&ours["auc"], &want["auc"], "AUC");
        for key in ["1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1"] {
            close(&ours["tar_at_far"][key], &want["tar_at_far"][key], key);
        }
        if flags.is_empty() {
            // The default mode's numbers are those of the embedding run.
            assert_eq!(ours, target);
        }
    }

    // Alignment: ours against skimage + OpenCV on the same crops and landmarks.
    let aligned = root.path().join("aligned.npy");
    reference(&["align", d, "ijbc", aligned.to_str().unwrap()]);
    let (rows, cols, theirs) = arcface::eval::ijb::npy::read(&aligned).unwrap();
    assert_eq!((rows, cols), (48, 112 * 112 * 3));
    let set = arcface::eval::ijb::IjbSet::open(&dir, "IJBC").unwrap();
    let mut worst = 0.0f64;
    for i in 0..rows {
        let image = arcface::infer::read_image(&set.crop_path(i)).unwrap();
        let ours = arcface::infer::align_face(&image, &set.landmarks[i]).unwrap();
        let mean: f64 = ours
            .as_raw()
            .iter()
            .zip(&theirs[i * cols..(i + 1) * cols])
            .map(|(&a, &b)| (a as f64 - b as f64).abs())
            .sum::<f64>()
            / cols as f64;
        worst = worst.max(mean);
    }
    println!("alignment: mean difference up to {worst:.3} grey levels");
    assert!(
        worst <= 1.0,
        "mean |ours − OpenCV| up to {worst} grey levels"
    );
}

#[test]
fn bad_ijb_folders_name_the_file_and_line() {
    let root = tempfile::tempdir().unwrap();
    let dir = ijb_folder(root.path());
    let d = dir.to_str().unwrap();
    let model = tiny_onnx(root.path());
    let eval = |expect: &[&str]| {
        let out = run(&["eval", "--model", model.to_str().unwrap(), "--ijb", d]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{err}");
        for e in expect {
            assert!(err.contains(e), "expected `{e}` in: {err}");
        }
    };
    let pairs = dir.join("meta/ijbc_template_pair_label.txt");
    let kept = std::fs::read_to_string(&pairs).unwrap();
    std::fs::write(&pairs, format!("{kept}11 99 0\n")).unwrap();
    eval(&[
        "ijbc_template_pair_label.txt line 67",
        "template 99 has no crop",
    ]);
    std::fs::write(&pairs, format!("{kept}11 12\n")).unwrap();
    eval(&[
        "ijbc_template_pair_label.txt line 67",
        "2 fields, expected 3",
    ]);
    std::fs::remove_file(&pairs).unwrap();
    eval(&["ijbc_template_pair_label.txt", "cannot read"]);
    std::fs::write(&pairs, &kept).unwrap();

    let points = dir.join("meta/ijbc_name_5pts_score.txt");
    let kept = std::fs::read_to_string(&points).unwrap();
    let mut lines: Vec<String> = kept.lines().map(str::to_string).collect();
    lines[3] = lines[3].replacen(' ', " x", 2);
    std::fs::write(&points, lines.join("\n")).unwrap();
    eval(&["ijbc_name_5pts_score.txt line 4", "is not a number"]);
    std::fs::write(&points, &kept).unwrap();

    let crop = dir.join("loose_crop/5.png");
    std::fs::write(&crop, b"not an image").unwrap();
    eval(&["5.png"]);
}

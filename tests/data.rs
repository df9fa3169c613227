//! synth, pack, pack-pairs, inspect and the loader, through the library and the CLI.

mod common;

use std::path::Path;
use std::sync::Arc;

use arcface::data::bin::PairSet;
use arcface::data::dataset::RecDataset;
use arcface::data::image::decode_face;
use arcface::data::loader::{Cursor, Loader, LoaderConfig, Plan};
use arcface::data::synth::{SynthConfig, generate};
use arcface::eval::verify::raw_pixel_verification;
use common::{arcface, root};
use image::{Rgb, RgbImage};
use serde_json::Value;

fn synth(dir: &Path, identities: usize, per: usize, pairs: usize, seed: u64) {
    generate(
        dir,
        &SynthConfig::new(identities, per, pairs, seed),
        &indicatif::ProgressBar::hidden(),
    )
    .unwrap();
}

fn inspect_json(args: &[&str]) -> (bool, Value) {
    let out = arcface()
        .arg("inspect")
        .args(args)
        .arg("--json")
        .current_dir(root())
        .output()
        .unwrap();
    (
        out.status.success(),
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
    )
}

#[test]
fn synth_is_deterministic_by_seed() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    synth(a.path(), 6, 3, 10, 5);
    synth(b.path(), 6, 3, 10, 5);
    synth(c.path(), 6, 3, 10, 6);
    for file in ["train.rec", "train.idx", "property", "synth_val.bin"] {
        let read = |d: &tempfile::TempDir| std::fs::read(d.path().join(file)).unwrap();
        assert_eq!(
            read(&a),
            read(&b),
            "{file} differs between two runs with one seed"
        );
        if file != "property" && file != "train.idx" {
            assert_ne!(read(&a), read(&c), "{file} is the same for two seeds");
        }
    }
}

#[test]
fn synth_writes_insightface_layout() {
    let dir = tempfile::tempdir().unwrap();
    synth(dir.path(), 7, 4, 20, 1);
    let (ok, v) = inspect_json(&[dir.path().to_str().unwrap(), "--verify", "--labels"]);
    assert!(ok, "{v}");
    assert_eq!(v["kind"], "rec");
    assert_eq!(v["images"], 28);
    assert_eq!(v["identities"], 7);
    assert_eq!(v["image_size"], serde_json::json!([112, 112]));
    assert_eq!(v["decoded"], 28);
    let labels: Vec<u64> = v["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_u64().unwrap())
        .collect();
    assert_eq!(labels, (0..28).map(|i| i / 4).collect::<Vec<u64>>());
    let (ok, v) = inspect_json(&[
        dir.path().join("synth_val.bin").to_str().unwrap(),
        "--verify",
    ]);
    assert!(ok, "{v}");
    assert_eq!(
        v,
        serde_json::json!({"kind": "bin", "pairs": 20, "same": 10, "decoded": 40, "errors": []})
    );
}

#[test]
fn raw_pixels_verify_poorly_on_synth() {
    let dir = tempfile::tempdir().unwrap();
    synth(dir.path(), 2, 1, 600, 2048);
    let set = PairSet::read(&dir.path().join("synth_val.bin")).unwrap();
    let v = raw_pixel_verification(&set).unwrap();
    println!(
        "raw-pixel baseline on 600 synthetic pairs: {:.4} ± {:.4} (threshold {:.2})",
        v.accuracy, v.std, v.threshold
    );
    assert!(
        v.accuracy <= 0.75,
        "raw pixels verify too well: {}",
        v.accuracy
    );
}

/// DIR/<identity>/<images>: a 112×112 JPEG (kept byte for byte), a 150×120 PNG (resized and
/// re-encoded) per identity.
fn identity_folders(root: &Path, identities: usize) -> Vec<Vec<u8>> {
    let mut jpegs = Vec::new();
    for id in 0..identities {
        let folder = root.join(format!("person_{id:02}"));
        std::fs::create_dir_all(&folder).unwrap();
        let img = RgbImage::from_fn(112, 112, |x, y| {
            Rgb([(x * 2) as u8, (y * 2) as u8, (id * 40) as u8])
        });
        let jpeg = arcface::data::image::encode_jpeg(&img, 90);
        std::fs::write(folder.join("a.jpg"), &jpeg).unwrap();
        jpegs.push(jpeg);
        let png = RgbImage::from_fn(150, 120, |x, _| Rgb([x as u8, 50, (id * 40) as u8]));
        png.save(folder.join("b.png")).unwrap();
    }
    jpegs
}

#[test]
fn pack_then_inspect() {
    let (src, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let jpegs = identity_folders(src.path(), 3);
    let status = arcface()
        .args([
            "pack",
            "--images",
            src.path().to_str().unwrap(),
            "--out",
            out.path().to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let (ok, v) = inspect_json(&[out.path().to_str().unwrap(), "--verify", "--labels"]);
    assert!(ok, "{v}");
    assert_eq!(v["images"], 6);
    assert_eq!(v["identities"], 3);
    assert_eq!(v["labels"], serde_json::json!([0, 0, 1, 1, 2, 2]));
    let ds = RecDataset::open(out.path()).unwrap();
    assert_eq!(
        ds.sample(0).unwrap().image,
        jpegs[0],
        "a 112×112 JPEG is stored as it is"
    );
    let resized = decode_face(&ds.sample(1).unwrap().image).unwrap();
    assert_eq!(resized.dimensions(), (112, 112));
    assert!(!out.path().join("train.rec.tmp").exists());
}

#[test]
fn pack_names_an_unreadable_image() {
    let (src, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    identity_folders(src.path(), 2);
    std::fs::write(
        src.path().join("person_01/broken.jpg"),
        b"not a jpeg at all",
    )
    .unwrap();
    let o = arcface()
        .args([
            "pack",
            "--images",
            src.path().to_str().unwrap(),
            "--out",
            out.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("broken.jpg") && err.contains("not an image"),
        "{err}"
    );
    assert!(
        !out.path().join("train.rec").exists(),
        "no half-written dataset"
    );
}

#[test]
fn pack_pairs_then_inspect_and_python_reads_it() {
    let (src, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    identity_folders(src.path(), 2);
    let pairs = out.path().join("pairs.txt");
    std::fs::write(
        &pairs,
        "person_00/a.jpg\tperson_00/b.png\t1\nperson_00/a.jpg\tperson_01/a.jpg\t0\n",
    )
    .unwrap();
    let bin = out.path().join("mine.bin");
    let status = arcface()
        .args([
            "pack-pairs",
            "--pairs",
            pairs.to_str().unwrap(),
            "--images",
            src.path().to_str().unwrap(),
        ])
        .args(["--out", bin.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let (ok, v) = inspect_json(&[bin.to_str().unwrap(), "--verify"]);
    assert!(ok, "{v}");
    assert_eq!(
        v,
        serde_json::json!({"kind": "bin", "pairs": 2, "same": 1, "decoded": 4, "errors": []})
    );
    let py = std::process::Command::new(common::python())
        .arg(root().join("tests/reference/formats.py"))
        .args(["read-bin", bin.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let read: Value = serde_json::from_slice(&py.stdout).unwrap();
    assert_eq!(read["issame"], serde_json::json!([true, false]));
}

#[test]
fn pack_pairs_rejects_a_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = dir.path().join("pairs.txt");
    std::fs::write(&pairs, "a.jpg\tb.jpg\tyes\n").unwrap();
    let o = arcface()
        .args([
            "pack-pairs",
            "--pairs",
            pairs.to_str().unwrap(),
            "--images",
            ".",
        ])
        .args(["--out", dir.path().join("x.bin").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("pairs.txt: line 1") && err.contains("\"yes\""),
        "{err}"
    );
}

#[test]
fn inspect_reports_a_record_that_is_not_an_image() {
    let dir = tempfile::tempdir().unwrap();
    synth(dir.path(), 3, 2, 10, 1);
    // Overwrite the JPEG start of key 3 (past its 8-byte part header and 24-byte IRHeader).
    let idx = arcface::data::recordio::read_index(&dir.path().join("train.idx")).unwrap();
    let offset = idx.iter().find(|(k, _)| *k == 3).unwrap().1 as usize;
    let mut rec = std::fs::read(dir.path().join("train.rec")).unwrap();
    rec[offset + 32..offset + 40].copy_from_slice(b"garbage!");
    std::fs::write(dir.path().join("train.rec"), rec).unwrap();
    let (ok, v) = inspect_json(&[dir.path().to_str().unwrap(), "--verify"]);
    assert!(!ok);
    assert_eq!(v["decoded"], 5);
    let errors = v["errors"].to_string();
    assert!(
        errors.contains("key 3") && errors.contains("not an image"),
        "{errors}"
    );
    // Without --verify the headers are fine.
    assert!(inspect_json(&[dir.path().to_str().unwrap()]).0);
}

#[test]
fn inspect_fails_on_a_missing_property_and_an_odd_bin() {
    let dir = tempfile::tempdir().unwrap();
    synth(dir.path(), 3, 2, 10, 1);
    std::fs::remove_file(dir.path().join("property")).unwrap();
    let (ok, v) = inspect_json(&[dir.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(v["errors"].to_string().contains("property"), "{v}");

    let odd = dir.path().join("odd.bin");
    let set = PairSet::read(&dir.path().join("synth_val.bin")).unwrap();
    // Three images for one pair, in the Python 2 style our writer produces.
    PairSet {
        images: set.images[..3].to_vec(),
        issame: vec![true],
    }
    .write(&odd)
    .unwrap();
    let (ok, v) = inspect_json(&[odd.to_str().unwrap()]);
    assert!(!ok);
    assert!(v["errors"].to_string().contains("odd number"), "{v}");
}

fn loader(ds: &Arc<RecDataset>, rank: usize, world: usize, start: Cursor) -> Loader {
    let config = LoaderConfig {
        batch_size: 4,
        seed: 9,
        num_workers: 2,
        prefetch: 2,
        rank,
        world,
        flip: true,
        augment: Default::default(),
    };
    Loader::new(ds.clone(), config, start).unwrap()
}

#[test]
fn loader_resumes_at_the_cursor_and_shards_disjointly() {
    let dir = tempfile::tempdir().unwrap();
    synth(dir.path(), 5, 5, 10, 3); // 25 images: 6 batches of 4 (or 3 of 4×2) per epoch
    let ds = Arc::new(RecDataset::open(dir.path()).unwrap());

    let run = loader(&ds, 0, 1, Cursor::default());
    let straight: Vec<_> = (0..9).map(|_| run.next_batch().unwrap()).collect();
    assert_eq!(
        straight[5].next,
        Cursor {
            epoch: 0,
            sample: 24
        }
    );
    assert_eq!(
        straight[6].next,
        Cursor {
            epoch: 1,
            sample: 4
        },
        "epoch rolls over after 6 batches"
    );
    // The first epoch sees 24 distinct images; the next epoch is a different order.
    let mut seen: Vec<u64> = straight[..6].iter().flat_map(|b| b.keys.clone()).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 24);
    assert_ne!(straight[0].keys, straight[6].keys);

    // Resuming from a stored cursor gives exactly the batches that followed it.
    let resumed = loader(&ds, 0, 1, straight[3].next);
    for expect in &straight[4..9] {
        let got = resumed.next_batch().unwrap();
        assert_eq!(got.keys, expect.keys);
        assert_eq!(got.images, expect.images);
        assert_eq!(got.labels, expect.labels);
    }

    // Two ranks as PyTorch's DistributedSampler(shuffle, drop_last) + DataLoader(drop_last):
    // rank r's samples are indices[r::2] of the epoch's permutation, batched by 4, and the 3
    // global batches of 8 cover the first 24 positions without overlap.
    let (r0, r1) = (
        loader(&ds, 0, 2, Cursor::default()),
        loader(&ds, 1, 2, Cursor::default()),
    );
    let plan = Plan {
        images: 25,
        config: r0.plan.config.clone(),
    };
    assert_eq!(plan.batches_per_epoch(), 3);
    let order = plan.permutation(0);
    let key_of = |index: usize| ds.sample(index).unwrap().key;
    let mut both = Vec::new();
    for step in 0..3 {
        let (a, b) = (r0.next_batch().unwrap(), r1.next_batch().unwrap());
        for (rank, batch) in [(0, &a), (1, &b)] {
            let mine: Vec<usize> = order[..24].iter().skip(rank).step_by(2).copied().collect();
            let expect: Vec<u64> = mine[step * 4..step * 4 + 4]
                .iter()
                .map(|&i| key_of(i))
                .collect();
            assert_eq!(batch.keys, expect, "rank {rank} step {step}");
        }
        assert!(a.keys.iter().all(|k| !b.keys.contains(k)));
        assert_eq!(a.next, b.next);
        assert_eq!(
            a.next,
            Cursor {
                epoch: 0,
                sample: 8 * (step + 1)
            }
        );
        both.extend(a.keys.iter().chain(&b.keys).copied());
    }
    // A 2-rank cursor resumed on 1 rank continues with the next samples of the permutation.
    let two = loader(&ds, 0, 2, Cursor::default());
    let cursor = two.next_batch().unwrap().next;
    let one = loader(&ds, 0, 1, cursor).next_batch().unwrap();
    let expect: Vec<u64> = order[8..12].iter().map(|&i| key_of(i)).collect();
    assert_eq!(one.keys, expect);
    assert_eq!(
        one.next,
        Cursor {
            epoch: 0,
            sample: 12
        }
    );
    both.sort();
    both.dedup();
    assert_eq!(both.len(), 24);
}

#[test]
fn loader_batches_are_the_decoded_images_maybe_flipped() {
    let dir = tempfile::tempdir().unwrap();
    synth(dir.path(), 3, 4, 10, 4);
    let ds = Arc::new(RecDataset::open(dir.path()).unwrap());
    let batch = loader(&ds, 0, 1, Cursor::default()).next_batch().unwrap();
    let mut flips = 0;
    for (i, key) in batch.keys.iter().enumerate() {
        let sample = ds.sample((*key - 1) as usize).unwrap();
        assert_eq!(sample.label, batch.labels[i]);
        let rgb = decode_face(&sample.image).unwrap();
        let chw = &batch.images[i * 3 * 112 * 112..(i + 1) * 3 * 112 * 112];
        let at = |x: u32, y: u32, c: usize| chw[c * 112 * 112 + (y * 112 + x) as usize];
        let plain = (0..112)
            .all(|y| (0..112).all(|x| (0..3).all(|c| at(x, y, c) == rgb.get_pixel(x, y)[c])));
        let flipped = (0..112)
            .all(|y| (0..112).all(|x| (0..3).all(|c| at(111 - x, y, c) == rgb.get_pixel(x, y)[c])));
        assert!(
            plain || flipped,
            "image {i} is neither the decoded image nor its mirror"
        );
        flips += usize::from(flipped && !plain);
    }
    println!("{flips} of {} flipped", batch.len());
}

/// `rec` may name an image folder (`<identity>/<images>`, torchvision's ImageFolder layout):
/// it gives the loader the batches that `arcface pack` of the same folder gives (the same keys,
/// labels and pixels, AdaFace's augmentations and the flips included) when its images are
/// 112×112 JPEGs, which pack keeps byte for byte, and trains to the same losses. Files that
/// are not images are skipped by both; an empty folder and an identity folder without images
/// are refused naming the folder.
#[test]
fn an_image_folder_gives_the_batches_of_its_pack() {
    use arcface::data::augment::Augmentations;
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    synth(&p("rec"), 5, 5, 10, 3);
    let source = RecDataset::open(&p("rec")).unwrap();
    for i in 0..source.len() {
        let sample = source.sample(i).unwrap();
        let identity = p("folder").join(format!("person_{:03}", sample.label));
        std::fs::create_dir_all(&identity).unwrap();
        std::fs::write(
            identity.join(format!("{:05}.jpg", sample.key)),
            &sample.image,
        )
        .unwrap();
    }
    std::fs::write(p("folder/person_001/notes.txt"), b"not an image").unwrap();
    let status = arcface()
        .args(["pack", "--images"])
        .arg(p("folder"))
        .arg("--out")
        .arg(p("packed"))
        .status()
        .unwrap();
    assert!(status.success());
    let folder = Arc::new(RecDataset::open(&p("folder")).unwrap());
    let packed = Arc::new(RecDataset::open(&p("packed")).unwrap());
    assert_eq!(
        (folder.len(), folder.num_classes()),
        (packed.len(), packed.num_classes())
    );
    assert_eq!((folder.len(), folder.num_classes()), (25, 5));
    let augmented = |ds: &Arc<RecDataset>| {
        let config = LoaderConfig {
            batch_size: 4,
            seed: 9,
            num_workers: 2,
            prefetch: 2,
            rank: 0,
            world: 1,
            flip: true,
            augment: Augmentations {
                crop: 0.5,
                low_res: 0.5,
                photometric: 0.5,
                resize: 0.5,
                blur: 0.5,
                hsv: 0.5,
                gray: 0.5,
                ..Augmentations::default()
            },
        };
        let loader = Loader::new(ds.clone(), config, Cursor::default()).unwrap();
        (0..8)
            .map(|_| {
                let b = loader.next_batch().unwrap();
                (b.images, b.labels, b.keys)
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(augmented(&folder), augmented(&packed));

    // Training from either: the same losses.
    let losses = |rec: &Path, out: &str| {
        let mut config = arcface::config::Config::load(&root().join("configs/tiny.toml")).unwrap();
        config.rec = rec.to_path_buf();
        config.output = p(out);
        config.synthetic = None;
        config.batch_size = 4;
        config.val_targets = Vec::new();
        let options = arcface::train::TrainOptions {
            max_steps: Some(3),
            ..Default::default()
        };
        let device = burn::tensor::Device::flex();
        arcface::train::train(&config, &device, &options)
            .unwrap()
            .losses
    };
    let from_folder = losses(&p("folder"), "a");
    assert_eq!(from_folder.len(), 3, "three steps: {from_folder:?}");
    assert_eq!(from_folder, losses(&p("packed"), "b"));

    std::fs::create_dir_all(p("empty")).unwrap();
    let e = RecDataset::open(&p("empty")).err().unwrap().to_string();
    assert!(
        e.contains("empty") && e.contains("no identity folders"),
        "{e}"
    );
    std::fs::create_dir_all(p("folder/person_999")).unwrap();
    let e = RecDataset::open(&p("folder")).err().unwrap().to_string();
    assert!(
        e.contains("person_999") && e.contains("without images"),
        "{e}"
    );
}

//! Training: exact resume, damaged checkpoints, NaN handling, TensorBoard files read back by
//! TensorBoard's own reader, and the verification protocol against numpy.

mod common;

use std::path::Path;

use arcface::config::{Config, LrSchedule};
use arcface::eval::embed::tar_at_far;
use arcface::eval::verify::{l2_normalize, squared_distance, verify};
use arcface::train::schedule::Schedule;
use arcface::train::{Resume, TrainOptions, train};
use burn::tensor::Device;

/// A tiny run on 20 synthetic identities × 6 images, batch 8 (15 steps per epoch).
fn small_config(data: &Path, output: &Path, extra: &str) -> Config {
    small_config_of("tiny", data, output, extra)
}

/// [`small_config`] with another network. `extra`'s keys replace the defaults of the same name.
fn small_config_of(network: &str, data: &Path, output: &Path, extra: &str) -> Config {
    common::small_synthetic(data);
    // Dropout is the iresnets' (a MobileFaceNet's or ViT's config refuses it).
    let dropout = if network.starts_with("mbf") || network.starts_with("vit") {
        "0.0"
    } else {
        "0.2"
    };
    let mut text = format!(
        "network = {network:?}\nembedding_size = 32\ndropout = {dropout}\nscale = 16.0\n\
         num_epoch = 2\nlr_steps = [20]\nrec = {data:?}\nval_targets = [\"synth_val\"]\n\
         output = {output:?}\nfrequent = 2\nverbose = 1000\nsave_every = 3\nnum_workers = 2\n\
         keep_checkpoints = 10\n"
    );
    for (key, default) in [("batch_size", "8"), ("lr", "0.05")] {
        if !extra.contains(&format!("{key} =")) {
            text.push_str(&format!("{key} = {default}\n"));
        }
    }
    text.push_str(extra);
    Config::parse(&text, Path::new("test.toml")).unwrap()
}

#[test]
fn resume_continues_with_identical_losses() {
    resume_is_exact("tiny", "", (3, 5));
}

/// arcface_torch's MobileFaceNet trains, checkpoints (its momentum buffers under its own
/// parameter paths) and resumes as exactly as the iresnets.
#[test]
fn a_mobilefacenet_trains_and_resumes_with_identical_losses() {
    resume_is_exact("mbf", "", (3, 1));
}

/// Partial FC on one rank of burn's CPU backend: 60 of 200 centres a step, every positive
/// among them and the negatives drawn from (seed, step): a resume draws the same ones.
#[test]
fn resume_with_sampled_centres_continues_with_identical_losses() {
    let sampled = resume_is_exact("tiny", "num_classes = 200\nsample_rate = 0.3\n", (3, 5));
    let all = resume_is_exact("tiny", "num_classes = 200\n", (3, 5));
    // Fewer negatives in the softmax: a smaller loss from the same start.
    assert!(
        sampled[0].1 < all[0].1 - 0.5,
        "sampled {sampled:?}, all {all:?}"
    );
}

/// gradient_acc = 2 with micro-batches of 8: a checkpoint lands between optimiser steps (a
/// step takes 16 images) and a resume continues exactly.
#[test]
fn gradient_accumulation_resumes_with_identical_losses() {
    resume_is_exact("tiny", "gradient_acc = 2\n", (3, 2));
}

/// One step of two accumulated micro-batches sees what two steps of one micro-batch each see
/// from the same weights: the same images in the same order, its loss their mean. (lr 1e-9:
/// the first of the two steps leaves the weights as they were, to float precision; the ViT has
/// no dropout to draw.) The schedule, logs and `max_steps` count optimiser steps.
#[test]
fn accumulated_micro_batches_are_the_steps_they_replace() {
    let _turn = common::serial();
    let (data, a, b) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let device = Device::flex();
    let options = |steps| TrainOptions {
        resume: None,
        max_steps: Some(steps),
        init: None,
        overwrite: false,
    };
    let still = "batch_size = 4\nlr = 1e-9\nmomentum = 0.0\nweight_decay = 0.0\n";
    let parse = |dir: &Path, extra: &str| {
        small_config_of("vit_tiny", data.path(), dir, &format!("{still}{extra}"))
    };
    let accumulated = train(&parse(a.path(), "gradient_acc = 2\n"), &device, &options(2)).unwrap();
    let single = train(&parse(b.path(), ""), &device, &options(4)).unwrap();
    assert_eq!(
        accumulated.losses.len(),
        2,
        "max_steps counts optimiser steps"
    );
    for step in 0..2 {
        let (x, y) = (single.losses[2 * step].1, single.losses[2 * step + 1].1);
        let mean = accumulated.losses[step].1;
        assert!(
            (mean - (x + y) / 2.0).abs() < 1e-4,
            "step {step}: {mean} is not the mean of {x} and {y}"
        );
        assert!((x - y).abs() > 1e-3, "two different micro-batches");
    }
    let log = std::fs::read_to_string(a.path().join("training.log")).unwrap();
    assert!(log.contains("of 8 images in 2 micro-batches of 4"), "{log}");
}

/// AdamW's moments and step count go into the checkpoint and come back: on an iresnet with
/// Partial FC sampling (the centres' moments cut with the centres) and on a ViT.
#[test]
fn adamw_resumes_with_identical_losses() {
    let adamw = "optimizer = \"adamw\"\nweight_decay = 0.1\n";
    resume_is_exact(
        "tiny",
        &format!("{adamw}num_classes = 200\nsample_rate = 0.3\n"),
        (3, 5),
    );
    resume_is_exact("vit_tiny", adamw, (3, 2));
}

/// `using_checkpoint = true` trains the same run: vit_tiny with drop path and masking, every
/// step's loss equal to the plain run's, and a resume exact (the blocks recomputed in the
/// backward from their inputs and the drop-path draws made before them).
#[test]
fn recomputed_vit_blocks_train_the_same_run() {
    let vit = "optimizer = \"adamw\"\nweight_decay = 0.1\ndrop_path_rate = 0.3\nmask_ratio = 0.1\n";
    let plain = resume_is_exact("vit_tiny", vit, (2, 2));
    let recomputed = resume_is_exact(
        "vit_tiny",
        &format!("{vit}using_checkpoint = true\n"),
        (2, 2),
    );
    assert_eq!(plain, recomputed);
}

/// AdaFace's head resumes exactly: the norms' running statistics are in the checkpoint (at
/// t_alpha 0.5 and h 1 they move enough that restarting them from head.py's (20, 100) changes
/// the losses after the resume), with Partial FC sampling; and on a ViT.
#[test]
fn adaface_resumes_with_identical_losses() {
    let adaface = "head = \"adaface\"\nadaface_h = 1.0\nadaface_t_alpha = 0.5\n";
    let losses = resume_is_exact(
        "tiny",
        &format!("{adaface}num_classes = 200\nsample_rate = 0.3\n"),
        (3, 3),
    );
    let combined = resume_is_exact("tiny", "num_classes = 200\nsample_rate = 0.3\n", (1, 1));
    assert_ne!(losses[0], combined[0], "the head is AdaFace's");
    // A ViT with AdamW under AdaFace's head and augmentations, as the field trains them.
    let vit = "optimizer = \"adamw\"\nweight_decay = 0.1\naugment = \"adaface\"\n";
    resume_is_exact("vit_tiny", &format!("{adaface}{vit}"), (2, 1));
}

/// All seven augmentations on (AdaFace's and arcface_torch's, each at 0.5): a resume continues
/// exactly, every draw from
/// (seed, epoch, position); and they change what training sees.
#[test]
fn augmented_training_resumes_with_identical_losses() {
    let augmented = resume_is_exact(
        "tiny",
        "augment = \"adaface\"\ncrop_augmentation_prob = 0.5\nlow_res_augmentation_prob = 0.5\nphotometric_augmentation_prob = 0.5\nresize_augmentation_prob = 0.5\nblur_augmentation_prob = 0.5\nhsv_augmentation_prob = 0.5\ngray_augmentation_prob = 0.5\n",
        (3, 3),
    );
    let plain = resume_is_exact("tiny", "", (1, 1));
    assert_ne!(
        augmented[0], plain[0],
        "the augmentations changed the first batch"
    );
}

/// Ten AdamW steps on given gradients, learning rates and clipping factors equal
/// torch.optim.AdamW's within 1e-6 relative (LibTorch's fused step: tests/libtorch.rs).
#[test]
fn adamw_steps_as_torch_optim_adamw() {
    let _turn = common::serial();
    common::adamw_steps_as_torch_optim_adamw(&Device::flex());
}

/// `stop` + `then` steps straight = `stop` steps + `--resume` `then`, loss for loss (3 + 5
/// crosses no epoch end: 15 steps per epoch); the losses.
fn resume_is_exact(network: &str, extra: &str, (stop, then): (usize, usize)) -> Vec<(usize, f64)> {
    let _turn = common::serial();
    let (data, a, b) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let device = Device::flex();
    let straight = train(
        &small_config_of(network, data.path(), a.path(), extra),
        &device,
        &TrainOptions {
            resume: None,
            max_steps: Some(stop + then),
            init: None,
            overwrite: false,
        },
    )
    .unwrap();
    // `stop` steps, stop; resume from the latest checkpoint for `then` more.
    let config = small_config_of(network, data.path(), b.path(), extra);
    let first = train(
        &config,
        &device,
        &TrainOptions {
            resume: None,
            max_steps: Some(stop),
            init: None,
            overwrite: false,
        },
    )
    .unwrap();
    assert_eq!(
        &straight.losses[..stop],
        &first.losses[..],
        "one seed, one config: the same first steps"
    );
    let resumed = train(
        &config,
        &device,
        &TrainOptions {
            resume: Some(Resume::Latest),
            max_steps: Some(then),
            init: None,
            overwrite: false,
        },
    )
    .unwrap();
    assert_eq!(
        resumed.losses.first().unwrap().0,
        stop + 1,
        "the resumed run starts at step {}",
        stop + 1
    );
    assert_eq!(
        &straight.losses[stop..],
        &resumed.losses[..],
        "losses after a resume differ from the straight run"
    );
    // Training did something.
    assert!(straight.losses.iter().all(|(_, l)| l.is_finite()));
    straight.losses
}

#[test]
fn a_damaged_checkpoint_is_rejected() {
    let _turn = common::serial();
    let (data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = small_config(data.path(), out.path(), "");
    let report = train(
        &config,
        &Device::flex(),
        &TrainOptions {
            resume: None,
            max_steps: Some(3),
            init: None,
            overwrite: false,
        },
    )
    .unwrap();
    let path = report.last_checkpoint.unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    let err = train(
        &config,
        &Device::flex(),
        &TrainOptions {
            resume: Some(Resume::Path(path.clone())),
            max_steps: Some(1),
            init: None,
            overwrite: false,
        },
    )
    .expect_err("a damaged checkpoint must not load")
    .to_string();
    assert!(
        err.contains(&path.display().to_string()) && err.contains("checksum mismatch"),
        "{err}"
    );
}

#[test]
fn nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint() {
    let _turn = common::serial();
    let (data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // An absurd learning rate blows the weights up within a few steps.
    let mut config = small_config(data.path(), out.path(), "");
    config.save_every = 1;
    config.lr = 1e30;
    let err = train(
        &config,
        &Device::flex(),
        &TrainOptions {
            resume: None,
            max_steps: Some(15),
            init: None,
            overwrite: false,
        },
    )
    .expect_err("training must stop")
    .to_string();
    println!("{err}");
    assert!(
        err.contains("at step") && err.contains("last good checkpoint is"),
        "{err}"
    );
    assert!(err.contains("lower lr"), "{err}");
    // The checkpoints that were written still load.
    let last = arcface::checkpoint::list(out.path())
        .pop()
        .expect("a checkpoint before the NaN");
    arcface::checkpoint::Checkpoint::load(&last).unwrap();
}

/// A disk that fills up while a checkpoint is written: the write fails with the OS's error,
/// training stops naming the file, the half-written file is gone, and the run resumes from the
/// checkpoint before. `/dev/full` (every write fails with ENOSPC) stands in for the full disk:
/// the checkpoint's temporary file is a link to it, and so is `training.log`, whose failed
/// writes are said once and do not stop training (it reaches step 6, and the resumed run ends).
#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_stops_training_and_keeps_the_last_checkpoint() {
    let _turn = common::serial();
    let (data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = small_config(data.path(), out.path(), "");
    let options = |resume, steps| TrainOptions {
        resume,
        max_steps: Some(steps),
        init: None,
        overwrite: false,
    };
    // save_every = 3: step 3 is written, step 6 meets the full disk.
    let step3 = arcface::checkpoint::step_path(out.path(), 3);
    let step6 = arcface::checkpoint::step_path(out.path(), 6);
    let tmp6 = step6.with_extension("ckpt.tmp");
    std::os::unix::fs::symlink("/dev/full", &tmp6).unwrap();
    std::os::unix::fs::symlink("/dev/full", out.path().join("training.log")).unwrap();
    // `--resume auto`: the folder holds no checkpoint, only the links made here.
    let err = train(&config, &Device::flex(), &options(Some(Resume::Auto), 6))
        .expect_err("a checkpoint that cannot be written must stop training");
    let err = format!("{err:#}");
    println!("{err}");
    assert!(
        err.contains(&step6.display().to_string())
            && err.contains("previous checkpoints are intact")
            && err.matches("No space left on device").count() == 1,
        "{err}"
    );
    assert!(!step6.exists(), "no step-6 checkpoint may be left");
    assert!(
        std::fs::symlink_metadata(&tmp6).is_err(),
        "the temporary file is removed"
    );
    arcface::checkpoint::Checkpoint::load(&step3).unwrap();
    // With space again, the run resumes from step 3 and writes step 6.
    let report = train(&config, &Device::flex(), &options(Some(Resume::Latest), 3)).unwrap();
    assert_eq!(report.last_checkpoint.as_deref(), Some(step6.as_path()));
    let resumed = arcface::checkpoint::Checkpoint::load(&step6).unwrap();
    assert_eq!(resumed.meta.step, 6);
}

/// A config with `[synthetic]` generates its data on first use, beside `rec` and renamed when
/// whole: what an interrupted generation left (`<rec>.partial`) is replaced, not trained on.
#[test]
fn synthetic_data_is_generated_whole_on_first_use() {
    let _turn = common::serial();
    let (root, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let rec = root.path().join("synthetic");
    let partial = root.path().join("synthetic.partial");
    std::fs::create_dir(&partial).unwrap();
    std::fs::write(partial.join("train.rec"), b"cut short").unwrap();
    // With a trailing slash, as a folder is often written.
    let rec_text = format!("{}/", rec.display());
    let text = format!(
        "network = \"tiny\"\nembedding_size = 32\nbatch_size = 8\nrec = {rec_text:?}\n\
         val_targets = [\"synth_val\"]\noutput = {:?}\nnum_workers = 1\n\
         [synthetic]\nidentities = 6\nimages_per_identity = 4\nval_pairs = 20\nseed = 3\n",
        out.path()
    );
    let config = Config::parse(&text, Path::new("test.toml")).unwrap();
    let options = TrainOptions {
        resume: None,
        max_steps: Some(1),
        init: None,
        overwrite: false,
    };
    train(&config, &Device::flex(), &options).unwrap();
    assert!(!partial.exists());
    let dataset = arcface::data::dataset::RecDataset::open(&rec).unwrap();
    assert_eq!((dataset.len(), dataset.num_classes()), (24, 6));
    assert!(rec.join("synth_val.bin").exists());
}

#[test]
fn tensorboard_files_read_back_with_tensorboard() {
    let _turn = common::serial();
    let (data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = small_config(data.path(), out.path(), "");
    train(
        &config,
        &Device::flex(),
        &TrainOptions {
            resume: None,
            max_steps: Some(4),
            init: None,
            overwrite: false,
        },
    )
    .unwrap();
    let tags = common::tensorboard_scalars(&out.path().join("tensorboard"));
    for tag in [
        "train/loss",
        "train/lr",
        "train/img_per_s",
        "train/grad_norm",
        "val/synth_val/accuracy",
        "val/synth_val/std",
        "val/synth_val/xnorm",
        "val/synth_val/tar_at_far_1e-3",
    ] {
        assert!(tags[tag].is_array(), "tag {tag} missing from {tags}");
    }
    // Logged every 2 steps: steps 2 and 4.
    assert_eq!(tags["train/lr"].as_array().unwrap().len(), 2);
}

/// Pseudo-random embeddings with some signal: same pairs closer than different ones.
fn embeddings(n: usize, dim: usize) -> (Vec<Vec<f32>>, Vec<Vec<f32>>, Vec<bool>) {
    let mut state = 12345u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let (mut e1, mut e2, mut same) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let s = i % 3 != 0;
        let a: Vec<f32> = (0..dim).map(|_| next()).collect();
        let noise = if s { 0.9 } else { 3.0 };
        let mut b: Vec<f32> = a.iter().map(|x| x + noise * next()).collect();
        let mut a = a;
        l2_normalize(&mut a);
        l2_normalize(&mut b);
        e1.push(a);
        e2.push(b);
        same.push(s);
    }
    (e1, e2, same)
}

#[test]
fn ten_fold_protocol_equals_numpy() {
    for n in [600, 1003] {
        let (e1, e2, same) = embeddings(n, 16);
        let dist: Vec<f32> = e1
            .iter()
            .zip(&e2)
            .map(|(a, b)| squared_distance(a, b))
            .collect();
        let ours = verify(&dist, &same, 10);
        let tar = tar_at_far(&dist, &same, 1e-3, 10);
        let reference = common::run_reference(
            "verification.py",
            &serde_json::json!({"embeddings1": e1, "embeddings2": e2, "issame": same}),
        );
        println!(
            "n {n}: ours {} ± {} tar {tar}; numpy {reference}",
            ours.accuracy, ours.std
        );
        assert!((ours.accuracy - reference["accuracy"].as_f64().unwrap()).abs() < 1e-12);
        assert!((ours.std - reference["std"].as_f64().unwrap()).abs() < 1e-12);
        let best: Vec<f64> = reference["best_thresholds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert!((ours.threshold - best.iter().sum::<f64>() / 10.0).abs() < 1e-9);
        assert!(
            (tar - reference["tar"].as_f64().unwrap()).abs() < 1e-12,
            "TAR {tar} vs {}",
            reference["tar"]
        );
        assert!(
            ours.accuracy > 0.6 && ours.accuracy < 1.0,
            "the case should be neither trivial nor hopeless"
        );
    }
}

#[test]
fn eval_cli_reports_every_target_as_json_and_draws_the_roc() {
    let _turn = common::serial();
    let (data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = small_config(data.path(), out.path(), "");
    let report = train(
        &config,
        &Device::flex(),
        &TrainOptions {
            resume: None,
            max_steps: Some(2),
            init: None,
            overwrite: false,
        },
    )
    .unwrap();
    let ckpt = report.last_checkpoint.unwrap();
    let roc = out.path().join("roc.png");
    let o = common::arcface()
        .args([
            "eval",
            "--model",
            ckpt.to_str().unwrap(),
            "--data",
            data.path().to_str().unwrap(),
            "--json",
        ])
        .args(["--roc", roc.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let t = &v["targets"][0];
    assert_eq!(t["name"], "synth_val");
    assert_eq!(t["pairs"], 40);
    for key in ["accuracy", "std", "threshold", "xnorm", "tar_at_far_1e-3"] {
        assert!(t[key].is_f64(), "{key} missing in {v}");
    }
    // By default tract computes (the checkpoint exported in memory): within a pair of the
    // validation at the end of training (its embeddings differ from burn's by ~1e-6).
    let (_, results) = report.validations.last().unwrap();
    let accuracy = |v: &serde_json::Value| v["targets"][0]["accuracy"].as_f64().unwrap();
    assert!((accuracy(&v) - results[0].accuracy).abs() <= 1.0 / 40.0 + 1e-9);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("run by tract"),
        "says which engine: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let picture = image::open(&roc).unwrap();
    assert_eq!((picture.width(), picture.height()), (720, 540));
    // `--engine burn`: the same numbers as the validation, to the bit.
    let o = common::arcface()
        .args([
            "eval",
            "--model",
            ckpt.to_str().unwrap(),
            "--engine",
            "burn",
        ])
        .args(["--data", data.path().to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!((accuracy(&v) - results[0].accuracy).abs() < 1e-9);
    // `infer` likewise: tract's embedding of a crop (the checkpoint exported in memory) equals
    // burn's within float rounding.
    let crop = out.path().join("crop.png");
    image::RgbImage::from_fn(112, 112, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 2) as u8, ((x * y) % 251) as u8])
    })
    .save(&crop)
    .unwrap();
    let embedding = |engine: &str| -> Vec<f64> {
        let o = common::arcface()
            .args([
                "infer",
                crop.to_str().unwrap(),
                "--model",
                ckpt.to_str().unwrap(),
            ])
            .args(["--no-detect", "--json", "--engine", engine])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        serde_json::from_value(v["images"][0]["faces"][0]["embedding"].clone()).unwrap()
    };
    let (tract, burn) = (embedding("auto"), embedding("burn"));
    let gap = tract
        .iter()
        .zip(&burn)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(gap < 1e-5, "tract and burn embeddings {gap:.2e} apart");

    let o = common::arcface()
        .args(["eval", "--model", "x.onnx", "--bin", "a.bin"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    // A missing ONNX file is named (ONNX models themselves: tests/onnx.rs).
    assert!(String::from_utf8_lossy(&o.stderr).contains("x.onnx"));
}

#[test]
fn resume_without_a_checkpoint_says_so() {
    let _turn = common::serial();
    let (data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = small_config(data.path(), out.path(), "");
    let err = train(
        &config,
        &Device::flex(),
        &TrainOptions {
            resume: Some(Resume::Latest),
            max_steps: Some(1),
            init: None,
            overwrite: false,
        },
    )
    .expect_err("nothing to resume from")
    .to_string();
    assert!(err.contains("no step-*.ckpt"), "{err}");
}

#[test]
fn safetensors_export_has_arcface_torch_names_and_layouts() {
    let _turn = common::serial();
    let (data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = small_config(data.path(), out.path(), "");
    let ckpt = train(
        &config,
        &Device::flex(),
        &TrainOptions {
            resume: None,
            max_steps: Some(1),
            init: None,
            overwrite: false,
        },
    )
    .unwrap()
    .last_checkpoint
    .unwrap();
    let file = out.path().join("backbone.safetensors");
    let o = common::arcface()
        .args([
            "export",
            "--model",
            ckpt.to_str().unwrap(),
            "--safetensors",
            file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let arcface::model::Architecture::IResNet { widths, .. } =
        arcface::model::Network::Tiny.architecture()
    else {
        unreachable!("tiny is an iresnet")
    };
    let widths: Vec<String> = widths.iter().map(|w| w.to_string()).collect();
    let check = std::process::Command::new(common::python())
        .arg(common::root().join("tests/reference/iresnet_names.py"))
        .args([file.to_str().unwrap(), "1,1,1,1", &widths.join(","), "32"])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(v["missing"], serde_json::json!([]), "{v}");
    assert_eq!(v["unexpected"], serde_json::json!([]), "{v}");
    assert_eq!(v["wrong_shape"], serde_json::json!([]), "{v}");
    // PyTorch's fc.weight[o][i] is our [i][o].
    let ours = arcface::checkpoint::Checkpoint::load(&ckpt).unwrap();
    let fc = &ours.tensors["backbone.fc.weight"];
    let cols = fc.shape()[1];
    let values = fc.try_to_vec::<f32>().unwrap();
    for i in 0..3 {
        let torch = v["fc_weight"][0][i].as_f64().unwrap() as f32;
        assert_eq!(torch, values[i * cols], "fc.weight[0][{i}]");
    }
}

#[test]
fn keeps_the_last_k_step_checkpoints_and_the_best() {
    let _turn = common::serial();
    let (data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut config = small_config(data.path(), out.path(), "");
    config.save_every = 1;
    config.keep_checkpoints = 2;
    train(
        &config,
        &Device::flex(),
        &TrainOptions {
            resume: None,
            max_steps: Some(5),
            init: None,
            overwrite: false,
        },
    )
    .unwrap();
    let names: Vec<String> = arcface::checkpoint::list(out.path())
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["step-000000004.ckpt", "step-000000005.ckpt"]);
    assert!(out.path().join("best.ckpt").exists());
    assert!(
        std::fs::read_dir(out.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp"))
    );
}

#[test]
fn init_starts_the_backbone_from_a_checkpoint() {
    use arcface::checkpoint::Checkpoint;
    let _turn = common::serial();
    let (data, a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let device = Device::flex();
    let mut config = small_config(data.path(), a.path(), "");
    config.seed = 5;
    let first = train(
        &config,
        &device,
        &TrainOptions {
            max_steps: Some(3),
            ..Default::default()
        },
    )
    .unwrap();
    let from = first.last_checkpoint.unwrap();
    // A different seed and an lr too small to move the weights: one step with --init keeps
    // the checkpoint's convolutions, one step without starts elsewhere.
    let step = |output: &Path, init: Option<std::path::PathBuf>| {
        let mut config = small_config(data.path(), output, "");
        config.seed = 6;
        config.lr = 1e-12;
        let report = train(
            &config,
            &device,
            &TrainOptions {
                max_steps: Some(1),
                init,
                ..Default::default()
            },
        )
        .unwrap();
        Checkpoint::load(&report.last_checkpoint.unwrap()).unwrap()
    };
    let (with, without) = (step(b.path(), Some(from.clone())), step(c.path(), None));
    let source = Checkpoint::load(&from).unwrap();
    let name = "backbone.layer2.0.conv1.weight";
    let values = |c: &Checkpoint| c.tensors[name].try_to_vec::<f32>().unwrap();
    let diff = |x: &[f32], y: &[f32]| {
        x.iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max)
    };
    assert!(diff(&values(&with), &values(&source)) < 1e-6);
    assert!(diff(&values(&without), &values(&source)) > 1e-2);
    assert_eq!(with.meta.step, 1, "a new run: the step starts at 0");

    // --init and --resume together are refused.
    let err = train(
        &small_config(data.path(), a.path(), ""),
        &device,
        &TrainOptions {
            resume: Some(Resume::Latest),
            init: Some(from),
            overwrite: false,
            max_steps: Some(1),
        },
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("--init"), "{err:#}");
}

/// A label beyond `property`'s class count (a property file that undercounts): training stops
/// with an error naming the data, the record and the label, not a wrong head.
#[test]
fn a_label_outside_the_class_count_is_named() {
    let _turn = common::serial();
    let (data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = small_config(data.path(), out.path(), "");
    std::fs::write(data.path().join("property"), "10,112,112\n").unwrap();
    let err = train(
        &config,
        &Device::flex(),
        &TrainOptions {
            resume: None,
            max_steps: Some(15),
            init: None,
            overwrite: false,
        },
    )
    .map(|_| ())
    .unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains("is not an identity in [0, 10)"), "{err}");
    assert!(err.contains(&data.path().display().to_string()), "{err}");
    assert!(err.contains("train.rec: key "), "{err}");
}

/// `lr_schedule = "poly"` is arcface_torch's: the rate of every step equals the one
/// PolynomialLRWarmup gives it as train_v2.py steps the scheduler in PyTorch
/// (tests/reference/lr_scheduler.py): the full rate at the first step, the warmup, the decay
/// at powers 1 (arcface_torch's) and 2, and the steps past the end.
#[test]
fn poly_schedule_is_arcface_torchs_step_by_step() {
    let total = 1000;
    for (warmup, power) in [(100, 1.0), (0, 1.0), (37, 2.0)] {
        let query = serde_json::json!({
            "base_lr": 0.1, "warmup": warmup, "total": total, "power": power, "steps": total + 5,
        });
        let reference = common::torch_reference("lr_scheduler.py", &query);
        let theirs: Vec<f64> = serde_json::from_value(reference["lr"].clone()).unwrap();
        assert_eq!(theirs.len(), total + 5);
        let ours = Schedule {
            kind: LrSchedule::Poly,
            base_lr: 0.1,
            warmup_steps: warmup,
            total_steps: total,
            lr_steps: Vec::new(),
            poly_power: power,
        };
        for (step, &t) in theirs.iter().enumerate() {
            let o = ours.lr(step);
            assert!(
                (o - t).abs() <= 1e-12 + 1e-9 * t.abs(),
                "warmup {warmup}, power {power}, step {step}: ours {o}, PyTorch {t}"
            );
        }
    }
}

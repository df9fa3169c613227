//! The command line as a user meets it: summary output, config errors, device errors.

mod common;

use std::path::Path;
use std::process::Output;

use common::{arcface, root};

fn run(args: &[&str]) -> Output {
    arcface().args(args).current_dir(root()).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Writes `text` as a config in a temp dir and runs `summary` on it.
fn summary_of(text: &str) -> (Output, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out = run(&["summary", "--config", path.to_str().unwrap()]);
    (out, path, dir)
}

#[test]
fn summary_json_for_r100() {
    let out = run(&[
        "summary",
        "--config",
        "configs/r100.toml",
        "--device",
        "cpu",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["network"], "r100");
    assert_eq!(v["params"], 65_156_160);
    assert_eq!(v["trainable_params"], 65_155_648);
    assert_eq!(v["embedding_size"], 512);
    assert!((v["gflops"].as_f64().unwrap() - 24.18).abs() < 0.05);
    let stages = v["stages"].as_array().unwrap();
    let shapes: Vec<_> = stages.iter().map(|s| s["output_shape"].clone()).collect();
    assert_eq!(
        serde_json::Value::Array(shapes),
        serde_json::json!([
            [64, 112, 112],
            [64, 56, 56],
            [128, 28, 28],
            [256, 14, 14],
            [512, 7, 7],
            [512, 1, 1]
        ])
    );
}

#[test]
fn summary_table_for_every_shipped_config() {
    for config in [
        "configs/r100.toml",
        "configs/r200.toml",
        "configs/r50.toml",
        "configs/tiny.toml",
    ] {
        let out = run(&["summary", "--config", config, "--device", "cpu"]);
        assert!(out.status.success(), "{config}: {}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("GFLOPs per image"), "{config}: {text}");
    }
}

#[test]
fn unknown_key_names_file_and_key() {
    let (out, path, _dir) = summary_of("network = \"r50\"\nlearning_rate = 0.1\n");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("unknown field `learning_rate`"), "{err}");
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn wrong_type_names_file_and_key() {
    let (out, path, _dir) = summary_of("network = \"r50\"\nlr = \"fast\"\n");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("key `lr`"), "{err}");
    assert!(err.contains("invalid type"), "{err}");
}

/// BatchNorm trains on batch statistics: batch 1 is refused up front, naming the key (PyTorch
/// refuses it in the first forward).
#[test]
fn batch_of_one_is_refused() {
    let (out, path, _dir) = summary_of("network = \"tiny\"\nbatch_size = 1\n");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(
        err.contains("batch_size") && err.contains("at least 2"),
        "{err}"
    );
}

#[test]
fn unknown_network_is_named() {
    let (out, _path, _dir) = summary_of("network = \"r101\"\n");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("key `network`") && err.contains("r101"),
        "{err}"
    );
}

#[test]
fn bad_values_name_the_key() {
    for (text, key) in [
        ("margin_list = [1.0, 0.5]\n", "margin_list"),
        ("margin_list = [1.0, 4.0, 0.0]\n", "margin_list"),
        ("batch_size = 0\n", "batch_size"),
        ("lr_steps = [10, 5]\n", "lr_steps"),
        ("device = \"gpu\"\n", "device"),
        ("dropout = 1.5\n", "dropout"),
        ("sample_rate = 0.0\n", "sample_rate"),
        ("sample_rate = 1.5\n", "sample_rate"),
        ("sample_rate = -0.1\n", "sample_rate"),
        ("poly_power = 0.0\n", "poly_power"),
        (
            "interclass_filtering_threshold = 1.0\n",
            "interclass_filtering_threshold",
        ),
        // The iresnets' keys, in a MobileFaceNet's file: values it could not honour.
        ("network = \"mbf\"\ndropout = 0.4\n", "dropout"),
        (
            "network = \"mbf\"\nembedding_gamma_trainable = false\n",
            "embedding_gamma_trainable",
        ),
    ] {
        let (out, path, _dir) = summary_of(text);
        assert!(!out.status.success(), "{text}");
        let err = stderr(&out);
        assert!(err.contains(&format!("key `{key}`")), "{text}: {err}");
        assert!(err.contains(&path.display().to_string()), "{text}: {err}");
    }
}

#[test]
fn malformed_toml_says_where() {
    let (out, path, _dir) = summary_of("network = \"r50\"\nlr = \n");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&path.display().to_string()) && err.contains("line 2"),
        "{err}"
    );
}

#[test]
fn missing_config_file() {
    let out = run(&["summary", "--config", "configs/does-not-exist.toml"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("configs/does-not-exist.toml") && err.contains("cannot read"),
        "{err}"
    );
    assert!(!Path::new("configs/does-not-exist.toml").exists());
}

#[test]
fn device_override_is_checked() {
    let out = run(&[
        "summary",
        "--config",
        "configs/tiny.toml",
        "--device",
        "tpu",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown device `tpu`"),
        "{}",
        stderr(&out)
    );
}

#[cfg(not(feature = "tch"))]
#[test]
fn cuda_without_tch_explains_the_fix() {
    // configs/r100.toml asks for "cuda": without the tch feature that is a clear error.
    let out = run(&[
        "bench",
        "train",
        "--config",
        "configs/r100.toml",
        "--steps",
        "1",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("--features tch") && err.contains("--device cpu"),
        "{err}"
    );
}

/// The default build has no process group: several ranks, or a launcher's variables with
/// several ranks, are refused naming the feature that has one.
#[cfg(not(feature = "tch"))]
#[test]
fn distributed_without_tch_names_the_feature() {
    for device in ["cpu", "libtorch-cpu"] {
        let out = run(&[
            "train",
            "--config",
            "configs/tiny.toml",
            "--device",
            device,
            "--nproc-per-node",
            "2",
        ]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("--features tch"), "{}", stderr(&out));
    }
    let out = arcface()
        .args(["train", "--config", "configs/tiny.toml"])
        .current_dir(root())
        .envs([
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "29999"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("error (rank 1)") && err.contains("--features tch"),
        "{err}"
    );
}

/// Describing or exporting a config needs no GPU, whatever its `device` says: both run on the
/// CPU unless `--device` is given, so a seed gives the same weights on every machine.
#[test]
fn summary_and_export_run_on_the_cpu_whatever_the_config_device() {
    let out = run(&["summary", "--config", "configs/r100.toml", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["params"], 65_156_160);

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gpu.toml");
    std::fs::write(&config, "network = \"tiny\"\ndevice = \"cuda:1\"\n").unwrap();
    let export = |seed: &str, extra: &[&str], name: &str| {
        let file = dir.path().join(name);
        let mut args = vec!["export", "--config", config.to_str().unwrap()];
        args.extend(["--seed", seed, "--onnx", file.to_str().unwrap()]);
        args.extend(extra);
        let out = run(&args);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        std::fs::read(file).unwrap()
    };
    let default = export("5", &[], "default.onnx");
    assert_eq!(default, export("5", &["--device", "cpu"], "cpu.onnx"));
    assert_ne!(default, export("6", &[], "other-seed.onnx"));
}

/// A full disk (`/dev/full` behind the temporary file) while exporting: a non-zero exit, the
/// file and the OS's error named once, and neither the file nor its temporary left behind.
#[cfg(target_os = "linux")]
#[test]
fn export_to_a_full_disk_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, name) in [("--onnx", "m.onnx"), ("--safetensors", "m.safetensors")] {
        let file = dir.path().join(name);
        let tmp = dir.path().join(format!("{name}.tmp"));
        std::os::unix::fs::symlink("/dev/full", &tmp).unwrap();
        let out = run(&[
            "export",
            "--config",
            "configs/tiny.toml",
            flag,
            file.to_str().unwrap(),
        ]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{flag}: {err}");
        assert!(
            err.contains(name) && err.matches("No space left on device").count() == 1,
            "{flag}: {err}"
        );
        assert!(!file.exists(), "{flag}");
        assert!(std::fs::symlink_metadata(&tmp).is_err(), "{flag}: {err}");
    }
}

#[test]
fn head_is_sized_from_the_property_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("property"), "85742,112,112\n").unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!("rec = {:?}\ndevice = \"cpu\"\n", dir.path()),
    )
    .unwrap();
    let out = run(&["summary", "--config", config.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["num_classes"], 85742);
    assert_eq!(v["head_params"], 85742 * 512);
}

/// `bench train` steps the config's optimizer: AdamW for configs/vit_tiny.toml.
#[test]
fn bench_train_runs_a_vit_with_its_optimizer() {
    let out = run(&[
        "bench",
        "train",
        "--config",
        "configs/vit_tiny.toml",
        "--batch-size",
        "2",
        "--num-classes",
        "10",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&v["network"], &v["optimizer"]),
        (&serde_json::json!("vit_tiny"), &serde_json::json!("adamw"))
    );
    assert!(v["loss"].as_f64().unwrap().is_finite(), "{v}");
}

/// `bench train` on the tiny net: every part timed, the parts adding up to about the step,
/// `--channels-last` taken, and `--profile` refused up front where libtorch's profiler is not
/// built in.
#[test]
fn bench_train_reports_its_parts() {
    let out = run(&[
        "bench",
        "train",
        "--config",
        "configs/tiny.toml",
        "--batch-size",
        "4",
        "--num-classes",
        "10",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--channels-last",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["network"], "tiny");
    // Taken (a no-op on this backend: src/model/memory_format.rs) and reported.
    assert_eq!(v["channels_last"], true);
    assert_eq!(
        (v["steps"].as_u64(), v["warmup_steps"].as_u64()),
        (Some(2), Some(1))
    );
    let ms = |key: &str| v[key].as_f64().unwrap_or_else(|| panic!("{key}: {v}"));
    let (step, forward, backward, optimizer) = (
        ms("step_ms"),
        ms("forward_ms"),
        ms("backward_ms"),
        ms("optimizer_ms"),
    );
    assert!(forward > 0.0 && backward > 0.0 && optimizer >= 0.0, "{v}");
    assert!((ms("images_per_second") - 4.0 / step * 1e3).abs() < 1e-6 * ms("images_per_second"));
    // Timed apart with waits, the parts sum to about a step (not to a multiple of it).
    let parts = forward + backward + optimizer;
    assert!(
        parts > 0.3 * step && parts < 3.0 * step,
        "parts {parts} ms, step {step} ms"
    );
    assert!(ms("loss").is_finite());

    if cfg!(not(feature = "tch")) {
        let out = run(&[
            "bench",
            "train",
            "--config",
            "configs/tiny.toml",
            "--profile",
            "/tmp/never-written.json",
        ]);
        assert!(!out.status.success());
        let text = stderr(&out);
        assert!(
            text.contains("--profile") && text.contains("--features tch"),
            "{text}"
        );
        assert!(!Path::new("/tmp/never-written.json").exists());
    }
}

/// `bench train --widths` builds the network's depth at those widths: its parameter count is
/// the one the architecture gives (checked on r100's published 65,156,160 first); bad widths are
/// refused naming the option.
#[test]
fn bench_train_takes_other_widths() {
    // insightface's LResNet-E-IR, counted by hand: stem, units (BN, conv 3×3, BN, PReLU, conv
    // 3×3 with the stage's stride, BN, and a 1×1 conv + BN shortcut at each stage's first
    // unit), BN, FC from the 7×7 map, BN1d.
    fn parameters(units: [usize; 4], widths: [usize; 4], embedding: usize) -> usize {
        let mut n = 27 * widths[0] + 3 * widths[0];
        let mut cin = widths[0];
        for (&u, &cout) in units.iter().zip(&widths) {
            for i in 0..u {
                n += 2 * cin + 9 * cin * cout + 5 * cout + 9 * cout * cout;
                if i == 0 {
                    n += cin * cout + 2 * cout;
                }
                cin = cout;
            }
        }
        n + 2 * cin + cin * 49 * embedding + embedding + 2 * embedding
    }
    assert_eq!(
        parameters([3, 13, 30, 3], [64, 128, 256, 512], 512),
        65_156_160
    );
    let bench = |widths: &str| {
        run(&[
            "bench",
            "train",
            "--config",
            "configs/tiny.toml",
            "--batch-size",
            "2",
            "--num-classes",
            "10",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--widths",
            widths,
            "--json",
        ])
    };
    let out = bench("2,3,4,5");
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["widths"], serde_json::json!([2, 3, 4, 5]));
    // tiny.toml: one unit per stage, 128-d embeddings; the head has 10 × 128.
    assert_eq!(
        v["parameters"].as_u64(),
        Some((parameters([1, 1, 1, 1], [2, 3, 4, 5], 128) + 10 * 128) as u64)
    );
    assert!(v["loss"].as_f64().unwrap().is_finite(), "{v}");
    for bad in ["4,4,4", "4,0,4,4", "4,x,4,4"] {
        let out = bench(bad);
        assert!(!out.status.success(), "{bad} was taken");
        assert!(stderr(&out).contains("--widths"), "{}", stderr(&out));
    }
}

/// The tiny net of configs/tiny.toml (fresh weights) exported to `dir`/tiny.onnx.
fn export_tiny(dir: &Path) -> std::path::PathBuf {
    let file = dir.join("tiny.onnx");
    let out = run(&[
        "export",
        "--onnx",
        file.to_str().unwrap(),
        "--config",
        "configs/tiny.toml",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    file
}

/// `bench infer --tract-ops` times tract's plan node by node: every PRelu of the tiny net runs
/// as one operation (src/tract/prelu.rs), and the table rides along with the throughputs.
#[test]
fn bench_infer_shows_where_tracts_time_goes() {
    let dir = tempfile::tempdir().unwrap();
    let file = export_tiny(dir.path());
    let file = file.to_str().unwrap();
    let out = run(&[
        "bench",
        "infer",
        "--model",
        file,
        "--batch",
        "2",
        "--seconds",
        "0",
        "--tract-ops",
        "2",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let documents: Vec<serde_json::Value> = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    let [throughputs, ops] = documents.as_slice() else {
        panic!("two JSON documents expected: {documents:?}")
    };
    assert_eq!(engines(throughputs), ["burn (cpu)", "tract"]);
    let ops = ops["tract_ops"].as_array().unwrap();
    let nodes = |op: &str| {
        ops.iter()
            .find(|t| t["op"] == op)
            .and_then(|t| t["nodes"].as_u64())
    };
    // The stem's and one per unit, less those taken into a Winograd convolution (the tiny
    // net's two: src/tract/winograd/fusion.rs); no comparison-and-select expansion left.
    assert_eq!(nodes("PRelu"), Some(3), "{ops:?}");
    assert_eq!(nodes("WinogradOutput"), Some(2), "{ops:?}");
    assert_eq!((nodes("Iff"), nodes("GT")), (None, None), "{ops:?}");
    assert!(nodes("OptMatMul").is_some_and(|n| n >= 10), "{ops:?}");
}

/// `bench infer --onnxruntime` alternates rounds of tract and of onnxruntime (kept running
/// between its rounds) and sums them, keeping each round's rate; an onnxruntime that cannot
/// start is a clear error, not a hang.
#[test]
fn bench_infer_alternates_tract_and_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    let file = export_tiny(dir.path());
    let args = [
        "bench",
        "infer",
        "--model",
        file.to_str().unwrap(),
        "--batch",
        "2",
        "--seconds",
        "0",
        "--onnxruntime",
        "--json",
    ];
    let out = arcface()
        .args(args)
        .env("ARCFACE_PYTHON", common::python())
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names = engines(&rows);
    assert_eq!(names[..2], ["burn (cpu)", "tract"]);
    assert!(names[2].starts_with("onnxruntime "), "{names:?}");
    for row in &rows.as_array().unwrap()[1..] {
        let rounds = row["rounds"].as_array().unwrap();
        assert_eq!(rounds.len(), 4, "{row}");
        // Each round at least two batches: the sum at least eight.
        let images = row["images"].as_u64().unwrap();
        assert!(images >= 16 && images.is_multiple_of(2), "{row}");
        assert!(rounds.iter().all(|r| r.as_f64().unwrap() > 0.0), "{row}");
    }
    // A Python without the script's imports: its error, named, and a non-zero exit.
    let out = arcface()
        .args(args)
        .env("ARCFACE_PYTHON", "/bin/false")
        .current_dir(root())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("bench_onnxruntime.py failed") && err.contains("/bin/false"),
        "{err}"
    );
}

/// The engine of each row of `bench infer --json`'s throughput table.
fn engines(rows: &serde_json::Value) -> Vec<&str> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["engine"].as_str().unwrap())
        .collect()
}

/// `bench infer --resident` times burn a second way, with the batch kept on the device as
/// PyTorch's anchor times itself: whole chunks of five batches, after the host-to-host row.
#[test]
fn bench_infer_resident_adds_a_row_on_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let file = export_tiny(dir.path());
    let file = file.to_str().unwrap();
    let args = [
        "bench",
        "infer",
        "--model",
        file,
        "--batch",
        "2",
        "--seconds",
        "0",
        "--burn-only",
    ];
    let out = run(&[&args[..], &["--resident", "--json"]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(engines(&rows), ["burn (cpu)", "burn (cpu, resident)"]);
    let rows = rows.as_array().unwrap();
    let images = rows[1]["images"].as_u64().unwrap();
    assert!(images >= 20 && images.is_multiple_of(10), "{images}");
    assert!(rows[1]["images_per_second"].as_f64().unwrap() > 0.0);
    // --channels-last applies to both rows (burn's CPU backend has one layout: it runs as is).
    let out = run(&[&args[..], &["--channels-last", "--resident", "--json"]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        engines(&rows),
        [
            "burn (cpu, channels-last)",
            "burn (cpu, channels-last, resident)"
        ]
    );
}

/// The README's command list and `arcface --help` name the same subcommands: a command added,
/// renamed or removed on one side only fails here.
#[test]
fn readme_and_help_list_the_same_subcommands() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme
        .split("\n## Commands\n")
        .nth(1)
        .expect("README has a `## Commands` section");
    let section = section.split("\n## ").next().unwrap();
    let documented: std::collections::BTreeSet<String> = section
        .lines()
        .filter_map(|l| l.strip_prefix("    arcface "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(String::from)
        .collect();
    let help = run(&["--help"]);
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let listed: std::collections::BTreeSet<String> = help
        .split("Commands:")
        .nth(1)
        .expect("--help lists the commands")
        .split("\n\n")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(String::from)
        .collect();
    assert!(listed.len() >= 10, "{help}");
    assert_eq!(
        documented, listed,
        "README's `## Commands` and `arcface --help`"
    );
}

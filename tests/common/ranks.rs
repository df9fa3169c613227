//! Running the `arcface` binary as ranks of a distributed run, for tests/distributed.rs and
//! tests/elastic.rs: small configs on LibTorch's CPU, the launch variables, torchrun, and what
//! a run leaves (its log's losses, its checkpoints whole with their head shards).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use arcface::checkpoint::Checkpoint;

/// A port nobody listens on now (asked of the OS).
pub fn free_port() -> u16 {
    arcface::distributed::spawn::free_port().unwrap()
}

/// The variables torchrun sets, for rank `rank` of `world` on one machine.
pub fn rank_env(command: &mut Command, rank: usize, world: usize, port: u16) -> &mut Command {
    command
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("LOCAL_WORLD_SIZE", world.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        // Two cores for all ranks (and the tests beside them).
        .env("OMP_NUM_THREADS", "1")
}

/// 20 synthetic identities × 6 images (120), made once per data folder.
pub fn data(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    super::small_synthetic(&data);
    data
}

/// A tiny-network config on LibTorch's CPU over `data`, writing to `output`; `extra` lines
/// override.
pub fn config(dir: &Path, name: &str, data: &Path, output: &Path, extra: &str) -> PathBuf {
    let mut text = format!(
        "network = \"tiny\"\nembedding_size = 32\nscale = 16.0\nmargin_list = [1.0, 0.3, 0.0]\n\
         rec = {data:?}\nval_targets = [\"synth_val\"]\noutput = {output:?}\n\
         verbose = 1000\nnum_workers = 1\nkeep_checkpoints = 20\n\
         device = \"libtorch-cpu\"\n"
    );
    for (key, default) in [
        ("batch_size", "4"),
        ("lr", "0.05"),
        ("num_epoch", "2"),
        ("save_every", "3"),
        ("dropout", "0.0"),
        ("dist_timeout", "60"),
        ("frequent", "1"),
        ("lr_steps", "[40]"),
    ] {
        if !extra.contains(&format!("{key} =")) {
            text.push_str(&format!("{key} = {default}\n"));
        }
    }
    text.push_str(extra);
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

pub fn arcface(args: &[&str]) -> Command {
    let mut command = super::arcface();
    command
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .stdin(Stdio::null());
    for name in arcface::distributed::VARIABLES {
        command.env_remove(name);
    }
    command
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn run_ok(command: &mut Command) -> String {
    let out = command.output().unwrap();
    let text = text(&out);
    assert!(out.status.success(), "{command:?} failed:\n{text}");
    text
}

/// The losses of `training.log` by step ("step 3/30 epoch 0 loss 12.9844 ...", every step at
/// frequent = 1).
pub fn losses(output: &Path) -> BTreeMap<usize, String> {
    let log = std::fs::read_to_string(output.join("training.log")).unwrap();
    log.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("step ")?;
            let step: usize = rest.split('/').next()?.parse().ok()?;
            let loss = super::word_after(rest, " loss ")?.to_string();
            Some((step, loss))
        })
        .collect()
}

pub fn tensors(path: &Path) -> BTreeMap<String, Vec<f32>> {
    Checkpoint::load(path)
        .unwrap()
        .tensors
        .into_iter()
        .map(|(k, v)| (k, v.try_to_vec::<f32>().unwrap()))
        .collect()
}

pub fn step_ckpt(output: &Path, step: usize) -> PathBuf {
    arcface::checkpoint::step_path(output, step)
}

/// Starts the ranks of `cfg` by hand with the launch variables (as a Slurm script does).
pub fn start_ranks(cfg: &Path, world: usize, port: u16, extra: &[&str]) -> Vec<Child> {
    (0..world)
        .map(|rank| {
            let mut args = vec!["train", "--config", cfg.to_str().unwrap()];
            args.extend_from_slice(extra);
            let mut command = arcface(&args);
            rank_env(&mut command, rank, world, port)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect()
}

/// The checkpoint at `path` loaded with its whole head (every shard checked against its
/// manifest): its tensors, the head's as `head.weight` and its optimiser buffers
/// (`momentum.head.weight`, …) of all classes.
pub fn whole_head(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let ckpt = Checkpoint::load(path).unwrap_or_else(|e| panic!("{e}"));
    let classes = ckpt.meta.num_classes;
    let (weight, buffers) = arcface::checkpoint::shards::head_rows(path, &ckpt, 0, classes)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut all: BTreeMap<String, Vec<f32>> = ckpt
        .tensors
        .into_iter()
        .map(|(k, v)| (k, v.try_to_vec::<f32>().unwrap()))
        .collect();
    all.insert("head.weight".into(), weight.try_to_vec::<f32>().unwrap());
    for (name, buffer) in buffers {
        all.insert(name, buffer.try_to_vec::<f32>().unwrap());
    }
    all
}

/// torchrun from the venv of scripts/setup-libtorch.sh (or PATH).
pub fn torchrun() -> Command {
    let venv = std::env::var_os("VIRTUAL_ENV").map(PathBuf::from);
    let path = venv
        .map(|v| v.join("bin/torchrun"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("torchrun"));
    let mut command = Command::new(path);
    command.env("OMP_NUM_THREADS", "1").stdin(Stdio::null());
    for name in arcface::distributed::VARIABLES {
        command.env_remove(name);
    }
    command
}

/// `kill -<name> <pid>`.
pub fn signal(pid: u32, name: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// Waits until `output`'s training.log shows step `step`.
pub fn wait_for_step(output: &Path, step: usize, child: &mut Child) {
    let waited = Instant::now();
    let last = || match output.join("training.log").exists() {
        true => losses(output).keys().next_back().copied(),
        false => None,
    };
    while last().is_none_or(|s| s < step) {
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        assert!(
            waited.elapsed() < Duration::from_secs(120),
            "no step {step}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `arcface train --config cfg --nproc-per-node 2 extra…`: two ranks started by arcface itself.
pub fn two_ranks(cfg: &Path, extra: &[&str]) -> Command {
    let mut args = vec![
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--nproc-per-node",
        "2",
    ];
    args.extend_from_slice(extra);
    arcface(&args)
}

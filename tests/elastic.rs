//! Distributed runs that survive what clusters do to them (`--features tch`: LibTorch's CPU,
//! Gloo, several processes on 127.0.0.1): SIGTERM to the launcher or to one rank (every rank
//! stops at the same step with a checkpoint, exit 75, and `--resume auto` continues exactly),
//! a rank killed with -9 under `torchrun --max-restarts` (the job ends as an uninterrupted
//! run), ranks that share no disk (rank 0's folder alone holds the checkpoint, and the run
//! resumes from it), and a second signal that ends a rank at once.
#![cfg(feature = "tch")]

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::ranks::*;

/// A run that goes on for hundreds of steps unless stopped; checkpoints only when told to.
const LONG: &str = "num_epoch = 50\nsave_every = 1000\nlr_steps = [100000]\n";

fn wait_exit(child: Child, within: Duration) -> std::process::Output {
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < within, "took {:?}", started.elapsed());
    out
}

/// SIGTERM to `arcface train --nproc-per-node 2` (a scheduler stopping the job, or Ctrl-C):
/// it goes on to both ranks, which finish their step, write one checkpoint together and exit
/// with 75, and so does the launcher; `--resume auto` continues with the losses and ends with
/// the weights (every rank's head shard too) of an uninterrupted run.
#[test]
fn sigterm_to_the_launcher_checkpoints_and_resume_auto_continues_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let (straight, stopped) = (dir.path().join("straight"), dir.path().join("stopped"));
    let a = config(dir.path(), "a.toml", &data, &straight, LONG);
    let b = config(dir.path(), "b.toml", &data, &stopped, LONG);
    run_ok(&mut two_ranks(&a, &["--max-steps", "16"]));

    let mut launcher = two_ranks(&b, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_step(&stopped, 5, &mut launcher);
    signal(launcher.id(), "TERM");
    let out = wait_exit(launcher, Duration::from_secs(60));
    let said = text(&out);
    assert_eq!(out.status.code(), Some(75), "{said}");
    assert!(
        said.contains("2 of 2 ranks stopped on a signal with a checkpoint"),
        "{said}"
    );
    let path = arcface::checkpoint::list(&stopped)
        .pop()
        .expect("a checkpoint");
    let step = arcface::checkpoint::Checkpoint::read_meta(&path)
        .unwrap()
        .step;
    assert!((5..16).contains(&step), "stopped at step {step}");
    assert!(
        said.contains(&format!("stopped by SIGTERM at step {step}")),
        "{said}"
    );
    whole_head(&path);

    let more = (16 - step).to_string();
    run_ok(&mut two_ranks(
        &b,
        &["--resume", "auto", "--max-steps", &more],
    ));
    assert_eq!(losses(&straight), losses(&stopped));
    assert_eq!(
        whole_head(&step_ckpt(&straight, 16)),
        whole_head(&step_ckpt(&stopped, 16))
    );
}

/// The worker processes torchrun (`pid`) started.
fn children_of(pid: u32) -> Vec<u32> {
    let list = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    list.split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

/// `torchrun --max-restarts=2 … arcface train --resume auto` with one rank killed (-9) after
/// step 6's checkpoint: torchrun restarts the group, the ranks resume from the newest
/// checkpoint (at most save_every steps recomputed), the job exits 0, and its final checkpoint
/// holds the tensors of an uninterrupted run.
#[test]
fn torchrun_restarts_a_killed_rank_and_the_job_ends_as_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let (straight, restarted) = (dir.path().join("straight"), dir.path().join("restarted"));
    let extra = "num_epoch = 3\n";
    let a = config(dir.path(), "a.toml", &data, &straight, extra);
    let b = config(dir.path(), "b.toml", &data, &restarted, extra);
    run_ok(&mut two_ranks(&a, &[]));

    let exe = env!("CARGO_BIN_EXE_arcface");
    let mut job = torchrun()
        .args([
            "--nproc_per_node=2",
            "--max-restarts=2",
            "--monitor-interval=0.2",
        ])
        .args([
            "--master_addr=127.0.0.1",
            &format!("--master_port={}", free_port()),
        ])
        .args(["--no-python", exe, "train", "--config"])
        .arg(&b)
        .args(["--resume", "auto"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("torchrun: {e} (scripts/setup-libtorch.sh installs it)"));
    let waited = Instant::now();
    while !step_ckpt(&restarted, 6).exists() {
        assert!(job.try_wait().unwrap().is_none(), "the job ended early");
        assert!(waited.elapsed() < Duration::from_secs(120), "no step 6");
        std::thread::sleep(Duration::from_micros(500));
    }
    let workers = children_of(job.id());
    assert_eq!(workers.len(), 2, "{workers:?}");
    signal(workers[1], "KILL");
    let out = wait_exit(job, Duration::from_secs(300));
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    let log = std::fs::read_to_string(restarted.join("training.log")).unwrap();
    let resumed = log
        .lines()
        .find_map(|l| l.split("resumed from ").nth(1))
        .unwrap_or_else(|| panic!("no resume in:\n{log}"));
    let at: usize = common::word_after(resumed, "at step ")
        .unwrap()
        .parse()
        .unwrap();
    assert!(at >= 6, "{resumed}");
    // 120 images, 8 per step: 15 steps an epoch, 45 in all.
    assert_eq!(
        whole_head(&step_ckpt(&straight, 45)),
        whole_head(&step_ckpt(&restarted, 45))
    );
    assert_eq!(losses(&straight), losses(&restarted));
}

/// Two "machines" that share no disk: each rank runs in a folder of its own with the same
/// config (`output = "out"`, relative). Only rank 0's folder gets checkpoints (every rank's head
/// shard in it); `--resume auto` resumes both ranks from it, the losses those of a run in one
/// shared folder. SIGUSR1 to rank 1 alone then stops both at the same step, each exiting 75,
/// with a checkpoint in rank 0's folder.
#[test]
fn ranks_without_a_shared_disk_resume_from_rank_0s_folder() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let shared = dir.path().join("shared");
    let a = config(dir.path(), "a.toml", &data, &shared, "");
    run_ok(&mut two_ranks(&a, &["--max-steps", "6"]));

    let machines = [dir.path().join("machine0"), dir.path().join("machine1")];
    let cfg = config(dir.path(), "apart.toml", &data, Path::new("out"), "");
    let run = |extra: &[&str]| -> Vec<Child> {
        let port = free_port();
        (0..2)
            .map(|rank| {
                std::fs::create_dir_all(&machines[rank]).unwrap();
                let mut args = vec!["train", "--config", cfg.to_str().unwrap()];
                args.extend_from_slice(extra);
                let mut command = arcface(&args);
                rank_env(&mut command, rank, 2, port)
                    .current_dir(&machines[rank])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect()
    };
    let finish = |children: Vec<Child>| {
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{}", text(&out));
        }
    };
    finish(run(&["--max-steps", "3"]));
    let (out0, out1) = (machines[0].join("out"), machines[1].join("out"));
    let names = |d: &Path| -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(d)
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        n.sort();
        n
    };
    for name in [
        "step-000000003.ckpt",
        "step-000000003.ckpt.head-0-of-2",
        "step-000000003.ckpt.head-1-of-2",
    ] {
        assert!(
            names(&out0).contains(&name.to_string()),
            "{:?}",
            names(&out0)
        );
    }
    assert!(
        names(&out1).iter().all(|n| !n.starts_with("step-")),
        "rank 1 wrote {:?}",
        names(&out1)
    );
    finish(run(&["--resume", "auto", "--max-steps", "3"]));
    assert_eq!(losses(&shared), losses(&out0));
    assert_eq!(
        whole_head(&step_ckpt(&shared, 6)),
        whole_head(&step_ckpt(&out0, 6))
    );

    // SIGUSR1 (Slurm's warning before the time limit) to rank 1 alone: both stop at one step.
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("num_epoch = 2", "num_epoch = 50"),
    )
    .unwrap();
    let mut children = run(&["--resume", "auto"]);
    wait_for_step(&out0, 9, &mut children[0]);
    signal(children[1].id(), "USR1");
    let mut said = Vec::new();
    for child in children {
        let out = wait_exit(child, Duration::from_secs(60));
        assert_eq!(out.status.code(), Some(75), "{}", text(&out));
        said.push(text(&out));
    }
    let step = arcface::checkpoint::list(&out0)
        .iter()
        .map(|p| arcface::checkpoint::Checkpoint::read_meta(p).unwrap().step)
        .max()
        .unwrap();
    assert!(step >= 9, "stopped at {step}");
    assert!(
        said[0].contains(&format!(
            "stopped by a signal to another rank at step {step}"
        )),
        "{}",
        said[0]
    );
    assert!(
        said[1].contains("SIGUSR1: finishing this step")
            && said[1].contains("in rank 0's output folder"),
        "{}",
        said[1]
    );
    whole_head(&step_ckpt(&out0, step));
}

/// Whether a socket of this machine listens on TCP `port` (read from /proc, not by connecting:
/// a connect polled at a port nobody listens on yet can connect to itself and take the port).
fn listening(port: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let local_port = fields.get(1).and_then(|a| a.rsplit(':').next());
                local_port.and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port)
                    && fields.get(3) == Some(&"0A")
            })
    })
}

/// A second signal, 2 s or more after the first, ends a rank at once (128 + SIGTERM), here one
/// still waiting at the rendezvous for a rank that never comes.
#[test]
fn a_second_signal_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let cfg = config(dir.path(), "alone.toml", &data, &dir.path().join("out"), "");
    let mut command = arcface(&["train", "--config", cfg.to_str().unwrap()]);
    let port = free_port();
    let mut child = rank_env(&mut command, 0, 2, port)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Rank 0 serves the rendezvous once it has started (the signals are taken before that).
    let waited = Instant::now();
    while !listening(port) {
        assert!(child.try_wait().unwrap().is_none(), "rank 0 ended early");
        assert!(waited.elapsed() < Duration::from_secs(60), "no rendezvous");
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(child.id(), "TERM");
    std::thread::sleep(Duration::from_millis(2500));
    let again = Instant::now();
    signal(child.id(), "TERM");
    let out = wait_exit(child, Duration::from_secs(10));
    assert!(again.elapsed() < Duration::from_secs(5));
    let said = text(&out);
    assert_eq!(out.status.code(), Some(128 + 15), "{said}");
    assert!(
        said.contains("SIGTERM again: exiting now, without a checkpoint"),
        "{said}"
    );
    assert!(arcface::checkpoint::list(&dir.path().join("out")).is_empty());
}

/// Three records that fail to decode, met by either rank: every rank learns every key (rank 0's
/// log names them all, once), the count is over the ranks, and the run trains through them.
#[test]
fn two_ranks_skip_undecodable_records_and_count_them_together() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let broken = [5u64, 40, 77];
    common::break_images(&data, &broken);
    let output = dir.path().join("out");
    let cfg = config(dir.path(), "bad.toml", &data, &output, "num_epoch = 3\n");
    let said = run_ok(&mut two_ranks(&cfg, &[]));
    let log = std::fs::read_to_string(output.join("training.log")).unwrap();
    for key in broken {
        let named = log.matches(&format!("key {key}")).count();
        assert_eq!(named, 1, "key {key} named {named} times in:\n{log}\n{said}");
    }
    assert!(log.contains("3 record(s) skipped so far"), "{log}");
    // Rank 1 met some of them: their keys reached rank 0 over the group.
    assert!(log.contains("on rank 1, which does not decode"), "{log}");
    let last = arcface::checkpoint::list(&output).pop().unwrap();
    let mut skipped = arcface::checkpoint::Checkpoint::read_meta(&last)
        .unwrap()
        .skipped_records;
    skipped.sort();
    assert_eq!(skipped, broken);
}

//! Runs that survive what happens to them, one process on burn's CPU backend (the several-rank
//! cases are in tests/distributed.rs): a second run in the same folder, `--resume auto`,
//! `--overwrite`, a stop signal, and records that fail to decode mid-run.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::break_images;
use common::ranks::{self, arcface, losses, signal, text, wait_for_step};

use arcface::checkpoint::{Checkpoint, step_path};

fn run_ok(args: &[&str]) -> String {
    ranks::run_ok(&mut arcface(args))
}

/// configs/tiny.toml (the README's main command) with its data and output folders moved into
/// `dir`: the small synthetic set (120 images, so 3 steps of 32 per epoch) and `dir/out`.
fn readme_config(dir: &Path, extra: &str) -> PathBuf {
    let data = dir.join("data");
    common::small_synthetic(&data);
    readme_config_on(dir, &data, extra)
}

/// [`readme_config`] training on `data`.
fn readme_config_on(dir: &Path, data: &Path, extra: &str) -> PathBuf {
    let shipped = std::fs::read_to_string(common::root().join("configs/tiny.toml")).unwrap();
    let mut text = String::new();
    let replaced: Vec<&str> = extra
        .lines()
        .filter_map(|l| Some(l.split_once('=')?.0.trim()))
        .collect();
    for line in shipped.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        match key {
            _ if replaced.contains(&key) => {}
            "rec" => text.push_str(&format!("rec = {data:?}\n")),
            "output" => text.push_str(&format!("output = {:?}\n", dir.join("out"))),
            "[synthetic]" => {
                text.push_str(extra);
                text.push_str(line);
                text.push('\n');
            }
            _ => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    let path = dir.join("tiny.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut all = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                all.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    all
}

/// The README's main command run a second time in the same folder refuses within seconds,
/// before any work, saying what the folder holds and the three ways on; the first run's files
/// are byte for byte as they were. Then the ways on: `--resume auto` continues the run, and
/// `--overwrite` starts a new one after removing the old one's files (and only those).
#[test]
fn a_second_run_in_the_same_folder_is_refused_and_the_first_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = readme_config(dir.path(), "");
    let cfg = cfg.to_str().unwrap();
    let out = dir.path().join("out");
    run_ok(&["train", "--config", cfg, "--max-steps", "2"]);
    let first = Checkpoint::read_meta(&step_path(&out, 2)).unwrap();
    let run = first.run.clone().expect("a fresh run is named");
    std::fs::write(out.join("notes.txt"), b"the user's own file").unwrap();
    let before = snapshot(&out);

    let started = Instant::now();
    let again = arcface(&["train", "--config", cfg]).output().unwrap();
    let took = started.elapsed();
    let said = text(&again);
    assert_eq!(again.status.code(), Some(1), "{said}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    for part in [
        "holds an earlier training run",
        "1 step checkpoint(s) (steps 2 … 2, run r",
        "training.log",
        "--resume auto",
        "`output = ",
        "--overwrite",
    ] {
        assert!(said.contains(part), "no `{part}` in:\n{said}");
    }
    assert!(snapshot(&out) == before, "the first run's files changed");

    // Continue it: the same run, from step 2.
    run_ok(&[
        "train",
        "--config",
        cfg,
        "--resume",
        "auto",
        "--max-steps",
        "1",
    ]);
    let log = std::fs::read_to_string(out.join("training.log")).unwrap();
    assert!(
        log.contains("resumed from") && log.contains("at step 2 (epoch 0, sample 64"),
        "{log}"
    );
    let third = Checkpoint::read_meta(&step_path(&out, 3)).unwrap();
    assert_eq!(third.run.as_deref(), Some(run.as_str()));

    // Start over: the old run's files go, the user's stay, the new run has a new name.
    let said = run_ok(&["train", "--config", cfg, "--overwrite", "--max-steps", "1"]);
    assert!(
        said.contains("--overwrite: removed the earlier run's files"),
        "{said}"
    );
    assert_eq!(arcface::checkpoint::list(&out), vec![step_path(&out, 1)]);
    let new = Checkpoint::read_meta(&step_path(&out, 1)).unwrap();
    assert!(new.run.is_some() && new.run != Some(run), "{:?}", new.run);
    assert_eq!(
        std::fs::read(out.join("notes.txt")).unwrap(),
        b"the user's own file"
    );
    let log = std::fs::read_to_string(out.join("training.log")).unwrap();
    assert!(
        !log.contains("resumed from"),
        "the old run's log is gone:\n{log}"
    );
    let events = std::fs::read_dir(out.join("tensorboard")).unwrap().count();
    assert_eq!(events, 1, "one run's TensorBoard events");
}

/// `--resume auto` starts fresh in an empty folder and continues from the newest whole
/// checkpoint after; a damaged newest checkpoint is skipped with a warning for the one before;
/// a checkpoint of another network in the folder is refused by name; `--resume FILE` older
/// than the folder's newest of the same run is refused.
#[test]
fn resume_auto_starts_or_continues_and_skips_a_damaged_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = readme_config(dir.path(), "save_every = 1\nkeep_checkpoints = 5\n");
    let cfg = cfg.to_str().unwrap();
    let out = dir.path().join("out");
    // A backbone to fine-tune from: --init with --resume auto is used while the run is fresh.
    let source = tempfile::tempdir().unwrap();
    let source_cfg = readme_config(source.path(), "");
    run_ok(&[
        "train",
        "--config",
        source_cfg.to_str().unwrap(),
        "--max-steps",
        "1",
    ]);
    let init = step_path(&source.path().join("out"), 1);
    let init = init.to_str().unwrap();
    let fresh = ["train", "--config", cfg, "--resume", "auto", "--init", init];
    let said = run_ok(&[&fresh[..], &["--max-steps", "2"]].concat());
    assert!(said.contains("--resume auto: no checkpoint in"), "{said}");
    assert!(
        said.contains(&format!("backbone initialised from {init}")),
        "{said}"
    );
    // Damage step 2: auto takes step 1 and says why.
    let two = step_path(&out, 2);
    let mut bytes = std::fs::read(&two).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x5a;
    std::fs::write(&two, bytes).unwrap();
    let said = run_ok(&[&fresh[..], &["--max-steps", "1"]].concat());
    assert!(said.contains(&format!("--init {init} not used")), "{said}");
    assert!(
        said.contains(&format!("warning: skipping {}", two.display()))
            && said.contains("checksum mismatch"),
        "{said}"
    );
    let log = std::fs::read_to_string(out.join("training.log")).unwrap();
    assert!(log.contains("at step 1 (epoch 0"), "{log}");
    // The rewritten step 2 is whole again.
    Checkpoint::load(&two).unwrap();

    // An explicit older checkpoint of the same run, with later ones in the folder.
    let one = step_path(&out, 1);
    let o = arcface(&["train", "--config", cfg, "--resume", one.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o).contains("holds a later checkpoint of this run"),
        "{}",
        text(&o)
    );

    // A config of another network for the same folder.
    let other = std::fs::read_to_string(cfg)
        .unwrap()
        .replace("network = \"tiny\"", "network = \"r18\"");
    let other_cfg = dir.path().join("r18.toml");
    std::fs::write(&other_cfg, other).unwrap();
    let o = arcface(&[
        "train",
        "--config",
        other_cfg.to_str().unwrap(),
        "--resume",
        "auto",
    ])
    .output()
    .unwrap();
    let said = text(&o);
    assert!(!o.status.success(), "{said}");
    assert!(
        said.contains("a checkpoint of network tiny, this run's is r18"),
        "{said}"
    );
    // --init with --resume FILE is a contradiction; with auto it is used only when fresh.
    let o = arcface(&[
        "train",
        "--config",
        cfg,
        "--resume",
        "--init",
        one.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(text(&o).contains("--init starts a new run and --resume continues one"));
}

/// SIGTERM mid-epoch: the step ends, a checkpoint of it is written, the exit status is 75
/// ("resume me") within a step and a checkpoint's time; `--resume auto` then continues with
/// the losses of an uninterrupted run. SIGINT (Ctrl-C) before the first checkpoint leaves a
/// resumable one, of the step under way.
#[test]
fn sigterm_checkpoints_and_resume_auto_continues_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "frequent = 1\nnum_epoch = 40\nlr_steps = [100000]\n";
    let cfg = readme_config(dir.path(), extra);
    let out = dir.path().join("out");
    let straight_dir = tempfile::tempdir().unwrap();
    let straight_cfg = readme_config(straight_dir.path(), extra);
    let straight = straight_dir.path().join("out");
    run_ok(&[
        "train",
        "--config",
        straight_cfg.to_str().unwrap(),
        "--max-steps",
        "12",
    ]);

    let args = ["train", "--config", cfg.to_str().unwrap()];
    let mut child = arcface(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_step(&out, 4, &mut child);
    signal(child.id(), "TERM");
    let sent = Instant::now();
    let done = child.wait_with_output().unwrap();
    let took = sent.elapsed();
    let said = text(&done);
    assert_eq!(done.status.code(), Some(75), "{said}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let stopped = arcface::checkpoint::list(&out).pop().expect("a checkpoint");
    let step = Checkpoint::read_meta(&stopped).unwrap().step;
    assert!(
        said.contains(&format!("stopped by SIGTERM at step {step}"))
            && said.contains("--resume auto"),
        "{said}"
    );
    assert!((4..12).contains(&step), "stopped at step {step}");

    let more = (12 - step).to_string();
    run_ok(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--resume",
        "auto",
        "--max-steps",
        &more,
    ]);
    assert_eq!(losses(&out), losses(&straight));
    let ours = Checkpoint::load(&step_path(&out, 12)).unwrap().tensors;
    let theirs = Checkpoint::load(&step_path(&straight, 12)).unwrap().tensors;
    assert!(
        ours == theirs,
        "the final weights differ from an uninterrupted run's"
    );

    // Before the first checkpoint: as soon as the output folder exists (the signals are taken
    // by then; the first step is still ahead or under way).
    let early = tempfile::tempdir().unwrap();
    let cfg = readme_config(early.path(), extra);
    let out = early.path().join("out");
    let mut child = arcface(&["train", "--config", cfg.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let waited = Instant::now();
    while !out.exists() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "no output folder"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    signal(child.id(), "INT");
    let done = child.wait_with_output().unwrap();
    let said = text(&done);
    assert_eq!(done.status.code(), Some(75), "{said}");
    let written = arcface::checkpoint::list(&out);
    assert_eq!(written.len(), 1, "{written:?}");
    let step = Checkpoint::load(&written[0]).unwrap().meta.step;
    assert!(step <= 2, "stopped at step {step}");
    assert!(
        said.contains(&format!("stopped by SIGINT at step {step}")),
        "{said}"
    );
}

/// Three records that fail to decode: `inspect --verify` lists them beforehand; training goes
/// through them, naming each once with its key and counting them; with max_skipped_records = 2
/// it stops at the third, naming it.
#[test]
fn undecodable_records_are_skipped_named_and_limited() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::small_synthetic(&data);
    let broken = [5u64, 40, 77];
    break_images(&data, &broken);
    let o = arcface(&["inspect", data.to_str().unwrap(), "--verify"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    for key in broken {
        assert!(text(&o).contains(&format!("key {key}:")), "{}", text(&o));
    }

    // Four epochs of 120 images (96 of them each): each broken record is met in several,
    // named and counted once.
    let cfg = readme_config_on(dir.path(), &data, "num_epoch = 4\n");
    let said = run_ok(&["train", "--config", cfg.to_str().unwrap()]);
    let log = std::fs::read_to_string(dir.path().join("out/training.log")).unwrap();
    for key in broken {
        let named = format!("key {key}: ");
        assert_eq!(log.matches(&named).count(), 1, "{named} in:\n{log}\n{said}");
    }
    assert!(
        log.contains("3 record(s) skipped so far (at most max_skipped_records = 100)"),
        "{log}"
    );
    let last = arcface::checkpoint::list(&dir.path().join("out"))
        .pop()
        .unwrap();
    let mut skipped = Checkpoint::read_meta(&last).unwrap().skipped_records;
    skipped.sort();
    assert_eq!(skipped, broken);

    let limited = tempfile::tempdir().unwrap();
    let cfg = readme_config_on(
        limited.path(),
        &data,
        "num_epoch = 4\nmax_skipped_records = 2\n",
    );
    let o = arcface(&["train", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let said = text(&o);
    assert_eq!(o.status.code(), Some(1), "{said}");
    assert!(
        said.contains("3 records of") && said.contains("more than max_skipped_records = 2"),
        "{said}"
    );
    assert!(
        said.contains("inspect") && said.contains("--verify"),
        "{said}"
    );
    assert!(
        broken.iter().any(|k| said.contains(&format!("keys {k}"))),
        "{said}"
    );
}

/// A run killed (-9) after it logged steps beyond its last checkpoint, then resumed with
/// `--resume auto`: TensorBoard's own reader shows every step once, the resumed run's (its
/// SessionLog START discards the killed run's later steps).
#[test]
fn a_killed_and_resumed_run_shows_each_step_once_in_tensorboard() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "frequent = 1\nnum_epoch = 40\nsave_every = 4\nlr_steps = [100000]\n";
    let cfg = readme_config(dir.path(), extra);
    let out = dir.path().join("out");
    let mut child = arcface(&["train", "--config", cfg.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_step(&out, 6, &mut child);
    signal(child.id(), "KILL");
    child.wait().unwrap();
    let logged = *losses(&out).keys().next_back().unwrap();
    let saved = Checkpoint::read_meta(&arcface::checkpoint::list(&out).pop().unwrap())
        .unwrap()
        .step;
    assert!(
        logged > saved,
        "logged {logged}, saved {saved}: nothing to discard"
    );
    let more = (12 - saved).to_string();
    let args = [
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--resume",
        "auto",
    ];
    run_ok(&[&args[..], &["--max-steps", &more]].concat());

    let tags = common::tensorboard_scalars(&out.join("tensorboard"));
    let steps: Vec<u64> = tags["train/loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=12).collect::<Vec<u64>>(), "{tags}");
}

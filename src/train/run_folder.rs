//! A run's output folder is its own. Before any work, rank 0 looks at what the folder holds and
//! decides how the run starts: fresh (the folder holds no run; or `--overwrite` removed the
//! earlier run's files first), or from a checkpoint (`--resume auto`, `--resume`, `--resume
//! FILE`) whose run is the only one in the folder. Every checkpoint carries its run's name, so
//! pruning and best.ckpt only ever touch this run's files.
//!
//! Why refuse rather than start a second folder (AdaFace's way): the config's `output` is where
//! users, `eval --model DIR`, TensorBoard and restarting launchers look, and a restarted job
//! that forgot `--resume auto` should stop in seconds, not train from scratch beside its run.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use super::Resume;
use crate::checkpoint::{self, Checkpoint, CheckpointError, Meta};

/// What an output folder holds of training runs.
#[derive(Debug, Default)]
pub struct Survey {
    /// Step checkpoints, by step, each with its header (Err: unreadable).
    pub checkpoints: Vec<(PathBuf, Result<Meta, CheckpointError>)>,
    pub best: Option<(PathBuf, Result<Meta, CheckpointError>)>,
    /// Head shards, temporary files of interrupted writes, training.log, TensorBoard events.
    pub others: Vec<PathBuf>,
}

const LOG: &str = "training.log";
const EVENTS: &str = "tensorboard";

impl Survey {
    pub fn of(dir: &Path) -> Survey {
        let mut survey = Survey {
            checkpoints: checkpoint::list(dir)
                .into_iter()
                .map(|p| {
                    let meta = Checkpoint::read_meta(&p);
                    (p, meta)
                })
                .collect(),
            ..Survey::default()
        };
        let best = dir.join("best.ckpt");
        if best.is_file() {
            let meta = Checkpoint::read_meta(&best);
            survey.best = Some((best, meta));
        }
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let of_a_run = (name.starts_with("step-") && !name.ends_with(".ckpt"))
                || name == "best.ckpt.tmp"
                || name == LOG;
            if of_a_run {
                survey.others.push(entry.path());
            }
        }
        for entry in std::fs::read_dir(dir.join(EVENTS))
            .into_iter()
            .flatten()
            .flatten()
        {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with("events.out.tfevents")
            {
                survey.others.push(entry.path());
            }
        }
        survey.others.sort();
        survey
    }

    pub fn is_empty(&self) -> bool {
        self.checkpoints.is_empty() && self.best.is_none() && self.others.is_empty()
    }

    /// "3 step checkpoints (steps 800 … 1186, run r-…), best.ckpt (accuracy 0.97), training.log
    /// and 2 TensorBoard event files".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let (Some(first), Some(last)) = (self.checkpoints.first(), self.checkpoints.last()) {
            let step = |m: &Result<Meta, CheckpointError>| match m {
                Ok(m) => m.step.to_string(),
                Err(_) => "unreadable".into(),
            };
            let run = match &last.1 {
                Ok(Meta { run: Some(r), .. }) => format!(", run {r}"),
                _ => String::new(),
            };
            parts.push(format!(
                "{} step checkpoint(s) (steps {} … {}{run})",
                self.checkpoints.len(),
                step(&first.1),
                step(&last.1)
            ));
        }
        if let Some((_, meta)) = &self.best {
            parts.push(match meta.as_ref().ok().and_then(|m| m.accuracy) {
                Some(a) => format!("best.ckpt (accuracy {a:.4})"),
                None => "best.ckpt".into(),
            });
        }
        let named = |want: &dyn Fn(&str) -> bool| {
            self.others
                .iter()
                .filter(|p| want(&p.file_name().unwrap_or_default().to_string_lossy()))
                .count()
        };
        if named(&|n| n == LOG) > 0 {
            parts.push(LOG.into());
        }
        let events = named(&|n| n.starts_with("events.out"));
        if events > 0 {
            parts.push(format!("{events} TensorBoard event file(s)"));
        }
        let rest = self.others.len() - events - named(&|n| n == LOG);
        if rest > 0 {
            parts.push(format!("{rest} head shard or partial file(s)"));
        }
        parts.join(", ")
    }

    /// Deletes every file listed (`--overwrite`); the folder's other files stay.
    pub fn remove(&self) -> Result<()> {
        let files = self.checkpoints.iter().map(|(p, _)| p);
        for path in files
            .chain(self.best.iter().map(|(p, _)| p))
            .chain(&self.others)
        {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    bail!("--overwrite: removing {}: {e}", path.display())
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// How the run starts, as rank 0 found it.
pub struct Claim {
    /// The checkpoint to continue from, checked whole (None: a fresh start).
    pub from: Option<(PathBuf, Checkpoint)>,
    /// The run's name: the resumed checkpoint's, or a new one.
    pub run: Option<String>,
}

/// Decides how the run writing into `output` starts (rank 0, before any work); what it did for
/// the log goes onto `notes`.
pub fn claim(
    output: &Path,
    resume: &Option<Resume>,
    overwrite: bool,
    notes: &mut Vec<String>,
) -> Result<Claim> {
    let held = Survey::of(output);
    let Some(resume) = resume else {
        if !held.is_empty() {
            if !overwrite {
                bail!("{}", refusal(output, &held));
            }
            held.remove()?;
            notes.push(format!(
                "--overwrite: removed the earlier run's files from {}: {}",
                output.display(),
                held.describe()
            ));
        }
        return Ok(fresh());
    };
    if overwrite {
        bail!("--overwrite starts a new run and --resume continues one: give one of them");
    }
    let from = match resume {
        Resume::Path(path) => Some((path.clone(), checkpoint::verify(path)?)),
        Resume::Latest | Resume::Auto => newest_whole(&held, notes),
    };
    let Some((path, ckpt)) = from else {
        let damaged = held.checkpoints.len();
        if damaged > 0 {
            bail!(
                "{}: none of its {damaged} step checkpoint(s) is whole (each said why above); \
                 nothing to resume. Start over with --overwrite, or restore a checkpoint",
                output.display()
            );
        }
        if matches!(resume, Resume::Latest) {
            bail!(
                "--resume: no step-*.ckpt in {} (--resume auto starts fresh then)",
                output.display()
            );
        }
        if held.best.is_some() {
            bail!("{}", refusal(output, &held));
        }
        notes.push(format!(
            "--resume auto: no checkpoint in {} yet: starting from step 0",
            output.display()
        ));
        return Ok(fresh());
    };
    let explicit = matches!(resume, Resume::Path(_));
    only_this_run(output, &held, &path, &ckpt.meta, explicit)?;
    Ok(Claim {
        run: ckpt.meta.run.clone(),
        from: Some((path, ckpt)),
    })
}

fn fresh() -> Claim {
    Claim {
        from: None,
        run: Some(new_run_name()),
    }
}

/// "r20261206-134502-3fa9": when it started (UTC) and a few random digits, so that two runs
/// started in the same second differ.
fn new_run_name() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let noise = (now.subsec_nanos() ^ std::process::id().rotate_left(16)) & 0xffff;
    format!(
        "r{y:04}{m:02}{d:02}-{:02}{:02}{:02}-{noise:04x}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// The calendar date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`; no
/// date crate for one line of a name).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The newest step checkpoint that is whole (main file and shards), the damaged ones after it
/// skipped with a warning each.
fn newest_whole(held: &Survey, notes: &mut Vec<String>) -> Option<(PathBuf, Checkpoint)> {
    for (path, _) in held.checkpoints.iter().rev() {
        match checkpoint::verify(path) {
            Ok(ckpt) => return Some((path.clone(), ckpt)),
            Err(e) => {
                let warning = format!("warning: skipping {e}; trying the one before");
                eprintln!("{warning}");
                notes.push(warning);
            }
        }
    }
    None
}

/// Refuses a resume into a folder that holds another run's checkpoints, or, resuming an
/// `explicit` file, later ones of this run (which `--resume auto` and pruning would take for the
/// newest; without a file, the newest whole one is taken and any later one is damaged).
fn only_this_run(
    output: &Path,
    held: &Survey,
    from: &Path,
    meta: &Meta,
    explicit: bool,
) -> Result<()> {
    let name = |run: &Option<String>| run.clone().unwrap_or_else(|| "unnamed".into());
    for (path, other) in &held.checkpoints {
        let Ok(other) = other else { continue };
        if other.run != meta.run {
            bail!(
                "{}: it holds checkpoints of another run ({}, run {}) than the one resumed ({}, \
                 run {}): resume into an `output` of its own, or remove them",
                output.display(),
                path.display(),
                name(&other.run),
                from.display(),
                name(&meta.run)
            );
        }
        if explicit && other.step > meta.step && !same_file(path, from) {
            bail!(
                "{}: it holds a later checkpoint of this run ({}, step {}) than the one resumed \
                 (step {}), which --resume auto and the pruning of old checkpoints would take \
                 for the newest: resume the newest, or copy {} into a new `output`",
                output.display(),
                path.display(),
                other.step,
                meta.step,
                from.display()
            );
        }
    }
    if let Some((path, Ok(best))) = &held.best
        && best.run != meta.run
    {
        bail!(
            "{}: its best.ckpt ({}) is of another run (run {}) than the one resumed (run {}): \
             resume into an `output` of its own",
            output.display(),
            path.display(),
            name(&best.run),
            name(&meta.run)
        );
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The message of a fresh run refused: what the folder holds and the three ways on.
fn refusal(output: &Path, held: &Survey) -> String {
    format!(
        "{} holds an earlier training run: {}. A new run would mix its checkpoints and logs with \
         it, so nothing was started. Either continue it: --resume auto; or give this run another \
         folder: `output = \"...\"` in the config; or start over in this one: --overwrite \
         (deletes those files first)",
        output.display(),
        held.describe()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_names_carry_the_utc_date() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_793), (2026, 12, 6));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        let name = new_run_name();
        assert!(name.starts_with('r') && name.len() == 21, "{name}");
    }

    /// What a folder holds is listed; only those files go with --overwrite.
    #[test]
    fn a_survey_lists_a_runs_files_and_removes_only_those() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Survey::of(dir.path()).is_empty());
        std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
        assert!(Survey::of(dir.path()).is_empty());
        std::fs::write(checkpoint::step_path(dir.path(), 7), b"junk").unwrap();
        std::fs::write(dir.path().join(LOG), b"step 1").unwrap();
        std::fs::create_dir(dir.path().join(EVENTS)).unwrap();
        std::fs::write(dir.path().join("tensorboard/events.out.tfevents.1.x"), b"").unwrap();
        let held = Survey::of(dir.path());
        let said = held.describe();
        assert!(
            said.contains("1 step checkpoint(s) (steps unreadable"),
            "{said}"
        );
        assert!(
            said.contains("training.log, 1 TensorBoard event file(s)"),
            "{said}"
        );
        held.remove().unwrap();
        assert!(Survey::of(dir.path()).is_empty());
        assert_eq!(
            std::fs::read(dir.path().join("notes.txt")).unwrap(),
            b"mine"
        );
    }
}

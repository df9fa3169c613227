//! Preemption. SIGTERM (Slurm's preemption and time limit, Kubernetes' eviction, torchrun
//! stopping its workers), SIGINT (Ctrl-C) and SIGUSR1 (Slurm's `--signal=USR1@T` warning ahead
//! of the time limit) ask a training run to stop at the end of its current step: the ranks agree
//! on it, write a checkpoint together and exit with [`EXIT_RESUME`]. A second signal exits at
//! once, without a checkpoint.
//!
//! Signals are taken by a thread (signal-hook's self-pipe), not in a handler, so what follows a
//! signal is ordinary code. Why "second" needs a window: the same stop often arrives twice
//! within milliseconds (Ctrl-C reaches every process of the terminal's group and torchrun then
//! sends its workers SIGTERM too; Slurm signals every task of a step while torchrun forwards),
//! and that must not cost the checkpoint. A signal [`DUPLICATE`] or more after the first is a
//! person or a scheduler insisting.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};

/// The exit status of a run that stopped on a signal after writing its checkpoint: "resume me"
/// (sysexits' EX_TEMPFAIL, "try again later"). Relaunch with the same command line and
/// `--resume auto`.
pub const EXIT_RESUME: u8 = 75;

/// Signals closer than this to the first are the same stop delivered twice.
pub const DUPLICATE: Duration = Duration::from_secs(2);

/// The first stop signal's number (0: none yet).
static FIRST: AtomicI32 = AtomicI32::new(0);
/// Stop signals received (the launcher forwards each new one to its ranks).
static COUNT: AtomicU64 = AtomicU64::new(0);
static LAST: AtomicI32 = AtomicI32::new(0);

/// What a process does with a second stop signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A training process: the first signal asks for a checkpoint, a later one exits at once.
    Rank,
    /// `arcface train` starting ranks itself: counts the signals for forwarding, never exits on
    /// them (its ranks' exits decide its own).
    Launcher,
}

/// Whether this process launches ranks (`Role::Launcher`) rather than being one.
static LAUNCHER: AtomicBool = AtomicBool::new(false);

/// Takes SIGTERM, SIGINT and SIGUSR1 from now on, as `role`; a later call only changes the role
/// (a training command becomes a launcher once it decides to start its ranks itself).
pub fn watch(role: Role) -> std::io::Result<()> {
    static STARTED: OnceLock<()> = OnceLock::new();
    LAUNCHER.store(role == Role::Launcher, Ordering::SeqCst);
    if STARTED.get().is_some() {
        return Ok(());
    }
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGUSR1])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut first_at: Option<Instant> = None;
            for signal in signals.forever() {
                let role = match LAUNCHER.load(Ordering::SeqCst) {
                    true => Role::Launcher,
                    false => Role::Rank,
                };
                COUNT.fetch_add(1, Ordering::SeqCst);
                LAST.store(signal, Ordering::SeqCst);
                match first_at {
                    None => {
                        first_at = Some(Instant::now());
                        FIRST.store(signal, Ordering::SeqCst);
                        if role == Role::Rank {
                            eprintln!(
                                "{}: finishing this step, then a checkpoint and exit status {EXIT_RESUME} \
                                 (resume with --resume auto); a second signal exits at once",
                                name(signal)
                            );
                        }
                    }
                    Some(t) if role == Role::Rank && t.elapsed() >= DUPLICATE => {
                        eprintln!("{} again: exiting now, without a checkpoint", name(signal));
                        // Not process::exit: libtorch's static destructors may not run safely
                        // while other threads are inside it.
                        unsafe { libc::_exit(128 + signal) };
                    }
                    Some(_) => {}
                }
            }
        })?;
    let _ = STARTED.set(());
    Ok(())
}

/// The first stop signal received, if any.
pub fn requested() -> Option<i32> {
    match FIRST.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// (signals received so far, the last one): for a launcher forwarding them.
pub fn received() -> (u64, i32) {
    (COUNT.load(Ordering::SeqCst), LAST.load(Ordering::SeqCst))
}

/// "SIGTERM", "SIGINT", "SIGUSR1" (or the number).
pub fn name(signal: i32) -> String {
    match signal {
        SIGTERM => "SIGTERM".into(),
        SIGINT => "SIGINT".into(),
        SIGUSR1 => "SIGUSR1".into(),
        other => format!("signal {other}"),
    }
}

/// A run stopped on a signal with its state saved: main exits with [`EXIT_RESUME`] and this
/// message rather than an error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Stopped(pub String);

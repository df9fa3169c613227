//! One machine, one command: `arcface train --device cuda:0,1,2,3` (or `--nproc-per-node N` on
//! LibTorch's CPU) starts one process per device itself, with the variables torchrun would set,
//! on the same engine as a torchrun launch. As torchrun does, it stops the others when one
//! fails: after giving them `dist_timeout` seconds (and a margin) to notice and exit by
//! themselves with their own message naming the rank.

use std::ffi::OsString;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A free TCP port on 127.0.0.1 for the rendezvous (asked of the OS, then released: torchrun's
/// way for a standalone launch).
pub fn free_port() -> Result<u16> {
    // Never the same port twice from one process: two launches at once (tests in threads)
    // could otherwise both be given a port the OS just freed, and their ranks meet.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .context("finding a free port on 127.0.0.1")?;
        let port = listener.local_addr()?.port();
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
}

fn describe(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("was killed by signal {signal}");
        }
    }
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => "exited".into(),
    }
}

/// Runs this executable with `args` as `nproc` ranks on this machine, waits for all of them;
/// Ok only when every rank succeeded. `timeout` is the run's `dist_timeout`.
pub fn run_local(nproc: usize, args: &[OsString], timeout: Duration) -> Result<()> {
    // This process now starts ranks rather than being one: stop signals are forwarded.
    crate::signals::watch(crate::signals::Role::Launcher)
        .context("taking the stop signals (SIGTERM, SIGINT, SIGUSR1)")?;
    let exe = std::env::current_exe().context("locating the arcface executable")?;
    let port = free_port()?;
    // As torchrun: one OpenMP thread per rank unless told otherwise, or the ranks' libtorch
    // thread pools fight over the cores.
    let omp_threads = std::env::var("OMP_NUM_THREADS").unwrap_or_else(|_| {
        eprintln!(
            "starting {nproc} ranks with OMP_NUM_THREADS=1 each (as torchrun does); set \
             OMP_NUM_THREADS to give each more"
        );
        "1".into()
    });
    let mut children: Vec<(usize, Child)> = Vec::with_capacity(nproc);
    for rank in 0..nproc {
        let ranks = Ranks {
            nproc,
            port,
            omp_threads: &omp_threads,
        };
        children.push((rank, ranks.spawn(&exe, args, rank)?));
    }
    let (failures, resumable) = wait_for(children, timeout)?;
    if failures.is_empty() && resumable > 0 {
        return Err(crate::signals::Stopped(format!(
            "{resumable} of {nproc} ranks stopped on a signal with a checkpoint: run the same \
             command with --resume auto to continue"
        ))
        .into());
    }
    if !failures.is_empty() {
        bail!(
            "{} of {nproc} ranks failed: {}",
            failures.len(),
            failures.join("; ")
        );
    }
    Ok(())
}

/// What every rank of one local run shares.
struct Ranks<'a> {
    nproc: usize,
    port: u16,
    omp_threads: &'a str,
}

impl Ranks<'_> {
    /// Starts rank `rank`: this executable with `args` and the variables torchrun would set.
    fn spawn(&self, exe: &std::path::Path, args: &[OsString], rank: usize) -> Result<Child> {
        let mut command = Command::new(exe);
        // A rank whose launcher is gone (killed, a job cancelled) stops too, rather than
        // training on alone.
        #[cfg(target_os = "linux")]
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
            .args(args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", self.nproc.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", self.nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", self.port.to_string())
            .env("OMP_NUM_THREADS", self.omp_threads)
            .spawn()
            .with_context(|| format!("starting rank {rank} ({})", exe.display()))
    }
}

/// Waits for every rank, forwarding stop signals to them; a rank that fails gives the others
/// `timeout` (and 30 s) to see it before they are stopped. The failures, and how many ranks
/// stopped with a checkpoint to resume from.
fn wait_for(mut children: Vec<(usize, Child)>, timeout: Duration) -> Result<(Vec<String>, usize)> {
    let mut failures = Vec::new();
    let mut resumable = 0;
    let mut deadline: Option<Instant> = None;
    let mut forwarded = 0;
    while !children.is_empty() {
        // A stop signal to this launcher (a scheduler's SIGTERM, Ctrl-C) goes on to every rank,
        // which checkpoints with the others (a copy the terminal also sent them counts once).
        let (received, signal) = crate::signals::received();
        if received > forwarded {
            forwarded = received;
            for (_, child) in &children {
                unsafe { libc::kill(child.id() as libc::pid_t, signal) };
            }
        }
        let mut still = Vec::with_capacity(children.len());
        for (rank, mut child) in children {
            match child.try_wait()? {
                Some(status) if status.success() => {}
                Some(status) if status.code() == Some(i32::from(crate::signals::EXIT_RESUME)) => {
                    resumable += 1;
                }
                Some(status) => {
                    failures.push(format!("rank {rank} {}", describe(status)));
                    // The others are given the time of a collective's timeout to see it.
                    deadline
                        .get_or_insert_with(|| Instant::now() + timeout + Duration::from_secs(30));
                }
                None => still.push((rank, child)),
            }
        }
        children = still;
        if deadline.is_some_and(|d| Instant::now() > d) {
            for (rank, child) in &mut children {
                let _ = child.kill();
                let _ = child.wait();
                failures.push(format!("rank {rank} was stopped after dist_timeout"));
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok((failures, resumable))
}

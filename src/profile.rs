//! `--profile TRACE`: libtorch's own profiler (Kineto) around a piece of work, written as a
//! Chrome trace (chrome://tracing, Perfetto) with every aten operator and, on CUDA, every
//! kernel: the same instrument torch.profiler is for PyTorch, so `scripts/profile_summary.py`
//! can set our step and PyTorch's side by side, kernel kind by kernel kind. LibTorch only.

use std::path::Path;

use anyhow::{Context, Result};

/// Call before the work's first tensor: fails unless this build can profile (to refuse
/// `--profile` before the work, not after it), and has libtorch count every CPU tensor byte from
/// here on, so that the trace's memory events on the CPU carry the live total (its peak is
/// comparable with a PyTorch trace's, scripts/profile_summary.py), as CUDA's always do.
#[allow(deprecated)] // burn-tch is deprecated upstream; see device.rs.
pub fn prepare(trace: &Path) -> Result<()> {
    if cfg!(feature = "tch") {
        #[cfg(feature = "tch")]
        burn_tch::fused::profiler::track_cpu_memory();
        Ok(())
    } else {
        anyhow::bail!(
            "--profile {} needs libtorch's profiler: build with --features tch and use a LibTorch device",
            trace.display()
        )
    }
}

/// Runs `work` with libtorch's profiler recording, then writes the trace to `trace`. `work`
/// must wait for its devices before it returns, so that every kernel is in the trace.
#[allow(deprecated)] // burn-tch is deprecated upstream; see device.rs.
pub fn record<T>(trace: &Path, work: impl FnOnce() -> Result<T>) -> Result<T> {
    if let Some(parent) = trace.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {} for the profile", parent.display()))?;
    }
    #[cfg(feature = "tch")]
    {
        use burn_tch::fused::profiler;
        let running = profiler::start(trace, tch::Cuda::is_available())
            .map_err(anyhow::Error::msg)
            .context("starting libtorch's profiler")?;
        let result = work();
        running
            .finish()
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("writing the profile {}", trace.display()))?;
        // Kineto logs a failed write rather than throwing: look for the file.
        if !trace.is_file() {
            anyhow::bail!("libtorch's profiler wrote no trace to {}", trace.display());
        }
        result
    }
    #[cfg(not(feature = "tch"))]
    {
        prepare(trace)?;
        work()
    }
}

//! libtorch's profiler (Kineto) around a region of a program: every aten operator the calling
//! thread runs and, on CUDA, every kernel (CUPTI), written as a Chrome trace like
//! torch.profiler's `export_chrome_trace`, so our step and PyTorch's can be compared kernel by
//! kernel with one tool. tch 0.22 binds none of it (profiler.cpp).

use std::ffi::{CString, c_char, c_int};
use std::path::{Path, PathBuf};

#[cfg(fused_ops)]
unsafe extern "C" {
    fn arcface_profiler_start(with_cuda: c_int) -> *mut c_char;
    fn arcface_profiler_stop(trace_path: *const c_char) -> *mut c_char;
    fn arcface_track_cpu_memory();
}

/// From now on, count every CPU tensor byte libtorch allocates, so that the memory events of a
/// later profile carry the whole live total rather than what was allocated since it started
/// (CUDA's allocator always does). Call it before the work's tensors exist; a no-op without
/// the shim.
pub fn track_cpu_memory() {
    #[cfg(fused_ops)]
    unsafe {
        arcface_track_cpu_memory()
    }
}

/// A running profiler; [`Profiling::finish`] stops it and writes the trace.
#[must_use = "the trace is written by finish()"]
pub struct Profiling {
    trace: PathBuf,
}

/// Starts recording (CUDA kernels too when `with_cuda`); the trace will go to `trace`.
pub fn start(trace: &Path, with_cuda: bool) -> Result<Profiling, String> {
    #[cfg(fused_ops)]
    {
        take_error(unsafe { arcface_profiler_start(with_cuda as c_int) })?;
        Ok(Profiling {
            trace: trace.to_path_buf(),
        })
    }
    #[cfg(not(fused_ops))]
    {
        let _ = (trace, with_cuda as c_int);
        Err("this build has no libtorch profiler (burn-tch built without the libtorch headers)".into())
    }
}

impl Profiling {
    /// Stops recording and writes the trace (Chrome's trace format, JSON).
    pub fn finish(self) -> Result<PathBuf, String> {
        let path = CString::new(self.trace.to_string_lossy().as_bytes())
            .map_err(|_| format!("trace path {} holds a NUL byte", self.trace.display()))?;
        #[cfg(fused_ops)]
        take_error(unsafe { arcface_profiler_stop(path.as_ptr()) })?;
        #[cfg(not(fused_ops))]
        let _ = path;
        Ok(self.trace)
    }
}

#[cfg(fused_ops)]
fn take_error(error: *mut c_char) -> Result<(), String> {
    super::ffi::take_error(error, "profiler")
}

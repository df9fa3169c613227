//! The one place where a backend and device are chosen. Everything else takes a `burn::Device`.
//!
//! "cpu" is burn's pure-Rust flex backend (always built). With the cargo feature `tch`,
//! "cuda", "cuda:N" and "cuda:N,M,..." select LibTorch CUDA devices and "libtorch-cpu" LibTorch's
//! CPU backend. burn-tch is deprecated upstream: keeping it behind this module keeps a later move
//! to burn-cuda small.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

/// A parsed `device` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// burn's flex backend (pure Rust).
    Cpu,
    /// LibTorch on the CPU (feature `tch`).
    LibTorchCpu,
    /// LibTorch CUDA devices by index, one training process each (feature `tch`).
    Cuda(Vec<usize>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "unknown device `{0}`: expected \"cpu\", \"libtorch-cpu\", \"cuda\", \"cuda:N\" or \"cuda:N,M,...\""
    )]
    Unknown(String),
    #[error("device `{0}` lists a GPU twice")]
    Duplicate(String),
    #[error(
        "device `{0}` needs the LibTorch backend, but this binary was built without it. \
         Rebuild with the GPU set-up of the README: `eval \"$(scripts/setup-libtorch.sh)\"` then \
         `cargo build --release --features tch`; or use --device cpu"
    )]
    NotBuilt(String),
    #[error(
        "device `{spec}` asks for CUDA device {index}, but LibTorch sees {available} CUDA device(s). \
         Check `nvidia-smi`, CUDA_VISIBLE_DEVICES and that LD_LIBRARY_PATH points at a CUDA build \
         of torch (scripts/setup-libtorch.sh); or use --device cpu"
    )]
    Missing {
        spec: String,
        index: usize,
        available: usize,
    },
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim().to_ascii_lowercase();
        let unknown = || DeviceError::Unknown(text.to_string());
        match trimmed.as_str() {
            "cpu" => return Ok(DeviceSpec::Cpu),
            "libtorch-cpu" => return Ok(DeviceSpec::LibTorchCpu),
            "cuda" => return Ok(DeviceSpec::Cuda(vec![0])),
            _ => {}
        }
        let list = trimmed.strip_prefix("cuda:").ok_or_else(unknown)?;
        let mut indices = Vec::new();
        for part in list.split(',') {
            let index: usize = part.trim().parse().map_err(|_| unknown())?;
            if indices.contains(&index) {
                return Err(DeviceError::Duplicate(text.to_string()));
            }
            indices.push(index);
        }
        Ok(DeviceSpec::Cuda(indices))
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::LibTorchCpu => write!(f, "libtorch-cpu"),
            DeviceSpec::Cuda(indices) => {
                let list: Vec<String> = indices.iter().map(|i| i.to_string()).collect();
                write!(f, "cuda:{}", list.join(","))
            }
        }
    }
}

impl DeviceSpec {
    /// The burn devices (one per listed GPU), checked to exist. Without autodiff; training wraps
    /// them with `.autodiff()`.
    pub fn resolve(&self) -> Result<Vec<Device>, DeviceError> {
        match self {
            DeviceSpec::Cpu => Ok(vec![Device::flex()]),
            DeviceSpec::LibTorchCpu | DeviceSpec::Cuda(_) => self.resolve_libtorch(),
        }
    }

    #[cfg(not(feature = "tch"))]
    fn resolve_libtorch(&self) -> Result<Vec<Device>, DeviceError> {
        Err(DeviceError::NotBuilt(self.to_string()))
    }

    #[cfg(feature = "tch")]
    #[allow(deprecated)] // burn-tch is deprecated upstream; see the module comment.
    fn resolve_libtorch(&self) -> Result<Vec<Device>, DeviceError> {
        match self {
            DeviceSpec::Cuda(indices) => {
                let available = tch::Cuda::device_count().max(0) as usize;
                if let Some(&index) = indices.iter().find(|&&i| i >= available) {
                    return Err(DeviceError::Missing {
                        spec: self.to_string(),
                        index,
                        available,
                    });
                }
                Ok(indices.iter().map(|&i| Device::libtorch_cuda(i)).collect())
            }
            _ => {
                // ARCFACE_TCH_ONEDNN=0: libtorch's own CPU convolutions instead of oneDNN's, as
                // `torch.backends.mkldnn.enabled = False`. Channels-last then takes effect on the
                // CPU too (src/model/memory_format.rs), so that a profile here shows the
                // operators a GPU step runs (docs/HISTORY.md); slower otherwise.
                if std::env::var_os("ARCFACE_TCH_ONEDNN").is_some_and(|v| v == "0") {
                    burn_tch::fused::set_mkldnn_enabled(false);
                }
                Ok(vec![Device::libtorch()])
            }
        }
    }
}

/// Keeps host memory a process has freed for its next allocations instead of handing it back to
/// the system (glibc's malloc: no trimming, blocks up to 32 MiB from the heap). A training step
/// frees its activations after the backward and allocates them again in the next forward: by
/// default glibc returned them at the first `free` that left a large top (9–23 ms inside the
/// optimiser step of configs/tiny.toml, freeing one gradient) and the next forward paid the
/// page faults again (docs/PERFORMANCE.md, "CPU training"). The peak is unchanged; the
/// process keeps it until it exits. Called once at start by the binary; other allocators and
/// platforms are left alone.
pub fn keep_freed_host_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
        // glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit); larger blocks are mapped.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
    }
}

/// cuDNN's benchmark mode (LibTorch CUDA): convolution algorithms chosen by timing them on the
/// first call of each shape. PyTorch leaves it off; for fixed 112×112 batches it only pays.
/// Without the `tch` feature there is no cuDNN and nothing to set.
pub fn set_cudnn_benchmark(on: bool) {
    #[cfg(feature = "tch")]
    tch::Cuda::cudnn_set_benchmark(on);
    #[cfg(not(feature = "tch"))]
    let _ = on;
}

/// Starts the CUDA allocator's peak counters of GPU `index` over (LibTorch; nothing without
/// the `tch` feature or where there is no CUDA allocator).
pub fn reset_cuda_memory_peaks(index: usize) {
    #[cfg(feature = "tch")]
    #[allow(deprecated)] // burn-tch is deprecated upstream; see the module comment.
    // Should this fail, so does the reading after (None): nothing to report here.
    let _ = burn_tch::fused::reset_cuda_memory_peaks(index);
    #[cfg(not(feature = "tch"))]
    let _ = index;
}

/// Peak (allocated, reserved) MiB of libtorch's CUDA caching allocator on GPU `index` since the
/// last [`reset_cuda_memory_peaks`]; None without the `tch` feature or a CUDA allocator.
pub fn cuda_memory_peaks_mib(index: usize) -> Option<(f64, f64)> {
    #[cfg(feature = "tch")]
    #[allow(deprecated)]
    {
        let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
        burn_tch::fused::cuda_memory_peaks(index)
            .map(|(allocated, reserved)| (mib(allocated), mib(reserved)))
            .ok()
    }
    #[cfg(not(feature = "tch"))]
    {
        let _ = index;
        None
    }
}

/// Whether LibTorch devices compute convolution and BatchNorm gradients with libtorch's own
/// kernels (vendor/burn-tch/src/fused/) rather than burn's generic compositions; false without
/// the `tch` feature or with `ARCFACE_TCH_GENERIC=1`.
pub fn libtorch_fused_kernels() -> bool {
    #[cfg(feature = "tch")]
    #[allow(deprecated)] // burn-tch is deprecated upstream; see the module comment.
    return burn_tch::fused::enabled();
    #[cfg(not(feature = "tch"))]
    false
}

/// Parses and resolves in one go: what a command does with `--device` or the config's `device`.
pub fn select(text: &str) -> anyhow::Result<Vec<Device>> {
    Ok(text.parse::<DeviceSpec>()?.resolve()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!(
            "CUDA".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Cuda(vec![0])
        );
        assert_eq!(
            "cuda:1".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Cuda(vec![1])
        );
        assert_eq!(
            "cuda:0, 1,2,3".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Cuda(vec![0, 1, 2, 3])
        );
        assert_eq!(
            "libtorch-cpu".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::LibTorchCpu
        );
        assert_eq!(DeviceSpec::Cuda(vec![0, 2]).to_string(), "cuda:0,2");
    }

    #[test]
    fn rejects_nonsense() {
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", ""] {
            assert!(
                matches!(bad.parse::<DeviceSpec>(), Err(DeviceError::Unknown(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "cuda:0,0".parse::<DeviceSpec>(),
            Err(DeviceError::Duplicate(_))
        ));
    }

    #[cfg(not(feature = "tch"))]
    #[test]
    fn cuda_without_tch_says_how_to_fix_it() {
        let err = DeviceSpec::Cuda(vec![0]).resolve().unwrap_err().to_string();
        assert!(err.contains("--features tch"), "{err}");
        assert!(err.contains("setup-libtorch.sh"), "{err}");
    }
}

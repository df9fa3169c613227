//! Peak GPU memory of a run, as nvidia-smi sees it.

/// Samples `nvidia-smi`'s memory.used of some GPUs every 20 ms and keeps the highest sum: the
/// whole devices, CUDA context and allocator cache included, as `scripts/gpu-check.sh` also
/// measures PyTorch's anchor. The allocator's own counters (what PyTorch's
/// `max_memory_allocated` reports) come from `device::cuda_memory_peaks_mib`.
pub(super) struct GpuMemorySampler {
    child: std::process::Child,
    reader: std::thread::JoinHandle<Option<f64>>,
}

impl GpuMemorySampler {
    pub(super) fn start(indices: &[usize]) -> Option<GpuMemorySampler> {
        use std::io::BufRead;
        let list: Vec<String> = indices.iter().map(|i| i.to_string()).collect();
        let mut child = std::process::Command::new("nvidia-smi")
            .args([
                "--query-gpu=memory.used",
                "--format=csv,noheader,nounits",
                "-lms",
                "20",
                "-i",
                &list.join(","),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let stdout = child.stdout.take()?;
        let per_round = indices.len();
        let reader = std::thread::spawn(move || {
            let mut peak: Option<f64> = None;
            let mut round = Vec::new();
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(v) = line.trim().parse::<f64>() {
                    round.push(v);
                }
                if round.len() == per_round {
                    let sum: f64 = round.drain(..).sum();
                    peak = Some(peak.map_or(sum, |p: f64| p.max(sum)));
                }
            }
            peak
        });
        Some(GpuMemorySampler { child, reader })
    }

    pub(super) fn stop(mut self) -> Option<f64> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reader.join().ok().flatten()
    }
}

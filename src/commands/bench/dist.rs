//! `arcface bench dist`: the process group's all-reduce bus bandwidth over message sizes
//! (nccl-tests' definition).

use anyhow::Result;

use arcface::bench;
use arcface::distributed;

#[derive(clap::Args)]
pub struct DistArgs {
    /// Message sizes in bytes (8 B to 128 MB by factors of 4 otherwise).
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<usize>>,
    /// Timed all-reduces per size.
    #[arg(long, default_value_t = 20)]
    iterations: usize,
    /// Ranks to start on this machine (LibTorch's CPU).
    #[arg(long)]
    nproc_per_node: Option<usize>,
    /// Seconds a collective may wait for the others.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    #[arg(long)]
    json: bool,
}

pub fn run(args: &DistArgs, cli_device: &Option<String>) -> Result<()> {
    let DistArgs {
        sizes,
        iterations,
        nproc_per_node,
        timeout,
        json,
    } = args;
    let text = cli_device.as_deref().unwrap_or("libtorch-cpu");
    let spec = super::super::device_spec(text)?;
    let timeout = std::time::Duration::from_secs(*timeout);
    let Some((_, _, mut group)) = distributed::rank_or_spawn(&spec, *nproc_per_node, timeout)?
    else {
        return Ok(());
    };
    let sizes = sizes.clone().unwrap_or_else(bench::dist::default_sizes);
    let rows = bench::dist::all_reduce_sweep(&group, &sizes, *iterations)?;
    group.barrier("end of the benchmark")?;
    group.finish();
    if !group.is_main() {
    } else if *json {
        let report = serde_json::json!({
            "backend": group.backend(),
            "world_size": group.world(),
            "device": text,
            "rows": rows,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "all-reduce (sum, f32), {} over {} ranks on {text}, {iterations} iterations per size",
            group.backend(),
            group.world()
        );
        println!(
            "{:>12} {:>12} {:>12} {:>12}",
            "bytes", "time µs", "algbw GB/s", "busbw GB/s"
        );
        for r in &rows {
            println!(
                "{:>12} {:>12.1} {:>12.3} {:>12.3}",
                r.bytes, r.time_us, r.algbw, r.busbw
            );
        }
    }
    Ok(())
}

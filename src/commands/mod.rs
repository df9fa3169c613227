//! One module per subcommand: its arguments (clap) and what it prints. The library does the
//! work; these turn its results into tables, JSON and exit codes.

pub mod bench;
pub mod data;
pub mod eval;
pub mod export;
pub mod infer;
pub mod summary;
pub mod train;

use anyhow::{Context, Result};
use burn::tensor::Device;

use arcface::config::Config;
use arcface::device;

/// The config's device unless `--device` overrides it.
pub fn devices(cli_device: &Option<String>, config: &Config) -> Result<Vec<Device>> {
    let text = cli_device.as_deref().unwrap_or(&config.device);
    device::select(text).with_context(|| format!("selecting device `{text}`"))
}

/// `--device`, else the CPU, for commands without a config.
pub fn device_or_cpu(cli_device: &Option<String>) -> Result<Device> {
    let text = cli_device.as_deref().unwrap_or("cpu");
    Ok(device::select(text)
        .with_context(|| format!("selecting device `{text}`"))?
        .remove(0))
}

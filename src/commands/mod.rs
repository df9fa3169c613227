//! One module per subcommand: its arguments (clap) and what it prints. The library does the
//! work; these turn its results into tables, JSON and exit codes.

pub mod bench;
pub mod data;
pub mod eval;
pub mod export;
pub mod import;
pub mod infer;
pub mod summary;
pub mod train;

use std::path::Path;

use anyhow::{Context, Result};
use burn::tensor::Device;

use arcface::device;
use arcface::embedder::{BurnOptions, Embedder, Engine};
use arcface::interop::onnx::InputConvention;

/// The device `text` names (`--device`, or a config's `device`), the error saying which.
pub fn device_spec(text: &str) -> Result<device::DeviceSpec> {
    text.parse()
        .with_context(|| format!("selecting device `{text}`"))
}

/// `--device`, else the CPU, for commands without a config. They run on one device: a list of
/// GPUs (training's data parallelism) is refused rather than cut to its first.
pub fn device_or_cpu(cli_device: &Option<String>) -> Result<Device> {
    let text = cli_device.as_deref().unwrap_or("cpu");
    let devices = device::select(text).with_context(|| format!("selecting device `{text}`"))?;
    only_one(text, devices)
}

/// The embedder of `--model` on `--device` (else the CPU), its notes (an ONNX file's repairs or
/// import) printed: what `eval` and `infer` start from.
pub fn embedder(
    model: &Path,
    options: BurnOptions,
    input: InputConvention,
    engine: Engine,
    cli_device: &Option<String>,
) -> Result<Embedder> {
    let device = device_or_cpu(cli_device)?;
    let embedder = Embedder::load(model, &device, options, input, engine)?;
    for note in embedder.notes() {
        eprintln!("{}: {note}", model.display());
    }
    Ok(embedder)
}

fn only_one(text: &str, mut devices: Vec<Device>) -> Result<Device> {
    anyhow::ensure!(
        devices.len() == 1,
        "device `{text}` lists {} GPUs, but only training runs on several: give one, e.g. cuda:0",
        devices.len()
    );
    Ok(devices.remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_without_a_config_refuse_a_list_of_gpus() {
        let two = vec![Device::flex(), Device::flex()];
        let err = only_one("cuda:0,1", two).unwrap_err().to_string();
        assert!(
            err.contains("`cuda:0,1` lists 2 GPUs") && err.contains("give one, e.g. cuda:0"),
            "{err}"
        );
        assert!(only_one("cpu", vec![Device::flex()]).is_ok());
    }
}

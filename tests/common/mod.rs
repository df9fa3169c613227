//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python that runs reference implementations: $ARCFACE_PYTHON, else the repo's .venv
/// (made by `.ci/run`), else `python3`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("ARCFACE_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = root().join(".venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// Runs tests/reference/`script` with `python` (`flags` before the script), `query` as JSON on
/// stdin, and parses its JSON stdout. Panics with `hint` (how to get that Python) when it
/// cannot start or fails: these references are part of the proof, not optional.
fn run_python(
    python: &std::path::Path,
    flags: &[&str],
    script: &str,
    query: &serde_json::Value,
    hint: &str,
) -> serde_json::Value {
    let path = root().join("tests/reference").join(script);
    let mut child = Command::new(python)
        .args(flags)
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {} ({e}); {hint}", python.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(query.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{} failed on {query} ({hint}):\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("reference output is JSON")
}

/// Runs a reference script with the reference venv's Python (numpy, onnxruntime, PIL…).
pub fn run_reference(script: &str, input: &serde_json::Value) -> serde_json::Value {
    run_python(
        &python(),
        &[],
        script,
        input,
        "`bash .ci/run` makes .venv with numpy and the rest, or set ARCFACE_PYTHON",
    )
}

/// Runs tests/reference/`script` with the Python of the torch venv (scripts/setup-libtorch.sh
/// sets VIRTUAL_ENV) on `query`.
pub fn torch_reference(script: &str, query: &serde_json::Value) -> serde_json::Value {
    let python = std::env::var_os("VIRTUAL_ENV")
        .map(|v| PathBuf::from(v).join("bin/python"))
        .expect(
            "VIRTUAL_ENV: run the tests that compare with PyTorch after `eval \"$(scripts/setup-libtorch.sh)\"` (`bash .ci/run` does)",
        );
    // -W ignore: torch warns that this venv has no numpy, which the reference does not use.
    run_python(
        &python,
        &["-W", "ignore"],
        script,
        query,
        "the torch venv of scripts/setup-libtorch.sh",
    )
}

/// Runs tests/reference/`script` with the Python that has mxnet 1.9.1: $ARCFACE_MXNET_PYTHON,
/// else the repo's .venv-mxnet (made by `.ci/run`).
pub fn mxnet_reference(script: &str, query: &serde_json::Value) -> serde_json::Value {
    let python = std::env::var_os("ARCFACE_MXNET_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv-mxnet/bin/python"));
    run_python(
        &python,
        &[],
        script,
        query,
        "mxnet==1.9.1 with numpy<1.24 and onnx<1.15: `bash .ci/run` makes .venv-mxnet",
    )
}

/// `values` as little-endian f32 bytes in `path` (how the references exchange images).
pub fn write_f32(path: &std::path::Path, values: &[f32]) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

pub fn read_f32(path: &std::path::Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// The `arcface` binary built for these tests.
pub fn arcface() -> Command {
    Command::new(env!("CARGO_BIN_EXE_arcface"))
}

/// burn's CPU backend has one random generator per process: tests of one binary that seed it
/// and draw from it take turns through this lock, or their draws would interleave.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// 20 synthetic identities × 6 images (seed 11) with 40 validation pairs in `data`, made once:
/// the small training set of the training tests.
pub fn small_synthetic(data: &std::path::Path) {
    if !data.join("train.rec").exists() {
        arcface::data::synth::generate(
            data,
            &arcface::data::synth::SynthConfig::new(20, 6, 40, 11),
            &indicatif::ProgressBar::hidden(),
        )
        .unwrap();
    }
}

/// The records at `keys` of the folder `data` made undecodable in place: their image's first
/// bytes (after the 24-byte IR header) zeroed, so no decoder takes them for an image.
pub fn break_images(data: &std::path::Path, keys: &[u64]) {
    let idx = std::fs::read_to_string(data.join("train.idx")).unwrap();
    let offsets: std::collections::BTreeMap<u64, u64> = idx
        .lines()
        .filter_map(|l| {
            let (k, o) = l.split_once('\t')?;
            Some((k.trim().parse().ok()?, o.trim().parse().ok()?))
        })
        .collect();
    let mut rec = std::fs::read(data.join("train.rec")).unwrap();
    for key in keys {
        let at = offsets[key] as usize;
        let flag = u32::from_le_bytes(rec[at + 8..at + 12].try_into().unwrap()) as usize;
        let image = at + 8 + 24 + 4 * flag;
        rec[image..image + 8].fill(0);
    }
    std::fs::write(data.join("train.rec"), rec).unwrap();
}

/// Every scalar tag of the TensorBoard folder `dir` as TensorBoard's own EventAccumulator reads
/// it (tests/reference/tensorboard_tags.py): {tag: [[step, value], ...]}.
pub fn tensorboard_scalars(dir: &std::path::Path) -> serde_json::Value {
    let reader = Command::new(python())
        .arg(root().join("tests/reference/tensorboard_tags.py"))
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        reader.status.success(),
        "{}",
        String::from_utf8_lossy(&reader.stderr)
    );
    serde_json::from_slice(&reader.stdout).unwrap()
}

/// The word after the first `marker` in `text` ("… at step 6 (epoch …" → "6").
pub fn word_after<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    text.split(marker).nth(1)?.split(' ').next()
}

pub mod ranks;

/// Ten AdamW steps on given gradients, learning rates and clipping factors equal
/// torch.optim.AdamW's (tests/reference/adamw.py) within 1e-6 relative, decay on every
/// parameter as arcface_torch's, on `device` (the caller holds `serial()`).
pub fn adamw_steps_as_torch_optim_adamw(device: &burn::tensor::Device) {
    use arcface::config::Config;
    use arcface::train::optimizer::Optimizer;
    use burn::module::Module;
    use burn::nn::LinearConfig;
    use burn::optim::GradientsParams;
    use burn::tensor::{Device, Distribution, Tensor};
    // The draws from burn's CPU backend whatever the device: the same numbers for each.
    let flex = Device::flex().autodiff();
    flex.seed(5);
    let device = device.clone().autodiff();
    let mut layer = LinearConfig::new(4, 3).init(&flex).to_device(&device);
    let draw = |shape: &[usize]| -> Vec<f32> {
        let n: usize = shape.iter().product();
        Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), &flex)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    };
    // The layer's (weight, bias) values.
    let values = |layer: &burn::nn::Linear| {
        let of = |t: Tensor<2>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        let bias = layer.bias.as_ref().unwrap().val().unsqueeze::<2>();
        (of(layer.weight.val()), of(bias))
    };
    let start = values(&layer);
    let steps = 10;
    let grads: Vec<(Vec<f32>, Vec<f32>)> =
        (0..steps).map(|_| (draw(&[4, 3]), draw(&[3]))).collect();
    let lrs: Vec<f64> = (0..steps).map(|k| 1e-3 * (1.0 - k as f64 / 20.0)).collect();
    let scales: Vec<f64> = (0..steps)
        .map(|k| if k % 3 == 2 { 0.4 } else { 1.0 })
        .collect();
    let config = Config::parse(
        "optimizer = \"adamw\"\nweight_decay = 0.1\n",
        std::path::Path::new("adamw.toml"),
    )
    .unwrap();
    let mut optimizer = Optimizer::of(&config);
    let mut ours = Vec::new();
    for (k, (gw, gb)) in grads.iter().enumerate() {
        // A loss whose gradient is the given one: Σ w·G.
        let gw_t = Tensor::<1>::from_floats(gw.as_slice(), &device).reshape([4, 3]);
        let gb_t = Tensor::<1>::from_floats(gb.as_slice(), &device);
        let loss =
            (layer.weight.val() * gw_t).sum() + (layer.bias.as_ref().unwrap().val() * gb_t).sum();
        let mut g = GradientsParams::from_grads(loss.backward(), &layer);
        layer = optimizer.step(layer, &mut g, lrs[k], scales[k], k, "");
        ours.push(values(&layer));
    }
    // burn's Linear weight is [in, out]; PyTorch's the same numbers as one flat list here
    // (AdamW is elementwise), named as ours.
    let query = serde_json::json!({
        "params": {"weight": {"shape": [4, 3], "values": start.0},
                   "bias": {"shape": [3], "values": start.1}},
        "grads": grads.iter().map(|(w, b)| serde_json::json!({"weight": w, "bias": b})).collect::<Vec<_>>(),
        "lrs": lrs, "scales": scales, "weight_decay": 0.1,
    });
    let torch = torch_reference("adamw.py", &query);
    for (k, (w, b)) in ours.iter().enumerate() {
        for (name, values) in [("weight", w), ("bias", b)] {
            let theirs: Vec<f64> = serde_json::from_value(torch[k][name].clone()).unwrap();
            let diff: f64 = values
                .iter()
                .zip(&theirs)
                .map(|(&a, b)| (a as f64 - b).powi(2))
                .sum();
            let norm: f64 = theirs.iter().map(|b| b * b).sum();
            let d = (diff / norm).sqrt();
            assert!(
                d < 1e-6,
                "step {k}: {name} is {d:.2e} from torch.optim.AdamW's"
            );
        }
    }
    // The parameters moved: not a test that passes standing still.
    assert!(
        ours[steps - 1]
            .0
            .iter()
            .zip(&start.0)
            .any(|(a, b)| (a - b).abs() > 1e-3)
    );
}

//! What turns aligned 112×112 faces into embeddings: our burn backbone (a checkpoint) or an
//! ONNX file run by tract. `eval`, `infer` and `bench` take either through `--model`;
//! `--engine` says which computes (by default tract wherever it can: fp32 on the CPU, a
//! checkpoint exported to ONNX in memory), and `--device`, `--precision` and `--channels-last`
//! how burn computes.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor, TensorData};

use tract_onnx::pb;

use crate::checkpoint::load_backbone;
use crate::interop::onnx::import::read_file;
use crate::interop::onnx::input::{Input, InputConvention};
use crate::interop::onnx::{Batch, backbone_to_onnx};
use crate::model::iresnet::INPUT_SIZE;
use crate::model::{Backbone, Precision, memory_format};
use crate::tract::OnnxEmbedder;

/// Values in one [3,112,112] image.
pub const IMAGE_VALUES: usize = 3 * INPUT_SIZE * INPUT_SIZE;

/// How a burn backbone computes its embeddings: the `--precision` and `--channels-last` of
/// `eval`, `infer` and `bench infer`. The default is fp32, NCHW.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::Args)]
pub struct BurnOptions {
    /// Arithmetic of burn's convolutions and FC layer. tract runs ONNX files in fp32 only, so
    /// with bf16 an ONNX model is imported into burn.
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
    /// Store each batch channels-last (NHWC) before the backbone: the layout cuDNN's bf16
    /// convolutions run fastest on (LibTorch). The values are the same either way; burn's CPU
    /// backend has one layout and ignores it.
    #[arg(long)]
    pub channels_last: bool,
}

/// Which engine computes the embeddings (`--engine` of `eval` and `infer`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// tract where it can (fp32 on burn's CPU device: 1.2–2.2× burn's speed there, docs/
    /// PERFORMANCE.md), burn elsewhere.
    #[default]
    Auto,
    /// burn: a checkpoint's own arithmetic, as training's validation computes it; an ONNX
    /// file's weights imported into our backbone.
    Burn,
    /// tract, fp32 on the CPU only; a checkpoint exported to ONNX in memory.
    Tract,
}

// A handful exist per process; the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Embedder {
    /// A backbone in inference mode on a burn device.
    Burn {
        model: Backbone,
        device: Device,
        options: BurnOptions,
        /// What the user should know about how the model got here (an ONNX file's import).
        notes: Vec<String>,
        /// An ONNX file's input convention, when the model came from one.
        input: Option<Input>,
    },
    Onnx(OnnxEmbedder),
    /// A checkpoint exported to ONNX in memory and run by tract.
    Exported {
        onnx: OnnxEmbedder,
        /// The checkpoint's kind of backbone, for the note.
        network: &'static str,
    },
}

impl Embedder {
    /// Anything but `X.onnx` is read as an `arcface train` checkpoint. tract computes where
    /// `engine` allows and it can (fp32 on burn's CPU device: the fastest there, docs/
    /// PERFORMANCE.md), a checkpoint exported to ONNX in memory; burn otherwise, an ONNX file's
    /// weights imported into our backbone, which then runs on `device` as a checkpoint would.
    ///
    /// `input` says what pixels an ONNX file takes (src/interop/onnx/input.rs); a checkpoint takes raw
    /// RGB 0–255, and `--onnx-input` with one is refused.
    pub fn load(
        path: &Path,
        device: &Device,
        options: BurnOptions,
        input: InputConvention,
        engine: Engine,
    ) -> Result<Embedder> {
        let tract_can = *device == Device::flex() && options.precision == Precision::Fp32;
        if engine == Engine::Tract && !tract_can {
            bail!(
                "{}: --engine tract runs fp32 on the CPU only (`--device cpu`, no bf16)",
                path.display()
            );
        }
        let use_tract = tract_can && engine != Engine::Burn;
        if !is_onnx(path) {
            if input != InputConvention::Auto {
                bail!(
                    "{}: --onnx-input is for ONNX files; a checkpoint takes RGB 0–255",
                    path.display()
                );
            }
            let (model, _) = load_backbone(path, device)?;
            if use_tract {
                let network = match &model {
                    Backbone::IResNet(_) => "the iresnet",
                    Backbone::MobileFaceNet(_) => "the MobileFaceNet",
                    Backbone::Vit(_) => "the ViT",
                };
                let proto = backbone_to_onnx(&model, Batch::Dynamic)
                    .with_context(|| format!("{}: exporting it for tract", path.display()))?;
                let onnx = OnnxEmbedder::from_proto(proto).with_context(|| {
                    format!("{}: running its export with tract", path.display())
                })?;
                return Ok(Embedder::Exported { onnx, network });
            }
            return Ok(Embedder::burn_with(model, device, options));
        }
        if use_tract {
            let onnx = OnnxEmbedder::load_with(path, Default::default(), input)?;
            return Ok(Embedder::Onnx(onnx));
        }
        let not_ours = || {
            format!(
                "{}: off burn's CPU device or in bf16 an ONNX file runs as our backbone with its \
                 weights (LResNet-E-IR, MobileFaceNet, ViT), and this one does not import (`--device cpu` in fp32 runs any ONNX \
                 embedder with tract)",
                path.display()
            )
        };
        let (proto, prepared, imported) = read_file(path, input).with_context(not_ours)?;
        let model = imported.backbone(device).with_context(not_ours)?;
        // As `arcface import`: the file run by tract and our backbone must agree, or the import
        // misread it.
        check_import(path, proto, &model, device)?;
        let mut notes = prepared.notes();
        notes.extend(imported.notes);
        notes.push(format!(
            "runs as our {} backbone with the file's weights (tract runs ONNX files in fp32 on \
             the CPU only)",
            imported.network
        ));
        Ok(Embedder::Burn {
            model,
            device: device.clone(),
            options,
            notes,
            input: Some(prepared.input),
        })
    }

    /// `model` on `device` in fp32, batches stored as they come (NCHW).
    pub fn burn(model: impl Into<Backbone>, device: &Device) -> Embedder {
        Embedder::burn_with(model, device, BurnOptions::default())
    }

    pub fn burn_with(
        model: impl Into<Backbone>,
        device: &Device,
        options: BurnOptions,
    ) -> Embedder {
        Embedder::Burn {
            model: model.into(),
            device: device.clone(),
            options,
            notes: Vec::new(),
            input: None,
        }
    }

    pub fn embedding_size(&self) -> usize {
        match self {
            Embedder::Burn { model, .. } => model.embedding_size(),
            Embedder::Onnx(onnx) | Embedder::Exported { onnx, .. } => onnx.embedding_size(),
        }
    }

    /// Messages about the loaded model a user should see (an ONNX file's repairs, input
    /// convention and import).
    pub fn notes(&self) -> Vec<String> {
        match self {
            Embedder::Burn { notes, .. } => notes.clone(),
            Embedder::Onnx(onnx) => onnx.prepared.notes(),
            Embedder::Exported { network, .. } => vec![format!(
                "{network}, exported to ONNX in memory and run by tract, the fastest on the \
                 CPU (`--engine burn`: burn's arithmetic, as training's validation computes it)"
            )],
        }
    }

    /// The input convention of an ONNX file (None for a checkpoint, which takes RGB 0–255).
    pub fn input(&self) -> Option<Input> {
        match self {
            Embedder::Burn { input, .. } => *input,
            Embedder::Onnx(onnx) => Some(onnx.prepared.input),
            Embedder::Exported { .. } => None,
        }
    }

    /// Whole raw-RGB [3,112,112] images back to back → their embeddings (not normalised),
    /// row-major [n, E].
    pub fn embed(&self, images: &[f32]) -> Result<Vec<f32>> {
        if !images.len().is_multiple_of(IMAGE_VALUES) {
            bail!(
                "{} values is not a whole number of 3×112×112 images",
                images.len()
            );
        }
        match self {
            Embedder::Burn {
                model,
                device,
                options,
                ..
            } => {
                let n = images.len() / IMAGE_VALUES;
                let data = TensorData::new(images.to_vec(), [n, 3, INPUT_SIZE, INPUT_SIZE]);
                let batch = memory_format::channels_last(
                    Tensor::<4>::from_data(data, device),
                    options.channels_last,
                );
                let out = model.forward_at(batch, options.precision);
                out.into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .map_err(|e| anyhow::anyhow!("{e:?}"))
            }
            Embedder::Onnx(onnx) | Embedder::Exported { onnx, .. } => onnx.embed(images),
        }
    }
}

pub fn is_onnx(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// Runs the prepared file with tract and the backbone imported from it side by side
/// ([`compare_outputs`]) and refuses the import, naming the file, where they differ by more
/// than [`IMPORT_TOLERANCE`]; returns the difference.
pub fn check_import(
    path: &Path,
    proto: pb::ModelProto,
    model: &Backbone,
    device: &Device,
) -> Result<f64> {
    let difference =
        compare_outputs(proto, model, device).with_context(|| path.display().to_string())?;
    if difference > IMPORT_TOLERANCE {
        bail!(
            "{}: our backbone with the file's weights differs from the file run by tract by \
             {difference:.2e} (relative): not imported (a graph we misread; please report it)",
            path.display()
        );
    }
    Ok(difference)
}

/// The most the file run by tract and the imported backbone may differ by (relative L2 of the
/// embeddings): float rounding stays far below it (~1e-5 on r100), any misread weight far
/// above.
pub const IMPORT_TOLERANCE: f64 = 1e-3;

/// Runs the prepared file with tract and `model` on two test images (a colour ramp and a mid grey) and
/// returns the largest relative difference of their embeddings.
pub fn compare_outputs(proto: pb::ModelProto, model: &Backbone, device: &Device) -> Result<f64> {
    let mut images = Vec::with_capacity(2 * IMAGE_VALUES);
    for c in 0..3 {
        for y in 0..INPUT_SIZE {
            for x in 0..INPUT_SIZE {
                images.push(((x * 2 + y + c * 40) % 256) as f32);
            }
        }
    }
    images.extend(std::iter::repeat_n(128.0, IMAGE_VALUES));
    // The prepared graph takes raw pixels whatever the file's own convention was.
    let file = OnnxEmbedder::from_proto_with(proto, Default::default(), InputConvention::Raw)?
        .embed(&images)?;
    let ours = Embedder::burn(model.clone(), device).embed(&images)?;
    let e = file.len() / 2;
    if ours.len() != file.len() {
        bail!(
            "the file gives {e}-d embeddings, the imported model {}",
            ours.len() / 2
        );
    }
    Ok(file
        .chunks(e)
        .zip(ours.chunks(e))
        .map(|(a, b)| {
            let diff = a
                .iter()
                .zip(b)
                .map(|(x, y)| ((x - y) as f64).powi(2))
                .sum::<f64>();
            let norm = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>();
            (diff / norm.max(1e-30)).sqrt()
        })
        .fold(0.0, f64::max))
}

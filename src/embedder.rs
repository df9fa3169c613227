//! What turns aligned 112×112 faces into embeddings: our burn backbone (a checkpoint) or an
//! ONNX file run by tract. `eval`, `infer` and `bench` take either through `--model`, and
//! `--device`, `--precision` and `--channels-last` say how burn computes.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor, TensorData};

use crate::checkpoint::load_backbone;
use crate::model::iresnet::INPUT_SIZE;
use crate::model::{Backbone, Precision, memory_format};
use crate::onnx::OnnxEmbedder;
use crate::onnx::import::{IMPORT_TOLERANCE, compare_outputs, read_file};
use crate::onnx::input::{Input, InputConvention};

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
}

impl Embedder {
    /// Anything but `X.onnx` is read as an `arcface train` checkpoint. An ONNX file runs with
    /// tract (the fastest on the CPU: docs/PERFORMANCE.md) where tract can do what is asked,
    /// fp32 on burn's CPU device; on a LibTorch device or in bf16 its weights are imported into
    /// our backbone, which then runs on `device` as a checkpoint would.
    ///
    /// `input` says what pixels an ONNX file takes (src/onnx/input.rs); a checkpoint takes raw
    /// RGB 0–255, and `--onnx-input` with one is refused.
    pub fn load(
        path: &Path,
        device: &Device,
        options: BurnOptions,
        input: InputConvention,
    ) -> Result<Embedder> {
        if !is_onnx(path) {
            if input != InputConvention::Auto {
                bail!(
                    "{}: --onnx-input is for ONNX files; a checkpoint takes RGB 0–255",
                    path.display()
                );
            }
            let (model, _) = load_backbone(path, device)?;
            return Ok(Embedder::burn_with(model, device, options));
        }
        if *device == Device::flex() && options.precision == Precision::Fp32 {
            let onnx = OnnxEmbedder::load_with(path, Default::default(), input)?;
            return Ok(Embedder::Onnx(onnx));
        }
        let not_ours = || {
            format!(
                "{}: off burn's CPU device or in bf16 an ONNX file runs as our LResNet-E-IR with \
                 its weights, and this one does not import (`--device cpu` in fp32 runs any ONNX \
                 embedder with tract)",
                path.display()
            )
        };
        let (proto, prepared, imported) = read_file(path, input).with_context(not_ours)?;
        let model = imported.backbone(device).with_context(not_ours)?;
        // As `arcface import`: the file run by tract and our backbone must agree, or the import
        // misread it.
        let difference =
            compare_outputs(proto, &model, device).with_context(|| path.display().to_string())?;
        if difference > IMPORT_TOLERANCE {
            bail!(
                "{}: our backbone with the file's weights differs from the file run by tract by \
                 {difference:.2e} (relative): not imported",
                path.display()
            );
        }
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
            Embedder::Onnx(onnx) => onnx.embedding_size(),
        }
    }

    /// Messages about the loaded model a user should see (an ONNX file's repairs, input
    /// convention and import).
    pub fn notes(&self) -> Vec<String> {
        match self {
            Embedder::Burn { notes, .. } => notes.clone(),
            Embedder::Onnx(onnx) => onnx.prepared.notes(),
        }
    }

    /// The input convention of an ONNX file (None for a checkpoint, which takes RGB 0–255).
    pub fn input(&self) -> Option<Input> {
        match self {
            Embedder::Burn { input, .. } => *input,
            Embedder::Onnx(onnx) => Some(onnx.prepared.input),
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
            Embedder::Onnx(onnx) => onnx.embed(images),
        }
    }
}

pub fn is_onnx(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

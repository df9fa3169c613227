//! What turns aligned 112×112 faces into embeddings: our burn backbone (a checkpoint) or an
//! ONNX file run by tract. `eval`, `infer` and `bench` take either through `--model`.

use std::path::Path;

use anyhow::{Result, bail};
use burn::tensor::{Device, Tensor, TensorData};

use crate::model::iresnet::INPUT_SIZE;
use crate::model::{IResNet, Precision, memory_format};
use crate::onnx::OnnxEmbedder;
use crate::train::checkpoint::load_backbone;

/// Values in one [3,112,112] image.
pub const IMAGE_VALUES: usize = 3 * INPUT_SIZE * INPUT_SIZE;

// A handful exist per process; the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Embedder {
    /// A backbone in inference mode on a burn device.
    Burn {
        model: IResNet,
        device: Device,
        /// Arithmetic of the convolutions and the FC layer (`bench infer --precision`).
        precision: Precision,
        /// Each batch stored channels-last (NHWC) before the backbone: the layout cuDNN's bf16
        /// convolutions run fastest on (LibTorch; `model::memory_format`). The values are the
        /// same either way.
        channels_last: bool,
    },
    Onnx(OnnxEmbedder),
}

impl Embedder {
    /// `X.onnx` runs with tract; anything else is read as an `arcface train` checkpoint.
    pub fn load(path: &Path, device: &Device) -> Result<Embedder> {
        if is_onnx(path) {
            return Ok(Embedder::Onnx(OnnxEmbedder::load(path)?));
        }
        let (model, _) = load_backbone(path, device)?;
        Ok(Embedder::burn(model, device))
    }

    /// `model` on `device` in fp32, batches stored as they come (NCHW).
    pub fn burn(model: IResNet, device: &Device) -> Embedder {
        Embedder::Burn {
            model,
            device: device.clone(),
            precision: Precision::Fp32,
            channels_last: false,
        }
    }

    pub fn embedding_size(&self) -> usize {
        match self {
            Embedder::Burn { model, .. } => model.features.gamma.dims()[0],
            Embedder::Onnx(onnx) => onnx.embedding_size(),
        }
    }

    /// Messages about the loaded model a user should see (the zoo repairs).
    pub fn notes(&self) -> &[String] {
        match self {
            Embedder::Burn { .. } => &[],
            Embedder::Onnx(onnx) => &onnx.repairs,
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
                precision,
                channels_last,
            } => {
                let n = images.len() / IMAGE_VALUES;
                let data = TensorData::new(images.to_vec(), [n, 3, INPUT_SIZE, INPUT_SIZE]);
                let batch = memory_format::channels_last(
                    Tensor::<4>::from_data(data, device),
                    *channels_last,
                );
                let out = model.forward_at(batch, *precision);
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

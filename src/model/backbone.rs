//! The backbone a config names: an iresnet (LResNet-E-IR), a MobileFaceNet or a Vision
//! Transformer, one module type
//! for training, checkpoints, export and inference to carry. Parameter paths are the
//! variant's own ("backbone.layer1.0.conv1.weight", "backbone.stem.conv.weight"): the
//! variant's name is not part of them (`crate::module_path`), so checkpoints of iresnets read
//! as before there were two.

use burn::module::Module;
use burn::nn::BatchNorm;
use burn::tensor::{Device, Tensor};

use super::{
    IResNet, IResNetConfig, MobileFaceNet, MobileFaceNetConfig, Precision, VisionTransformer,
    VitConfig,
};

// A handful exist per process (the model, a copy for validation), each holding its weights
// by handle: the 7 kB difference in the enum itself costs nothing, and a box would stand in
// the way of burn's Module derive.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Backbone {
    IResNet(IResNet),
    MobileFaceNet(MobileFaceNet),
    Vit(VisionTransformer),
}

#[derive(Debug, Clone)]
pub enum BackboneConfig {
    IResNet(IResNetConfig),
    MobileFaceNet(MobileFaceNetConfig),
    Vit(VitConfig),
}

impl BackboneConfig {
    pub fn init(&self, device: &Device) -> Backbone {
        match self {
            BackboneConfig::IResNet(c) => Backbone::IResNet(c.init(device)),
            BackboneConfig::MobileFaceNet(c) => Backbone::MobileFaceNet(c.init(device)),
            BackboneConfig::Vit(c) => Backbone::Vit(c.init(device)),
        }
    }
}

impl From<IResNetConfig> for BackboneConfig {
    fn from(config: IResNetConfig) -> Self {
        BackboneConfig::IResNet(config)
    }
}

impl From<MobileFaceNetConfig> for BackboneConfig {
    fn from(config: MobileFaceNetConfig) -> Self {
        BackboneConfig::MobileFaceNet(config)
    }
}

impl From<VitConfig> for BackboneConfig {
    fn from(config: VitConfig) -> Self {
        BackboneConfig::Vit(config)
    }
}

impl From<IResNet> for Backbone {
    fn from(model: IResNet) -> Self {
        Backbone::IResNet(model)
    }
}

impl Backbone {
    /// Raw RGB 0–255, [N, 3, 112, 112] → embedding [N, E] (not L2-normalised).
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.forward_at(images, Precision::Fp32)
    }

    /// [`Backbone::forward`] with the convolutions and the FC layer at `precision`.
    pub fn forward_at(&self, images: Tensor<4>, precision: Precision) -> Tensor<2> {
        match self {
            Backbone::IResNet(m) => m.forward_at(images, precision),
            Backbone::MobileFaceNet(m) => m.forward_at(images, precision),
            Backbone::Vit(m) => m.forward_at(images, precision),
        }
    }

    /// The embedding's BatchNorm (the last layer of each).
    pub fn features(&self) -> &BatchNorm {
        match self {
            Backbone::IResNet(m) => &m.features,
            Backbone::MobileFaceNet(m) => &m.features,
            Backbone::Vit(m) => &m.features,
        }
    }

    pub fn embedding_size(&self) -> usize {
        self.features().gamma.dims()[0]
    }

    /// The iresnet, if this is one (the ONNX export and import of iresnets' graphs).
    pub fn iresnet(&self) -> Option<&IResNet> {
        match self {
            Backbone::IResNet(m) => Some(m),
            Backbone::MobileFaceNet(_) | Backbone::Vit(_) => None,
        }
    }
}

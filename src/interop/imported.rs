//! A backbone's weights read from another tool's file (an ONNX graph, arcface_torch's .pth),
//! as our tensors: what `import` writes as a checkpoint and `eval`/`infer` run.

use std::collections::BTreeMap;

use anyhow::Result;
use burn::module::Module;
use burn::tensor::{Device, TensorData};

use crate::checkpoint::{Checkpoint, Meta, load_named};
use crate::config::Config;
use crate::data::loader::Cursor;
use crate::model::{Backbone, Network};

pub struct Imported {
    pub network: Network,
    pub embedding_size: usize,
    /// Our backbone paths (`layer1.0.conv1.weight`, `bn1.gamma`, …) → values.
    pub tensors: BTreeMap<String, TensorData>,
    /// What the user should know about the conversion.
    pub notes: Vec<String>,
}

impl Imported {
    /// The seed's config with the imported network's shape.
    pub fn config(&self) -> Config {
        Config {
            network: self.network,
            embedding_size: self.embedding_size,
            ..Config::default()
        }
    }

    /// Our backbone with the imported weights, in inference mode.
    pub fn backbone(&self, device: &Device) -> Result<Backbone> {
        let model = self.config().backbone().init(device);
        Ok(load_named(model, "", &self.tensors)?.valid())
    }

    /// A checkpoint holding the backbone only (step 0, no head): for `eval`, `export`, `infer`.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            meta: Meta {
                config: self.config(),
                num_classes: 0,
                step: 0,
                cursor: Cursor::default(),
                world_size: 1,
                accuracy: None,
                tensors: Vec::new(),
                head_shards: Vec::new(),
                run: None,
                skipped_records: Vec::new(),
                adaface_norms: None,
            },
            crc: 0,
            tensors: self
                .tensors
                .iter()
                .map(|(k, v)| (format!("backbone.{k}"), v.clone()))
                .collect(),
        }
    }
}

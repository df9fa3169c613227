//! An ONNX graph being written: the weights still to place (arcface_torch's names and layouts),
//! the nodes, the initializers, and the layers our backbones share as opset-8 nodes (Conv,
//! BatchNormalization, PRelu, Gemm). `export.rs` and `export_vit.rs` lay their networks with it.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, PaddingConfig2d};
use tract_onnx::pb;

use super::proto::{
    attr_float, attr_int, attr_ints, attr_tensor, float_tensor, int64_tensor, node,
};
use crate::model::layers::BN_EPS;

pub(super) struct Graph {
    /// arcface_torch name → (PyTorch-layout shape, values).
    pub(super) weights: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    pub(super) nodes: Vec<pb::NodeProto>,
    pub(super) initializers: Vec<pb::TensorProto>,
}

impl Graph {
    /// Moves the weight `name` into the initializers; its name is the value name.
    pub(super) fn weight(&mut self, name: &str, shape: Option<Vec<usize>>) -> Result<String> {
        let (stored, values) = self
            .weights
            .remove(name)
            .with_context(|| format!("the model has no tensor `{name}`"))?;
        let shape = shape.unwrap_or(stored);
        self.initializers.push(float_tensor(name, &shape, &values));
        Ok(name.to_string())
    }

    pub(super) fn add(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attrs: Vec<pb::AttributeProto>,
    ) -> String {
        self.nodes.push(node(op, name, inputs, name, attrs));
        name.to_string()
    }

    pub(super) fn constant(&mut self, name: &str, value: f32) -> String {
        let tensor = float_tensor(name, &[1], &[value]);
        self.add("Constant", name, &[], vec![attr_tensor("value", tensor)])
    }

    /// An int64 initializer (a Reshape's shape, a Gather's index): opset 8's Constant node
    /// holds floats only.
    pub(super) fn int64_initializer(
        &mut self,
        name: &str,
        dims: &[usize],
        values: &[i64],
    ) -> String {
        self.initializers.push(int64_tensor(name, dims, values));
        name.to_string()
    }

    pub(super) fn conv(&mut self, module: &str, conv: &Conv2d, x: &str) -> Result<String> {
        let pads = match conv.padding {
            PaddingConfig2d::Explicit(top, left, bottom, right) => [top, left, bottom, right],
            PaddingConfig2d::Valid => [0; 4],
            _ => bail!("{module}: only explicit or no paddings are exported"),
        };
        if conv.dilation != [1, 1] {
            bail!("{module}: only undilated convolutions are exported");
        }
        let [kh, kw] = conv.kernel_size;
        let mut inputs = vec![
            x.to_string(),
            self.weight(&format!("{module}.weight"), None)?,
        ];
        if conv.bias.is_some() {
            inputs.push(self.weight(&format!("{module}.bias"), None)?);
        }
        let attrs = vec![
            attr_ints("kernel_shape", &[kh as i64, kw as i64]),
            attr_ints("strides", &conv.stride.map(|s| s as i64)),
            attr_ints("pads", &pads.map(|p| p as i64)),
            attr_ints("dilations", &[1, 1]),
            attr_int("group", conv.groups as i64),
        ];
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        Ok(self.add("Conv", module, &inputs, attrs))
    }

    /// A fully connected layer on [N, in] as Gemm (B transposed: PyTorch's [out, in] weight);
    /// a bias-free one gets a zero bias `{module}.zero_bias`, which opset 8's Gemm requires.
    pub(super) fn gemm(&mut self, module: &str, x: &str, bias: bool) -> Result<String> {
        let name = format!("{module}.weight");
        let out_features = self.weights.get(&name).map(|(s, _)| s[0]).unwrap_or(0);
        let weight = self.weight(&name, None)?;
        let bias = if bias {
            self.weight(&format!("{module}.bias"), None)?
        } else {
            let zero = format!("{module}.zero_bias");
            let zeros = vec![0.0; out_features];
            self.initializers
                .push(float_tensor(&zero, &[out_features], &zeros));
            zero
        };
        Ok(self.add("Gemm", module, &[x, &weight, &bias], gemm_attributes()))
    }

    pub(super) fn batch_norm(&mut self, module: &str, bn: &BatchNorm, x: &str) -> Result<String> {
        if (bn.epsilon - BN_EPS).abs() > 1e-12 {
            bail!(
                "{module}: BatchNorm epsilon {} (the model's is {BN_EPS})",
                bn.epsilon
            );
        }
        let inputs = ["weight", "bias", "running_mean", "running_var"]
            .map(|p| self.weight(&format!("{module}.{p}"), None))
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        let attrs = vec![
            attr_float("epsilon", bn.epsilon as f32),
            // ONNX's momentum is MXNet's (the kept share of the running statistics).
            attr_float("momentum", (1.0 - bn.momentum) as f32),
        ];
        let mut all = vec![x];
        all.extend(inputs.iter().map(String::as_str));
        Ok(self.add("BatchNormalization", module, &all, attrs))
    }

    pub(super) fn prelu(&mut self, module: &str, x: &str) -> Result<String> {
        let name = format!("{module}.weight");
        let channels = self.weights.get(&name).map(|(s, _)| s[0]).unwrap_or(0);
        // (C,1,1) broadcasts over [N,C,H,W] by ONNX's right-aligned rule; (C,) would not.
        let slope = self.weight(&name, Some(vec![channels, 1, 1]))?;
        Ok(self.add("PRelu", module, &[x, &slope], vec![]))
    }
}

pub(super) fn gemm_attributes() -> Vec<pb::AttributeProto> {
    vec![
        attr_float("alpha", 1.0),
        attr_float("beta", 1.0),
        attr_int("transB", 1),
    ]
}

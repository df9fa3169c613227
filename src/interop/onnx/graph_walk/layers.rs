//! The layers read off the graph as our backbone's tensors: Conv (with the BatchNorm an
//! exporter may have folded into it), BatchNormalization, PRelu, and an LResNet-E-IR unit of
//! them.

use anyhow::{Context, Result, bail};
use tract_onnx::pb;

use super::{ConvRead, UnitShape, Walk};
use crate::interop::arcface_torch::move_epsilon;
use crate::interop::onnx::proto::attribute;
use crate::model::iresnet::BN_EPS;

impl<'a> Walk<'a> {
    /// An ungrouped Conv with symmetric "same" padding (or, with `grouped_convolutions`, any
    /// group count and equal padding on every side) → (output, [out channels, in channels per
    /// group, kernel, stride], its bias if it has one).
    pub fn conv(&mut self, node: &'a pb::NodeProto, path: &str) -> Result<ConvRead<'a>> {
        let (tensor, values) = self.constant(node, 1)?;
        let dims: Vec<usize> = tensor.dims.iter().map(|&d| d as usize).collect();
        let [out, inp, kh, kw] = dims[..] else {
            bail!(
                "Conv `{}`: weight `{}` has shape {dims:?}, expected 4-D",
                node.name,
                tensor.name
            );
        };
        let bias = if node.input.get(2).is_some_and(|b| !b.is_empty()) {
            let (b, bias) = self.constant(node, 2)?;
            if bias.len() != out {
                bail!(
                    "Conv `{}`: bias `{}` has {} values for {out} output channels",
                    node.name,
                    b.name,
                    bias.len()
                );
            }
            Some(bias)
        } else {
            None
        };
        let ints = |name: &str| attribute(node, name).map(|a| a.ints.clone());
        let strides = ints("strides").unwrap_or(vec![1, 1]);
        let pads = ints("pads").unwrap_or(vec![0; 4]);
        let group = attribute(node, "group").map_or(1, |a| a.i);
        let (ph, pw) = ((kh / 2) as i64, (kw / 2) as i64);
        let padding_ok = if self.grouped_convolutions {
            pads.len() == 4 && pads.iter().all(|&p| p == pads[0])
        } else {
            group == 1 && pads == [ph, pw, ph, pw]
        };
        if kh != kw || strides.len() != 2 || strides[0] != strides[1] || !padding_ok {
            bail!(
                "Conv `{}`: kernel {kh}×{kw}, strides {strides:?}, pads {pads:?}, group {group}: \
                 not {} convolution",
                node.name,
                if self.grouped_convolutions {
                    "a MobileFaceNet"
                } else {
                    "an LResNet-E-IR"
                }
            );
        }
        self.put(format!("{path}.weight"), dims.clone(), values);
        Ok((
            Self::output(node)?,
            [out, inp, kh, strides[0] as usize],
            bias,
        ))
    }

    /// A Conv and the BatchNorm after it → (the BatchNorm's output, the Conv's shape). Where an
    /// exporter folded the BatchNorm into the Conv (torch.onnx.export in eval mode), the Conv
    /// has a bias and no BatchNorm follows: the bias becomes a BatchNorm with γ = 1, β = bias,
    /// mean 0 and variance 1 − ε, which computes exactly the Conv's output.
    pub fn conv_bn(
        &mut self,
        node: &'a pb::NodeProto,
        conv_path: &str,
        bn_path: &str,
    ) -> Result<(&'a str, [usize; 4])> {
        let (y, shape, bias) = self.conv(node, conv_path)?;
        let next = self.next_nodes(y);
        if let [bn] = next.as_slice()
            && bn.op_type == "BatchNormalization"
        {
            let (out, _) = self.batch_norm(bn, bn_path)?;
            if let Some(bias) = bias {
                // BN(Wx + b) with mean μ is BN(Wx) with mean μ − b.
                let key = format!("{bn_path}.running_mean");
                let mean = self.tensors[&key].try_to_vec::<f32>().expect("read as f32");
                let shifted: Vec<f32> = mean.iter().zip(&bias).map(|(m, b)| m - b).collect();
                self.put(key, vec![shifted.len()], shifted);
            }
            return Ok((out, shape));
        }
        let channels = shape[0];
        let beta = bias.unwrap_or_else(|| vec![0.0; channels]);
        let variance = (1.0 - BN_EPS) as f32;
        for (name, values) in [
            ("gamma", vec![1.0; channels]),
            ("beta", beta),
            ("running_mean", vec![0.0; channels]),
            ("running_var", vec![variance; channels]),
        ] {
            self.put(format!("{bn_path}.{name}"), vec![channels], values);
        }
        if !self
            .notes
            .iter()
            .any(|n| n.contains("folded into the convolutions"))
        {
            self.notes.push(
                "BatchNorm folded into the convolutions (a Conv with a bias and no BatchNorm \
                 after it): each bias kept as a BatchNorm with γ = 1, β = bias, mean 0"
                    .into(),
            );
        }
        Ok((y, shape))
    }

    /// BatchNormalization → (output, channels).
    pub fn batch_norm(&mut self, node: &'a pb::NodeProto, path: &str) -> Result<(&'a str, usize)> {
        let mut parts = Vec::new();
        for i in 1..=4 {
            let (tensor, values) = self.constant(node, i)?;
            if tensor.dims.len() != 1 {
                bail!(
                    "BatchNormalization `{}`: `{}` has shape {:?}, expected (C,)",
                    node.name,
                    tensor.name,
                    tensor.dims
                );
            }
            parts.push(values);
        }
        let channels = parts[0].len();
        if parts.iter().any(|p| p.len() != channels) {
            bail!(
                "BatchNormalization `{}`: parameters of different lengths",
                node.name
            );
        }
        let stored = attribute(node, "epsilon").map_or(1e-5, |a| a.f);
        let epsilon = stored as f64;
        if (epsilon - BN_EPS).abs() > 1e-9 {
            let (head, tail) = parts.split_at_mut(3);
            if move_epsilon(&mut head[0], &mut tail[0], epsilon, BN_EPS) {
                self.notes.push(format!(
                    "BatchNormalization `{}`: running variances below {:.0e}: γ rescaled there \
                     instead",
                    node.name,
                    BN_EPS - epsilon
                ));
            }
            if !self.notes.iter().any(|n| n.contains("epsilon")) {
                self.notes.push(format!(
                    "BatchNorm epsilon {stored} in the file; folded into the running variances \
                     (ours is {BN_EPS})"
                ));
            }
        }
        let [gamma, beta, mean, var]: [Vec<f32>; 4] = parts.try_into().expect("four parts");
        for (name, values) in [
            ("gamma", gamma),
            ("beta", beta),
            ("running_mean", mean),
            ("running_var", var),
        ] {
            self.put(format!("{path}.{name}"), vec![channels], values);
        }
        Ok((Self::output(node)?, channels))
    }

    pub fn prelu(
        &mut self,
        node: &'a pb::NodeProto,
        path: &str,
        channels: usize,
    ) -> Result<&'a str> {
        let (tensor, values) = self.constant(node, 1)?;
        if values.len() != channels {
            bail!(
                "PRelu `{}`: slope `{}` has {} values for {channels} channels",
                node.name,
                tensor.name,
                values.len()
            );
        }
        self.put(format!("{path}.alpha"), vec![channels], values);
        Self::output(node)
    }

    /// BN → Conv → BN → PRelu → Conv → BN (+ shortcut) → Add, from the unit input `x`.
    pub fn unit(
        &mut self,
        x: &'a str,
        bn1: &'a pb::NodeProto,
        path: &str,
    ) -> Result<(&'a str, UnitShape)> {
        let (y, _) = self.batch_norm(bn1, &format!("{path}.bn1"))?;
        let (y, [width, _, _, s1]) = self.conv_bn(
            self.next(y, &["Conv"])?,
            &format!("{path}.conv1"),
            &format!("{path}.bn2"),
        )?;
        let c = width;
        let y = self.prelu(self.next(y, &["PRelu"])?, &format!("{path}.prelu"), c)?;
        let (y, [_, _, _, stride]) = self.conv_bn(
            self.next(y, &["Conv"])?,
            &format!("{path}.conv2"),
            &format!("{path}.bn3"),
        )?;
        let add = self.next(y, &["Add"])?;
        let other = add
            .input
            .iter()
            .find(|i| i.as_str() != y)
            .with_context(|| format!("Add `{}` has no second input", add.name))?;
        let downsample = if other == x {
            false
        } else {
            // Conv → BatchNorm, or the Conv alone where the BatchNorm was folded into it.
            let sc_conv = match self.producer_of(other, "Conv") {
                Ok(conv) => conv,
                Err(_) => {
                    let sc_bn = self.producer_of(other, "BatchNormalization")?;
                    self.producer_of(&sc_bn.input[0], "Conv")?
                }
            };
            if sc_conv.input[0] != x {
                bail!(
                    "Add `{}`: the shortcut does not start at the unit's input",
                    add.name
                );
            }
            self.conv_bn(
                sc_conv,
                &format!("{path}.downsample.conv"),
                &format!("{path}.downsample.bn"),
            )?;
            true
        };
        if s1 != 1 {
            bail!("unit `{path}`: its first convolution has stride {s1}, expected 1");
        }
        Ok((
            Self::output(add)?,
            UnitShape {
                width,
                stride,
                downsample,
            },
        ))
    }
}

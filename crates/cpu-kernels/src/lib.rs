//! f32 kernels of arcface's training operations on the CPU, over NCHW data in plain slices:
//! the bias-free 2-D convolution as im2col and one matrix product per image ([`conv`]; the
//! depthwise one directly, [`depthwise`]),
//! BatchNorm in training ([`batch_norm`]), PReLU ([`prelu`]), ReLU6 ([`relu6`]) and scaled
//! dot-product attention ([`attention`]), each with its backward.
//!
//! burn's CPU backend (Flex) composes these from generic tensor operations; arcface plugs these
//! kernels in instead (src/model/flex/). Every reduction is summed in an order fixed by the
//! shapes alone, never by which thread finishes first, so runs repeat bit for bit.

pub mod attention;
pub mod batch_norm;
pub mod conv;
pub mod depthwise;
pub mod matmul;
pub mod prelu;
pub mod relu6;

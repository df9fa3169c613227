//! The parameters of a module that have a gradient, as libtorch tensors: what the fused
//! optimiser steps on LibTorch (sgd/fused.rs, adamw/fused.rs) update in place.
#![allow(deprecated)] // burn-tch is deprecated upstream; see device.rs.

use burn::backend::LibTorch;
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use burn_tch::TchTensor;

/// One parameter with a gradient, as libtorch tensors.
pub(super) struct Entry {
    pub path: String,
    pub weight: TchTensor,
    pub grad: TchTensor,
    pub numel: usize,
    pub device: Device,
}

/// Collects every parameter with a gradient; `ok` turns false at the first one that is not a
/// LibTorch tensor (the caller then takes the generic path, nothing changed).
struct Collect<'a> {
    grads: &'a GradientsParams,
    prefix: &'a str,
    path: Vec<String>,
    entries: Vec<Entry>,
    ok: bool,
}

impl ModuleVisitor for Collect<'_> {
    crate::module_path::track_module_path!();

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !self.ok {
            return;
        }
        let Some(grad) = self.grads.get::<D>(param.id) else {
            return;
        };
        let inner = param.val().inner();
        let numel = inner.shape().num_elements();
        let device = inner.device();
        match (
            inner.try_into_primitive::<LibTorch>(),
            grad.try_into_primitive::<LibTorch>(),
        ) {
            (Ok(weight), Ok(grad)) => self.entries.push(Entry {
                path: format!("{}{}", self.prefix, self.path.join(".")),
                weight,
                grad,
                numel,
                device,
            }),
            _ => self.ok = false,
        }
    }
}

/// Every parameter of `module` with a gradient in `grads`, its path prefixed with `prefix`;
/// None where libtorch's kernels are off, there is none, or one is not a LibTorch tensor (the
/// caller then takes the generic path, nothing changed).
pub(super) fn libtorch_parameters<M: Module>(
    module: &M,
    grads: &GradientsParams,
    prefix: &str,
) -> Option<Vec<Entry>> {
    if !crate::device::libtorch_fused_kernels() {
        return None;
    }
    let mut collect = Collect {
        grads,
        prefix,
        path: Vec::new(),
        entries: Vec::new(),
        ok: true,
    };
    module.visit(&mut collect);
    let Collect { entries, ok, .. } = collect;
    (ok && !entries.is_empty()).then_some(entries)
}

/// The weights and gradients of a group of parameters, as the fused kernels take them.
pub(super) fn weights_and_grads(group: &[&Entry]) -> (Vec<TchTensor>, Vec<TchTensor>) {
    group
        .iter()
        .map(|e| (e.weight.clone(), e.grad.clone()))
        .unzip()
}

/// A fused call of `optimizer` refused up front (its buffers, shapes or devices: nothing of
/// that group written). Before any group was written the generic path can still take the
/// step: false, with a warning. After, it would step those groups twice: a panic.
pub(super) fn refused(written: bool, optimizer: &str, message: &str) -> bool {
    assert!(!written, "{optimizer} step: {message}");
    eprintln!(
        "warning: libtorch's fused {optimizer} refused ({message}); generic {optimizer} instead"
    );
    false
}

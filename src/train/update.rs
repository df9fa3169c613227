//! The walk both optimisers share: every parameter of a module that has a gradient, replaced by
//! what the optimiser makes of its path, weight and gradient (flat), with its id, shape and
//! require-grad flag kept.

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

/// Parameters of BatchNorm (gamma/beta) and PReLU (alpha) by their path (LayerNorm's γ/β too).
pub(super) fn is_norm_or_prelu(path: &str) -> bool {
    path.ends_with(".gamma") || path.ends_with(".beta") || path.ends_with(".alpha")
}

/// An optimiser's update of one parameter: (path, weight, gradient) → new weight, all flat.
pub(super) type Update<'a> = dyn FnMut(&str, Tensor<1>, Tensor<1>) -> Tensor<1> + 'a;

struct Mapper<'a, 'b> {
    grads: &'a mut GradientsParams,
    prefix: &'a str,
    path: Vec<String>,
    update: &'a mut Update<'b>,
}

impl ModuleMapper for Mapper<'_, '_> {
    crate::module_path::track_module_path!();

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let path = format!("{}{}", self.prefix, self.path.join("."));
        let require_grad = tensor.is_require_grad();
        let shape = tensor.shape();
        let weight = tensor.inner().flatten::<1>(0, D - 1);
        let updated = (self.update)(&path, weight, grad.flatten::<1>(0, D - 1));
        let mut updated = Tensor::from_inner(updated.reshape(shape));
        if require_grad {
            updated = updated.require_grad();
        }
        Param::from_mapped_value(id, updated, mapper)
    }
}

/// `module` with every parameter that has a gradient in `grads` (taken out of it) replaced by
/// `update(prefix + path, weight, gradient)`.
pub(super) fn update_params<M: Module>(
    module: M,
    grads: &mut GradientsParams,
    prefix: &str,
    update: &mut Update<'_>,
) -> M {
    module.map(&mut Mapper {
        grads,
        prefix,
        path: Vec::new(),
        update,
    })
}

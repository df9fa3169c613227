//! A module's float tensors by parameter path ("backbone.layer1.0.conv1.weight"), out of a
//! module and back into one: what checkpoints, imports and DDP's start hold.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};

/// All float tensors of a module (parameters and BatchNorm statistics) by path.
pub fn named_tensors<M: Module>(module: &M, prefix: &str) -> BTreeMap<String, TensorData> {
    struct Collect<'a> {
        prefix: &'a str,
        path: Vec<String>,
        out: BTreeMap<String, TensorData>,
    }
    impl ModuleVisitor for Collect<'_> {
        crate::module_path::track_module_path!();
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let name = format!("{}{}", self.prefix, self.path.join("."));
            self.out
                .insert(name, param.val().to_data().convert::<f32>());
        }
    }
    let mut c = Collect {
        prefix,
        path: Vec::new(),
        out: BTreeMap::new(),
    };
    module.visit(&mut c);
    c.out
}

/// The gradients `grads` holds for `module`'s parameters, by path (f32).
pub fn named_gradients<M: Module>(
    module: &M,
    grads: &GradientsParams,
) -> BTreeMap<String, TensorData> {
    struct Collect<'a> {
        grads: &'a GradientsParams,
        path: Vec<String>,
        out: BTreeMap<String, TensorData>,
    }
    impl ModuleVisitor for Collect<'_> {
        crate::module_path::track_module_path!();
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                let data = g.into_data().convert::<f32>();
                self.out.insert(self.path.join("."), data);
            }
        }
    }
    let mut c = Collect {
        grads,
        path: Vec::new(),
        out: BTreeMap::new(),
    };
    module.visit(&mut c);
    c.out
}

/// The tensors a module needs that a set of named tensors lacks or holds in another shape,
/// each named. The caller adds which file they came from.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("; "))]
pub struct TensorMismatch {
    pub problems: Vec<String>,
}

/// Replaces every float tensor of `module` by the one stored under its path; a missing name
/// or a shape that differs is an error naming the tensor.
pub fn load_named<M: Module>(
    module: M,
    prefix: &str,
    tensors: &BTreeMap<String, TensorData>,
) -> Result<M, TensorMismatch> {
    struct Load<'a> {
        prefix: &'a str,
        path: Vec<String>,
        tensors: &'a BTreeMap<String, TensorData>,
        errors: Vec<String>,
    }
    impl ModuleMapper for Load<'_> {
        crate::module_path::track_module_path!();
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let name = format!("{}{}", self.prefix, self.path.join("."));
            let (id, tensor, mapper) = param.consume();
            let Some(data) = self.tensors.get(&name) else {
                self.errors.push(format!("tensor `{name}` is missing"));
                return Param::from_mapped_value(id, tensor, mapper);
            };
            if data.shape().as_slice() != tensor.shape().as_slice() {
                self.errors.push(format!(
                    "tensor `{name}` has shape {:?}, the model needs {:?}",
                    data.shape().as_slice(),
                    tensor.shape().as_slice()
                ));
                return Param::from_mapped_value(id, tensor, mapper);
            }
            let require_grad = tensor.is_require_grad();
            let mut loaded = Tensor::<D>::from_data(data.clone(), &tensor.device());
            if require_grad {
                loaded = loaded.require_grad();
            }
            Param::from_mapped_value(id, loaded, mapper)
        }
    }
    let mut l = Load {
        prefix,
        path: Vec::new(),
        tensors,
        errors: Vec::new(),
    };
    let module = module.map(&mut l);
    if l.errors.is_empty() {
        Ok(module)
    } else {
        Err(TensorMismatch { problems: l.errors })
    }
}

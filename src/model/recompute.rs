//! Activation checkpointing as arcface_torch's vit.py does it (`using_checkpoint`: each block
//! through `torch.utils.checkpoint`): a module's forward whose activations are not kept for the
//! backward; the backward runs the forward again, from the kept input, under an autodiff graph
//! of its own, and differentiates that.
//!
//! burn 0.22's own checkpointing recomputes single cheap operations (its `Balanced` strategy),
//! never a block; it does let a backward step run an inner backward (the graph it is walking
//! stays locked, a fresh one is built beside it), which is what this is. One operation of the
//! autodiff graph stands for the whole module, with two parents: the input, and the module's
//! parameters flattened and concatenated (so that one operation of fixed arity serves any
//! module; the concatenation's own backward splits the gradient back onto each parameter).
//!
//! The module's forward must be a function of its input and parameters alone: anything random
//! (drop path) is drawn by the caller and captured, as torch.utils.checkpoint replays the RNG.
//! Both passes run the same operations on the same values, so the gradients are those of the
//! plain forward to the bit (tests/vit.rs).

use std::marker::PhantomData;
use std::sync::Arc;

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Backend, DispatchKindConversion, DispatchTensor, Flex};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;

/// A module's forward on [N, T, D] tokens, with what it captured (precision, drop-path masks).
pub type Forward<M> = Arc<dyn Fn(&M, Tensor<3>) -> Tensor<3> + Send + Sync>;

/// `forward(module, x)`, its activations recomputed in the backward rather than kept. Outside
/// autodiff, for a module without parameters, or on a backend other than burn's CPU backend
/// and LibTorch, the plain forward.
pub fn checkpointed<M>(module: &M, x: Tensor<3>, forward: Forward<M>) -> Tensor<3>
where
    M: Module + 'static,
{
    if !x.is_autodiff() || module.num_params() == 0 {
        return forward(module, x);
    }
    let params = flat_parameters(module, None);
    let parts = (module.clone(), forward);
    if let Some(y) = on::<Flex, M>(&x, &params, &parts) {
        return y;
    }
    #[cfg(feature = "tch")]
    #[allow(deprecated)] // burn-tch (LibTorch) is deprecated upstream; see device.rs.
    if let Some(y) = on::<burn::backend::LibTorch, M>(&x, &params, &parts) {
        return y;
    }
    (parts.1)(module, x)
}

/// Every parameter of `module` flattened, concatenated in the visitor's order (the same for a
/// module and its fresh copy); with `grads`, their gradients there instead (zeros for one the
/// forward does not reach).
fn flat_parameters<M: Module>(module: &M, grads: Option<&burn::tensor::Gradients>) -> Tensor<1> {
    struct Flatten<'a> {
        grads: Option<&'a burn::tensor::Gradients>,
        parts: Vec<Tensor<1>>,
    }
    impl ModuleVisitor for Flatten<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = param.val();
            let part = match self.grads {
                None => value,
                Some(grads) => value
                    .grad(grads)
                    .unwrap_or_else(|| value.inner().zeros_like()),
            };
            self.parts.push(part.flatten::<1>(0, D - 1));
        }
    }
    let mut flatten = Flatten {
        grads,
        parts: Vec::new(),
    };
    module.visit(&mut flatten);
    Tensor::cat(flatten.parts, 0)
}

/// The module's parameters as fresh leaves of a graph of their own: gradients wanted (the
/// backward's forward) or not (the forward's value, computed by the same autodiff operations
/// as the plain forward's: burn's LayerNorm, for one, rounds otherwise outside autodiff).
struct FreshLeaves {
    require_grad: bool,
}

impl ModuleMapper for FreshLeaves {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let leaf = tensor.inner().autodiff();
        let leaf = if self.require_grad {
            leaf.require_grad()
        } else {
            leaf
        };
        Param::from_mapped_value(id, leaf, mapper)
    }
}

/// What the backward needs: the module (its parameters' values), its forward, and the input.
struct Saved<M, P> {
    module: M,
    forward: Forward<M>,
    input: P,
}

impl<M: Clone, P: Clone> Clone for Saved<M, P> {
    fn clone(&self) -> Self {
        Saved {
            module: self.module.clone(),
            forward: self.forward.clone(),
            input: self.input.clone(),
        }
    }
}

impl<M, P> core::fmt::Debug for Saved<M, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("recomputed module")
    }
}

struct RecomputeBackward<M>(PhantomData<fn() -> M>);

impl<M> core::fmt::Debug for RecomputeBackward<M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("RecomputeBackward")
    }
}

/// The operation on backend `B` under autodiff; None where `x` does not live there.
fn on<B, M>(
    x: &Tensor<3>,
    params: &Tensor<1>,
    (module, forward): &(M, Forward<M>),
) -> Option<Tensor<3>>
where
    B: Backend,
    M: Module + 'static,
    DispatchTensor: DispatchKindConversion<B> + DispatchKindConversion<Autodiff<B>>,
{
    let x = x.clone().try_into_primitive::<Autodiff<B>>().ok()?;
    let params = params.clone().try_into_primitive::<Autodiff<B>>().ok()?;
    let input = x.primitive().clone();
    // The forward's value, nothing tracked, so nothing kept.
    let untracked = module.valid().map(&mut FreshLeaves {
        require_grad: false,
    });
    let plain = forward(
        &untracked,
        Tensor::from_primitive::<B>(input.clone()).autodiff(),
    );
    let output = plain.inner().try_into_primitive::<B>().ok()?;
    let state = Saved {
        module: module.clone(),
        forward: forward.clone(),
        input,
    };
    let y = match RecomputeBackward::<M>(PhantomData)
        .prepare::<NoCheckpointing>([x.node(), params.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state, output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    Some(Tensor::from_primitive::<Autodiff<B>>(y))
}

impl<B, M> Backward<B, 2> for RecomputeBackward<M>
where
    B: Backend,
    M: Module + 'static,
    DispatchTensor: DispatchKindConversion<B>,
{
    type State = Saved<M, B::FloatTensorPrimitive>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [input_node, params_node] = ops.parents;
        let Saved {
            module,
            forward,
            input,
        } = ops.state;
        // The forward again, on fresh leaves, differentiated against the output's gradient:
        // Σ y ⊙ g has gradient g at y exactly (the product's backward multiplies by 1.0).
        let fresh = module.valid().map(&mut FreshLeaves { require_grad: true });
        let x = Tensor::<3>::from_primitive::<B>(input)
            .autodiff()
            .require_grad();
        let y = forward(&fresh, x.clone());
        let inner = (y * Tensor::<3>::from_primitive::<B>(grad))
            .sum()
            .backward();
        if let Some(node) = input_node {
            let dx = x
                .grad(&inner)
                .expect("the input is a leaf of the recomputed graph");
            register::<B, 3>(grads, node.id, dx);
        }
        if let Some(node) = params_node {
            register::<B, 1>(grads, node.id, flat_parameters(&fresh, Some(&inner)));
        }
    }
}

/// `gradient` (on the inner device) registered for node `id` of the graph being walked.
fn register<B: Backend, const D: usize>(grads: &mut Gradients, id: NodeId, gradient: Tensor<D>)
where
    DispatchTensor: DispatchKindConversion<B>,
{
    let gradient = gradient
        .try_into_primitive::<B>()
        .expect("the recomputed gradient lives on the backend of the graph");
    grads.register::<B>(id, gradient);
}

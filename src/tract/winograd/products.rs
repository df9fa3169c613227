//! The 16 matrix products of a Winograd convolution, M[e] = U[e]·V[e], in two halves by tile
//! position (e < 8, e ≥ 8). Each half is a small tract plan of its own, an `EinSum` that tract
//! optimises into its matrix kernels, so tract still does the arithmetic. The split is for a lone
//! image: tract spreads one product over the cores poorly at these sizes (r100's 14×14 layer:
//! 1.46 ms on one core, 1.38 on two), while the two halves side by side take 0.72 ms (measured,
//! docs/HISTORY.md). In a batch, where each core has an image, the halves run one after the
//! other.

use tract_linalg::multithread::{Executor, multithread_tract_scope};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::axes::AxesMapping;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::plan::SimpleState;
use tract_onnx::tract_hir::internal::*;

use super::Geometry;
use crate::tract::eval::spread_over_threads;

#[derive(Debug, Clone)]
pub(super) struct Products {
    geometry: Geometry,
    /// U[0..8]·V[0..8] and U[8..16]·V[8..16].
    halves: [Arc<TypedSimplePlan>; 2],
}

impl Products {
    /// `kernels`: the transformed kernel's halves, each [8, o, c].
    pub(super) fn new(geometry: Geometry, kernels: [Tensor; 2]) -> TractResult<Products> {
        let g = geometry;
        let half = |kernel: Tensor| -> TractResult<Arc<TypedSimplePlan>> {
            let mut model = TypedModel::default();
            let v = model.add_source("v", f32::fact([g.half(), g.c, g.n * g.tiles()]))?;
            let u = model.add_const("u", kernel)?;
            let axes: AxesMapping = "eoc,ect->eot".parse()?;
            let m = model.wire_node("m", EinSum::new(axes, f32::datum_type()), &[u, v])?;
            model.select_output_outlets(&m)?;
            model.into_optimized()?.into_runnable()
        };
        let [low, high] = kernels;
        Ok(Products {
            geometry,
            halves: [half(low)?, half(high)?],
        })
    }

    fn run(&self, states: &mut ProductStates, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (low, high) = args_2!(inputs);
        let [first, second] = &mut states.halves;
        let [plan_low, plan_high] = &self.halves;
        // Each half on one thread: the other half has the other core.
        let one = |plan: &Arc<TypedSimplePlan>, state: &mut Option<TypedSimpleState>, v: TValue| {
            if state.is_none() {
                *state = Some(SimpleState::new(plan)?);
            }
            let state = state.as_mut().unwrap();
            multithread_tract_scope(Executor::SingleThread, || state.run(tvec!(v)))
                .map(|mut outputs| outputs.remove(0))
        };
        let (m_low, m_high) = if spread_over_threads() {
            rayon::join(
                || one(plan_low, first, low),
                || one(plan_high, second, high),
            )
        } else {
            (one(plan_low, first, low), one(plan_high, second, high))
        };
        Ok(tvec!(m_low?, m_high?))
    }
}

// Equal when they compute the same: the plans are built from the kernel, so compare those.
impl PartialEq for Products {
    fn eq(&self, other: &Self) -> bool {
        self.geometry == other.geometry
            && self
                .halves
                .iter()
                .zip(&other.halves)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

impl Eq for Products {}

impl Op for Products {
    fn name(&self) -> StaticName {
        "WinogradProducts".into()
    }
    op_as_typed_op!();
}

impl TypedOp for Products {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let g = self.geometry;
        let columns = g.n * g.tiles();
        for input in inputs {
            ensure!(input.shape.as_concrete() == Some(&[g.half(), g.c, columns][..]));
        }
        let half = f32::fact([g.half(), g.o, columns]);
        Ok(tvec!(half.clone(), half))
    }
}

impl EvalOp for Products {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.run(&mut ProductStates::default(), inputs)
    }

    fn state(&self, _ctx: &EvalContext) -> TractResult<Option<Box<dyn OpState>>> {
        Ok(Some(Box::new(ProductStates::default())))
    }
}

/// The halves' run states (their matrix products' scratch space), kept with the outer plan's
/// state so that they are built once per thread, not once per image.
#[derive(Debug, Default)]
struct ProductStates {
    halves: [Option<TypedSimpleState>; 2],
}

// A copy starts empty and builds its own states on first use.
impl Clone for ProductStates {
    fn clone(&self) -> Self {
        ProductStates::default()
    }
}

impl OpState for ProductStates {
    fn eval(
        &mut self,
        _ctx: &EvalContext,
        op: &dyn Op,
        inputs: TVec<TValue>,
    ) -> TractResult<TVec<TValue>> {
        let op = op
            .downcast_ref::<Products>()
            .context("WinogradProducts state on another operation")?;
        op.run(self, inputs)
    }

    fn reset_lanes(&mut self, _lanes: &[LaneId]) -> TractResult<()> {
        Ok(())
    }
}

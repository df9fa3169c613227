//! The α² matrix products of a Winograd convolution, M[e] = U[e]·V[e], one per tile position e,
//! taken in two halves by position (e < α²/2, e ≥ α²/2) as the transforms lay them out.
//!
//! On AVX2 + FMA our product (kernel.rs: U packed once, prefetched), the positions spread over
//! rayon's threads when an image is alone, one after the other in a batch (where each thread
//! already has an image). Elsewhere tract's own kernels: each half a small tract plan of its
//! own, an `EinSum`, the two halves side by side on two cores for a lone image (tract spreads
//! one of these small products over the cores poorly: r100's 14×14 layer, 1.46 ms on one core,
//! 1.38 on two, the halves side by side 0.72; docs/HISTORY.md). Both compute each value as the
//! same chain of fused multiply-adds: their results are equal bit for bit (tested).

use std::cell::RefCell;

use rayon::prelude::*;
use tract_linalg::multithread::{Executor, multithread_tract_scope};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::axes::AxesMapping;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::plan::SimpleState;
use tract_onnx::tract_hir::internal::*;

use super::Geometry;
#[cfg(target_arch = "x86_64")]
use super::kernel;
use crate::tract::eval::{plain, plain_mut, spread_over_threads};

#[derive(Debug, Clone)]
pub(super) struct Products {
    geometry: Geometry,
    engine: Engine,
}

#[derive(Debug, Clone)]
enum Engine {
    /// Our product (kernel.rs): U[e] packed, one per position.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Ours(Arc<Vec<Vec<f32>>>),
    /// tract's: U[0..α²/2]·V[0..α²/2] and U[α²/2..]·V[α²/2..] as two plans.
    Tract([Arc<TypedSimplePlan>; 2]),
}

impl Products {
    /// `u`: the transformed kernel [α², o, c], row-major. Ours where the CPU has AVX2 and FMA.
    pub(super) fn new(geometry: Geometry, u: &[f32]) -> TractResult<Products> {
        #[cfg(target_arch = "x86_64")]
        if crate::tract::eval::has_avx2() {
            return Self::ours(geometry, u);
        }
        Self::tract(geometry, u)
    }

    /// Through kernel.rs. Running it needs AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    pub(super) fn ours(geometry: Geometry, u: &[f32]) -> TractResult<Products> {
        let g = geometry;
        ensure!(u.len() == g.positions() * g.o * g.c);
        let packed = u
            .chunks_exact(g.o * g.c)
            .map(|u| kernel::pack_kernel(u, g.o, g.c))
            .collect();
        Ok(Products {
            geometry,
            engine: Engine::Ours(Arc::new(packed)),
        })
    }

    /// Through tract's kernels.
    pub(super) fn tract(geometry: Geometry, u: &[f32]) -> TractResult<Products> {
        let g = geometry;
        ensure!(u.len() == g.positions() * g.o * g.c);
        let half = |kernel: &[f32]| -> TractResult<Arc<TypedSimplePlan>> {
            let mut model = TypedModel::default();
            let v = model.add_source("v", f32::fact([g.half(), g.c, g.n * g.tiles()]))?;
            let u = model.add_const("u", Tensor::from_shape(&[g.half(), g.o, g.c], kernel)?)?;
            let axes: AxesMapping = "eoc,ect->eot".parse()?;
            let m = model.wire_node("m", EinSum::new(axes, f32::datum_type()), &[u, v])?;
            model.select_output_outlets(&m)?;
            model.into_optimized()?.into_runnable()
        };
        let (low, high) = u.split_at(g.half() * g.o * g.c);
        Ok(Products {
            geometry,
            engine: Engine::Tract([half(low)?, half(high)?]),
        })
    }

    /// The products of V's two halves, with run states of their own.
    #[cfg(test)]
    pub(super) fn compute(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.run(&mut ProductStates::default(), inputs)
    }

    fn run(&self, states: &mut ProductStates, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        match &self.engine {
            Engine::Ours(packed) => self.through_ours(packed, inputs),
            Engine::Tract(halves) => tract_halves(halves, states, inputs),
        }
    }

    /// Every position through kernel.rs, side by side on rayon's threads for a lone image.
    fn through_ours(&self, packed: &[Vec<f32>], inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let g = self.geometry;
        let columns = g.n * g.tiles();
        // Every value is written below.
        let mut low = unsafe { Tensor::uninitialized::<f32>(&[g.half(), g.o, columns])? };
        let mut high = unsafe { Tensor::uninitialized::<f32>(&[g.half(), g.o, columns])? };
        let (v_low, v_high) = (plain(&inputs[0])?, plain(&inputs[1])?);
        let v = v_low
            .chunks_exact(g.c * columns)
            .chain(v_high.chunks_exact(g.c * columns));
        let (m_low, m_high) = (plain_mut(&mut low)?, plain_mut(&mut high)?);
        let m = m_low
            .chunks_exact_mut(g.o * columns)
            .chain(m_high.chunks_exact_mut(g.o * columns));
        let jobs: Vec<_> = packed.iter().zip(v).zip(m).collect();
        let shape = (g.o, g.c, columns);
        let one = |((u, v), m): ((&Vec<f32>, &[f32]), &mut [f32])| {
            #[cfg(target_arch = "x86_64")]
            PANELS.with_borrow_mut(|panels| {
                // SAFETY: `Ours` is only built where the CPU has AVX2 and FMA.
                unsafe { kernel::product(u, v, m, shape, panels) }
            });
            #[cfg(not(target_arch = "x86_64"))]
            unreachable!(
                "our Winograd product is built on x86-64 only: {u:p} {v:p} {m:p} {shape:?}"
            );
        };
        if spread_over_threads() {
            jobs.into_par_iter().for_each(one);
        } else {
            jobs.into_iter().for_each(one);
        }
        Ok(tvec!(low.into_tvalue(), high.into_tvalue()))
    }
}

thread_local! {
    /// kernel.rs's panels of V, kept from product to product on each thread.
    static PANELS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The two halves through tract's plans, each on one thread (the other half has the other core).
fn tract_halves(
    [plan_low, plan_high]: &[Arc<TypedSimplePlan>; 2],
    states: &mut ProductStates,
    inputs: TVec<TValue>,
) -> TractResult<TVec<TValue>> {
    let (low, high) = args_2!(inputs);
    let [first, second] = &mut states.halves;
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

// Equal when they compute the same: the weights are built from the kernel, so compare those.
impl PartialEq for Products {
    fn eq(&self, other: &Self) -> bool {
        let same = match (&self.engine, &other.engine) {
            (Engine::Ours(a), Engine::Ours(b)) => Arc::ptr_eq(a, b),
            (Engine::Tract(a), Engine::Tract(b)) => a.iter().zip(b).all(|(a, b)| Arc::ptr_eq(a, b)),
            _ => false,
        };
        self.geometry == other.geometry && same
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

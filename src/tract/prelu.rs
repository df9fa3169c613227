//! ONNX `PRelu` for tract as one operation that rewrites its input in place.
//!
//! tract-onnx expands `PRelu` into three nodes (`x > 0`, `x · slope`, a select), each a full
//! pass over the activation with two temporaries. On r100 that cost 42 ms of a 314 ms image on
//! one core, where onnxruntime's single PRelu kernel takes 7 ms (docs/HISTORY.md). The
//! face models (our backbones and MTCNN) apply one slope per channel, so the common case here is
//! one multiply-or-keep per value, plane by plane; any other slope shape ONNX allows
//! (unidirectional broadcasting) takes a general path.

use std::ops::Mul;

use tract_onnx::Onnx;
use tract_onnx::prelude::tract_ndarray::Zip;
use tract_onnx::tract_core::broadcast::multi_broadcast;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops::expandable::{Expansion, expand};

/// tract's ONNX reader with our `PRelu` in place of its expansion. Every ONNX graph the crate
/// runs is read through this.
pub fn onnx_reader() -> Onnx {
    let mut onnx = tract_onnx::onnx();
    onnx.op_register
        .insert("PRelu", |_, _| Ok((expand(PReluExpansion), vec![])));
    onnx
}

/// The inference-time face of the operation: same shape and type as `x`.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct PReluExpansion;

impl Expansion for PReluExpansion {
    fn name(&self) -> StaticName {
        "PRelu".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 2)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, &inputs[1].datum_type)?;
        s.equals(&inputs[0].datum_type, &outputs[0].datum_type)?;
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        Ok(())
    }

    fn wire(
        &self,
        name: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(name, PRelu, inputs)
    }
}

/// `y = x` where `x > 0`, else `slope · x` (NaN stays NaN, as in the ONNX definition).
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct PRelu;

impl Op for PRelu {
    fn name(&self) -> StaticName {
        "PRelu".into()
    }
    op_as_typed_op!();
}

impl TypedOp for PRelu {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 2, "PRelu takes x and slope");
        let (x, slope) = (inputs[0], inputs[1]);
        ensure!(
            x.datum_type == slope.datum_type,
            "PRelu: x is {:?}, slope {:?}",
            x.datum_type,
            slope.datum_type
        );
        let broadcast = multi_broadcast(&[x.shape.to_tvec(), slope.shape.to_tvec()])?;
        ensure!(
            broadcast.as_slice() == x.shape.dims(),
            "PRelu: slope of shape {:?} does not broadcast to x of shape {:?}",
            slope.shape,
            x.shape
        );
        Ok(tvec!(x.without_value()))
    }
}

impl EvalOp for PRelu {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, slope) = args_2!(inputs);
        // No copy when this node is the activation's only reader, the case in a backbone.
        let mut x = x.into_tensor();
        match x.datum_type() {
            DatumType::F32 => apply::<f32>(&mut x, &slope)?,
            DatumType::F64 => apply::<f64>(&mut x, &slope)?,
            DatumType::F16 => apply::<f16>(&mut x, &slope)?,
            other => bail!("PRelu on {other:?} values; it takes floating point"),
        }
        Ok(tvec!(x.into_tvalue()))
    }
}

fn apply<T>(x: &mut Tensor, slope: &Tensor) -> TractResult<()>
where
    T: Datum + Copy + PartialOrd + Default + Mul<Output = T>,
{
    let zero = T::default();
    // A select rather than a conditional store, so that the loop vectorises.
    let keep_or_scale = |v: &mut T, a: T| *v = if *v > zero { *v } else { *v * a };
    let dims: TVec<usize> = x.shape().into();
    let slopes = slope.to_plain_array_view::<T>()?;
    let mut values = x.to_plain_array_view_mut::<T>()?;
    let axis = channel_axis(&dims, slope.shape());
    if slopes.len() > 1 && axis.is_none() {
        let slopes = slopes.broadcast(values.raw_dim()).with_context(|| {
            format!(
                "PRelu: slope of shape {:?} does not broadcast to x of shape {dims:?}",
                slope.shape()
            )
        })?;
        Zip::from(&mut values)
            .and(&slopes)
            .for_each(|v, &a| keep_or_scale(v, a));
        return Ok(());
    }
    let slopes: Vec<T> = slopes.iter().copied().collect();
    // Planes of values sharing one slope: everything after the slope's axis.
    let plane = axis.map_or(values.len(), |axis| dims[axis + 1..].iter().product());
    let all = values
        .as_slice_mut()
        .context("PRelu: x is not contiguous")?;
    for (i, plane) in all.chunks_mut(plane.max(1)).enumerate() {
        let a = slopes[i % slopes.len()];
        plane.iter_mut().for_each(|v| keep_or_scale(v, a));
    }
    Ok(())
}

/// The axis of `x` along which `slope` varies when it varies along that axis only (right-aligned,
/// as ONNX broadcasts), as one slope per channel does.
fn channel_axis(x: &[usize], slope: &[usize]) -> Option<usize> {
    if slope.len() > x.len() {
        return None;
    }
    let offset = x.len() - slope.len();
    let varying: Vec<usize> = slope
        .iter()
        .enumerate()
        .filter(|(_, d)| **d != 1)
        .map(|(i, _)| i + offset)
        .collect();
    match varying.as_slice() {
        [axis] if slope[*axis - offset] == x[*axis] => Some(*axis),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::prelude::tract_ndarray::{ArrayD, IxDyn};

    /// The ONNX definition, value by value, with NumPy broadcasting of the slope.
    fn reference(x: &ArrayD<f32>, slope: &ArrayD<f32>) -> ArrayD<f32> {
        let slope = slope.broadcast(x.raw_dim()).unwrap();
        let mut y = x.clone();
        Zip::from(&mut y)
            .and(&slope)
            .for_each(|v, &a| *v = if *v > 0.0 { *v } else { a * *v });
        y
    }

    fn run(x: &ArrayD<f32>, slope: &ArrayD<f32>) -> ArrayD<f32> {
        let inputs = tvec!(
            x.clone().into_tensor().into_tvalue(),
            slope.clone().into_tensor().into_tvalue()
        );
        let out = PRelu.eval(&EvalContext::out_of_plan(), inputs).unwrap();
        out[0].to_plain_array_view::<f32>().unwrap().to_owned()
    }

    fn values(shape: &[usize], salt: usize) -> ArrayD<f32> {
        let n: usize = shape.iter().product();
        let v = (0..n)
            .map(|i| ((i * 37 + salt * 11) % 23) as f32 - 11.0)
            .collect();
        ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()
    }

    #[test]
    fn every_slope_shape_matches_the_definition() {
        let x = values(&[2, 3, 4, 5], 0);
        for shape in [
            vec![3, 1, 1],    // ours and MTCNN's: one slope per channel
            vec![1, 3, 1, 1], // the same with the batch axis spelt out
            vec![1],          // one slope for all
            vec![5],          // per column (last axis)
            vec![4, 5],       // a general broadcast
            vec![2, 3, 4, 5], // one slope per value
            vec![3, 4, 1],    // two varying axes
        ] {
            // Negative slopes included: ONNX does not restrict them.
            let slope = values(&shape, 3).mapv(|v| v / 7.0);
            assert_eq!(run(&x, &slope), reference(&x, &slope), "slope {shape:?}");
        }
    }

    #[test]
    fn zero_and_nan_follow_the_definition() {
        let x = ArrayD::from_shape_vec(IxDyn(&[1, 2, 2]), vec![0.0, -0.0, f32::NAN, -2.0]).unwrap();
        let slope = ArrayD::from_shape_vec(IxDyn(&[2, 1]), vec![-0.5, 0.25]).unwrap();
        let y = run(&x, &slope);
        let expected = reference(&x, &slope);
        for (a, b) in y.iter().zip(expected.iter()) {
            assert_eq!(a.to_bits(), b.to_bits(), "{a} vs {b}");
        }
    }

    #[test]
    fn doubles_and_halves_are_handled_and_integers_refused() {
        let x = values(&[1, 2, 3], 0);
        let slope = values(&[2, 1], 5).mapv(|v| v / 4.0);
        let expected = reference(&x, &slope);
        for dt in [DatumType::F64, DatumType::F16] {
            let inputs = tvec!(
                x.clone()
                    .into_tensor()
                    .cast_to_dt(dt)
                    .unwrap()
                    .into_owned()
                    .into_tvalue(),
                slope
                    .clone()
                    .into_tensor()
                    .cast_to_dt(dt)
                    .unwrap()
                    .into_owned()
                    .into_tvalue()
            );
            let out = PRelu.eval(&EvalContext::out_of_plan(), inputs).unwrap();
            let out = out[0].cast_to::<f32>().unwrap();
            // Inputs of a few bits (integers / 4): exact in f16 too.
            assert_eq!(
                out.to_plain_array_view::<f32>().unwrap(),
                expected.view(),
                "{dt:?}"
            );
        }
        let ints = tvec!(
            tensor1(&[1i32, -2]).into_tvalue(),
            tensor1(&[1i32]).into_tvalue()
        );
        let err = PRelu.eval(&EvalContext::out_of_plan(), ints).unwrap_err();
        assert!(format!("{err:#}").contains("floating point"), "{err:#}");
    }

    #[test]
    fn a_slope_that_does_not_broadcast_is_refused() {
        let x = TypedFact::dt_shape(f32::datum_type(), [1, 3, 4, 4]);
        let slope = TypedFact::dt_shape(f32::datum_type(), [2, 1, 1]);
        let err = PRelu.output_facts(&[&x, &slope]).unwrap_err();
        assert!(format!("{err:#}").contains("broadcast"), "{err:#}");
        // And when run outside a plan, where nothing checked the facts: an error, no panic.
        let inputs = tvec!(
            values(&[1, 3, 4, 4], 0).into_tensor().into_tvalue(),
            values(&[2, 1, 1], 1).into_tensor().into_tvalue()
        );
        let err = PRelu.eval(&EvalContext::out_of_plan(), inputs).unwrap_err();
        assert!(format!("{err:#}").contains("does not broadcast"), "{err:#}");
    }
}

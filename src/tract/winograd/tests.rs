//! The rewrite against the definition of a convolution, computed directly in f64.

use super::*;
use tract_linalg::multithread::Executor;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
use tract_onnx::tract_core::ops::nn::DataFormat;

struct Case {
    n: usize,
    c: usize,
    o: usize,
    h: usize,
    w: usize,
    pad: [usize; 4], // top, left, bottom, right
    stride: usize,
}

fn values(len: usize, salt: usize) -> Vec<f32> {
    // Deterministic, both signs, not too regular.
    (0..len)
        .map(|i| (((i * 7919 + salt * 104_729) % 2003) as f32 / 1001.5 - 1.0) * 0.7)
        .collect()
}

/// One convolution as tract types an ONNX Conv: x, an OIHW kernel and a bias, constants.
fn model(case: &Case) -> (TypedModel, Vec<f32>, Vec<f32>) {
    let kernel = values(case.o * case.c * 9, 1);
    let bias = values(case.o, 2);
    let mut model = TypedModel::default();
    let x = model
        .add_source("x", f32::fact([case.n, case.c, case.h, case.w]))
        .unwrap();
    let k = model
        .add_const(
            "k",
            Tensor::from_shape(&[case.o, case.c, 3, 3], &kernel).unwrap(),
        )
        .unwrap();
    let b = model.add_const("b", tensor1(&bias)).unwrap();
    let [top, left, bottom, right] = case.pad;
    let conv = Conv {
        pool_spec: PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: tvec![3, 3],
            padding: PaddingSpec::Explicit(tvec![top, left], tvec![bottom, right]),
            dilations: None,
            strides: Some(tvec![case.stride, case.stride]),
            input_channels: case.c,
            output_channels: case.o,
        },
        kernel_fmt: KernelFormat::OIHW,
        group: 1,
        q_params: None,
    };
    let y = model.wire_node("conv", conv, &[x, k, b]).unwrap();
    model.select_output_outlets(&y).unwrap();
    (model, kernel, bias)
}

/// The definition, in f64: y[n,o,i,j] = b[o] + Σ x[n,c,s·i+r−top, s·j+q−left]·k[o,c,r,q].
fn direct(case: &Case, x: &[f32], kernel: &[f32], bias: &[f32]) -> Vec<f32> {
    let [top, left, bottom, right] = case.pad;
    let out_h = (case.h + top + bottom - 3) / case.stride + 1;
    let out_w = (case.w + left + right - 3) / case.stride + 1;
    let mut y = vec![0f32; case.n * case.o * out_h * out_w];
    for n in 0..case.n {
        for o in 0..case.o {
            for i in 0..out_h {
                for j in 0..out_w {
                    let mut sum = bias[o] as f64;
                    for c in 0..case.c {
                        for r in 0..3 {
                            for q in 0..3 {
                                let (yy, xx) = (case.stride * i + r, case.stride * j + q);
                                if yy < top
                                    || xx < left
                                    || yy - top >= case.h
                                    || xx - left >= case.w
                                {
                                    continue;
                                }
                                let xv =
                                    x[((n * case.c + c) * case.h + yy - top) * case.w + xx - left];
                                let kv = kernel[((o * case.c + c) * 3 + r) * 3 + q];
                                sum += xv as f64 * kv as f64;
                            }
                        }
                    }
                    y[((n * case.o + o) * out_h + i) * out_w + j] = sum as f32;
                }
            }
        }
    }
    y
}

/// A rule that gives every convolution tile edge `m` (2 or 4).
fn always(m: usize) -> fn(&Geometry) -> Option<usize> {
    if m == 2 { |_| Some(2) } else { |_| Some(4) }
}

/// With the production rule: F(4×4) where it picks it, so F(4×4)'s tolerance.
fn check(case: &Case) -> usize {
    check_by(case, tile_edge, 1e-5)
}

/// Runs the case with and without the rewrite (tile edges by `choose`), single-threaded and
/// spread over threads, checks that the largest error against the definition, relative to the
/// output's largest magnitude, stays within `tolerance`, and returns how many convolutions
/// were rewritten.
fn check_by(case: &Case, choose: fn(&Geometry) -> Option<usize>, tolerance: f32) -> usize {
    let (stock, kernel, bias) = model(case);
    let x = values(case.n * case.c * case.h * case.w, 3);
    let expected = direct(case, &x, &kernel, &bias);
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
    let mut rewritten = stock.clone();
    let count = rewrite_by(&mut rewritten, choose).unwrap().total();
    let input = Tensor::from_shape(&[case.n, case.c, case.h, case.w], &x).unwrap();
    for (name, model) in [("im2col", stock), ("winograd", rewritten)] {
        let plan = model.into_optimized().unwrap().into_runnable().unwrap();
        let run = || plan.run(tvec!(input.clone().into())).unwrap();
        let single = run();
        let spread = multithread_tract_scope_rayon(run);
        for outputs in [single, spread] {
            let y = outputs[0].to_plain_array_view::<f32>().unwrap();
            assert_eq!(y.len(), expected.len(), "{name}");
            let worst = y
                .iter()
                .zip(&expected)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                worst <= tolerance * scale.max(1.0),
                "{name}: error {worst} (scale {scale})"
            );
        }
    }
    count
}

fn multithread_tract_scope_rayon<R>(f: impl FnOnce() -> R) -> R {
    tract_linalg::multithread::multithread_tract_scope(Executor::RayonGlobal, f)
}

fn cases() -> [Case; 5] {
    [
        Case {
            n: 1,
            c: 16,
            o: 16,
            h: 14,
            w: 14,
            pad: [1, 1, 1, 1],
            stride: 1,
        },
        Case {
            n: 1,
            c: 16,
            o: 24,
            h: 13,
            w: 15,
            pad: [1, 1, 1, 1],
            stride: 1,
        },
        Case {
            n: 2,
            c: 20,
            o: 16,
            h: 12,
            w: 12,
            pad: [0, 0, 0, 0],
            stride: 1,
        },
        Case {
            n: 1,
            c: 16,
            o: 16,
            h: 17,
            w: 12,
            pad: [2, 0, 1, 2],
            stride: 1,
        },
        Case {
            n: 1,
            c: 32,
            o: 16,
            h: 28,
            w: 28,
            pad: [1, 1, 1, 1],
            stride: 1,
        },
    ]
}

// Measured worst errors: F(2×2) 2–5e-7 of the output scale (im2col: 1.4–7.5e-7), F(4×4)
// 2.0–3.0e-6.

#[test]
fn equals_the_definition_on_every_padding_and_size() {
    for case in &cases() {
        assert_eq!(check(case), 1, "{}×{} pad {:?}", case.h, case.w, case.pad);
    }
}

#[test]
fn f2_equals_the_definition() {
    for case in &cases() {
        assert_eq!(check_by(case, always(2), 2e-6), 1);
    }
}

#[test]
fn f4_equals_the_definition() {
    for case in &cases() {
        assert_eq!(check_by(case, always(4), 1e-5), 1);
    }
}

/// The transforms built for baseline x86-64, where the tests' CPU would take the AVX2 copies.
#[test]
fn baseline_copies_equal_the_definition() {
    use std::sync::atomic::Ordering;
    crate::tract::eval::BASELINE_ONLY.store(true, Ordering::Relaxed);
    for case in &cases() {
        for m in [2, 4] {
            let choose = always(m);
            assert_eq!(check_by(case, choose, 1e-5), 1);
        }
    }
    crate::tract::eval::BASELINE_ONLY.store(false, Ordering::Relaxed);
}

/// One image's "same" convolution of a square plane, `size` on a side, with F(m×m).
fn same_size(c: usize, o: usize, size: usize, m: usize) -> Geometry {
    Geometry {
        n: 1,
        c,
        h: size,
        w: size,
        o,
        out_h: size,
        out_w: size,
        pad_top: 1,
        pad_left: 1,
        m,
    }
}

/// The rule on r100's 3×3 stride-1 convolutions (output size, channels in → out).
#[test]
fn picks_the_tile_size_that_was_measured_to_pay() {
    let edge = |size: usize, c: usize, o: usize| tile_edge(&same_size(c, o, size, 2));
    assert_eq!(edge(112, 64, 64), Some(4));
    assert_eq!(edge(56, 64, 128), Some(4));
    assert_eq!(edge(28, 128, 128), Some(4));
    assert_eq!(edge(14, 256, 256), Some(2));
    assert_eq!(edge(7, 512, 512), None);
    assert_eq!(edge(112, 3, 64), None);
}

#[test]
fn leaves_the_convolutions_where_it_does_not_pay_or_apply() {
    let cases = [
        // Strided: not Winograd's F(2×2,3×3).
        Case {
            n: 1,
            c: 16,
            o: 16,
            h: 14,
            w: 14,
            pad: [1, 1, 1, 1],
            stride: 2,
        },
        // Few channels (the stem: RGB in).
        Case {
            n: 1,
            c: 3,
            o: 16,
            h: 14,
            w: 14,
            pad: [1, 1, 1, 1],
            stride: 1,
        },
        // Few tiles (r100's last stage: 7×7).
        Case {
            n: 1,
            c: 16,
            o: 16,
            h: 7,
            w: 7,
            pad: [1, 1, 1, 1],
            stride: 1,
        },
    ];
    for case in &cases {
        assert_eq!(
            check(case),
            0,
            "{}×{} c{} s{}",
            case.h,
            case.w,
            case.c,
            case.stride
        );
    }
}

/// x → x·scale + shift (a Mul and an Add per channel, as tract types a BatchNorm) → the
/// convolution → PReLU per channel; `extra_readers` also makes the Add's and the convolution's
/// outputs outputs of the model, which must keep the rewrite from taking those nodes in.
fn fusion_model(case: &Case, extra_readers: bool) -> (TypedModel, Vec<f32>) {
    let (conv_only, _, _) = model(case);
    let conv = conv_only
        .node(conv_only.node_id_by_name("conv").unwrap())
        .op
        .clone();
    let kernel = conv_only
        .outlet_fact(OutletId::new(1, 0))
        .unwrap()
        .konst
        .clone()
        .unwrap();
    let bias = conv_only
        .outlet_fact(OutletId::new(2, 0))
        .unwrap()
        .konst
        .clone()
        .unwrap();
    let channel = |salt, c: usize| Tensor::from_shape(&[1, c, 1, 1], &values(c, salt)).unwrap();
    let mut m = TypedModel::default();
    let x = m
        .add_source("x", f32::fact([case.n, case.c, case.h, case.w]))
        .unwrap();
    let scale = m.add_const("scale", channel(4, case.c)).unwrap();
    let shift = m.add_const("shift", channel(5, case.c)).unwrap();
    let scaled = m
        .wire_node(
            "bn.mul",
            tract_onnx::tract_core::ops::math::mul(),
            &[x, scale],
        )
        .unwrap();
    let shifted = m
        .wire_node(
            "bn.add",
            tract_onnx::tract_core::ops::math::add(),
            &[scaled[0], shift],
        )
        .unwrap();
    let k = m.add_const("k", kernel).unwrap();
    let b = m.add_const("b", bias).unwrap();
    let y = m.wire_node("conv", conv, &[shifted[0], k, b]).unwrap();
    let slopes = values(case.o, 6);
    let s = m
        .add_const(
            "slopes",
            Tensor::from_shape(&[case.o, 1, 1], &slopes).unwrap(),
        )
        .unwrap();
    let z = m
        .wire_node("prelu", crate::tract::prelu::PRelu, &[y[0], s])
        .unwrap();
    let mut outputs = vec![z[0]];
    if extra_readers {
        outputs.extend([shifted[0], y[0]]);
    }
    m.select_output_outlets(&outputs).unwrap();
    let input = values(case.n * case.c * case.h * case.w, 3);
    (m, input)
}

/// The BatchNorm before and the PReLU after a Winograd convolution are taken into its
/// transforms (src/tract/fusion.rs), and the result is what the nodes computed apart.
#[test]
fn takes_in_the_batchnorm_before_and_the_prelu_after() {
    for m in [2, 4] {
        let case = &cases()[4];
        let expected = |model: TypedModel, x: &[f32]| {
            let plan = model.into_optimized().unwrap().into_runnable().unwrap();
            let input = Tensor::from_shape(&[case.n, case.c, case.h, case.w], x).unwrap();
            plan.run(tvec!(input.into())).unwrap()[0]
                .to_plain_array_view::<f32>()
                .unwrap()
                .iter()
                .copied()
                .collect::<Vec<f32>>()
        };
        for extra_readers in [false, true] {
            let (stock, x) = fusion_model(case, extra_readers);
            let mut rewritten = stock.clone();
            let choose = always(m);
            let done = rewrite_by(&mut rewritten, choose).unwrap();
            let fused = usize::from(!extra_readers);
            assert_eq!(
                (done.total(), done.affines_fused, done.prelus_fused),
                (1, fused, fused),
                "F({m}×{m}), extra readers: {extra_readers}"
            );
            let (want, got) = (expected(stock, &x), expected(rewritten, &x));
            let scale = want.iter().fold(0f32, |s, v| s.max(v.abs()));
            let worst = want
                .iter()
                .zip(&got)
                .fold(0f32, |w, (a, b)| w.max((a - b).abs()));
            assert!(worst <= 1e-5 * scale, "F({m}×{m}): {worst} of {scale}");
            assert!(got.iter().any(|v| *v < 0.0) && got.iter().any(|v| *v > 0.0));
        }
    }
}

/// Our AVX2 product (kernel.rs) against tract's on the same transformed kernel and tiles: equal
/// bit for bit (each value the same chain of fused multiply-adds), on shapes with partial
/// blocks of 16 output channels and partial panels of 5 columns, one thread and spread.
#[cfg(target_arch = "x86_64")]
#[test]
fn our_products_equal_tracts_bit_for_bit() {
    if !crate::tract::eval::has_avx2() {
        eprintln!("skipped: this CPU has no AVX2 + FMA, where our product runs");
        return;
    }
    // (channels in, out, output size, F(m×m)): 49 and 9 tiles, 16 and 36 positions.
    for (c, o, size, m) in [(16, 24, 14, 2), (20, 48, 12, 4), (64, 32, 5, 2)] {
        let g = same_size(c, o, size, m);
        let u = values(g.positions() * o * c, 5);
        let columns = g.n * g.tiles();
        let v = |salt| {
            let v = values(g.half() * c * columns, salt);
            Tensor::from_shape(&[g.half(), c, columns], &v)
                .unwrap()
                .into_tvalue()
        };
        let inputs = tvec![v(6), v(7)];
        let run = |products: &products::Products| {
            let single =
                tract_linalg::multithread::multithread_tract_scope(Executor::SingleThread, || {
                    products.compute(inputs.clone())
                });
            let spread = multithread_tract_scope_rayon(|| products.compute(inputs.clone()));
            [single.unwrap(), spread.unwrap()]
        };
        let theirs = run(&products::Products::tract(g, &u).unwrap());
        let ours = run(&products::Products::ours(g, &u).unwrap());
        for (ours, theirs) in ours.iter().zip(&theirs) {
            for (half, (a, b)) in ours.iter().zip(theirs).enumerate() {
                let a = a.to_plain_array_view::<f32>().unwrap();
                let b = b.to_plain_array_view::<f32>().unwrap();
                assert_eq!(a.shape(), b.shape());
                let differ = a
                    .iter()
                    .zip(b.iter())
                    .filter(|(a, b)| a.to_bits() != b.to_bits());
                assert_eq!(differ.count(), 0, "c {c} o {o} {size}² F({m}) half {half}");
            }
        }
    }
}

//! Our pointwise and grouped convolutions (src/tract/pointwise.rs, src/tract/grouped.rs),
//! with the BatchNorm and PReLU they take in, against the definitions computed directly in f64,
//! through the same decluttering and optimising as an embedder's plan.

use tract_linalg::multithread::{Executor, multithread_tract_scope};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
use tract_onnx::tract_core::ops::math::{add, mul};
use tract_onnx::tract_core::ops::nn::DataFormat;

use super::run::{ConvAlgorithm, Rewrites, declutter_with_ours};

#[derive(Debug, Clone, Copy)]
struct Case {
    n: usize,
    c: usize,
    o: usize,
    groups: usize,
    h: usize,
    w: usize,
    kernel: (usize, usize),
    stride: (usize, usize),
    pad: [usize; 4], // top, left, bottom, right
    /// A BatchNorm (Mul, Add) and a PReLU after the convolution.
    bn_prelu: bool,
}

const DEPTHWISE: Case = Case {
    n: 2,
    c: 16,
    o: 16,
    groups: 16,
    h: 14,
    w: 14,
    kernel: (3, 3),
    stride: (1, 1),
    pad: [1, 1, 1, 1],
    bn_prelu: true,
};

fn values(len: usize, salt: usize) -> Vec<f32> {
    // Deterministic, both signs, not too regular.
    (0..len)
        .map(|i| (((i * 7919 + salt * 104_729) % 2003) as f32 / 1001.5 - 1.0) * 0.7)
        .collect()
}

impl Case {
    fn out(&self) -> (usize, usize) {
        let [top, left, bottom, right] = self.pad;
        (
            (self.h + top + bottom - self.kernel.0) / self.stride.0 + 1,
            (self.w + left + right - self.kernel.1) / self.stride.1 + 1,
        )
    }

    fn kernel_values(&self) -> Vec<f32> {
        values(
            self.o * self.c / self.groups * self.kernel.0 * self.kernel.1,
            1,
        )
    }

    /// (scale, shift, slope) per output channel; slopes of both signs.
    fn after(&self) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let scale = values(self.o, 4).iter().map(|v| 1.0 + v).collect();
        (scale, values(self.o, 5), values(self.o, 6))
    }

    /// The convolution as tract types an ONNX Conv (x, OIHW kernel, bias), then the
    /// BatchNorm as decluttering leaves it (Mul, Add by [1, o, 1, 1] constants) and the PReLU.
    fn model(&self) -> TypedModel {
        let mut model = TypedModel::default();
        let x = model
            .add_source("x", f32::fact([self.n, self.c, self.h, self.w]))
            .unwrap();
        let (kh, kw) = self.kernel;
        let shape = [self.o, self.c / self.groups, kh, kw];
        let k = model
            .add_const(
                "k",
                Tensor::from_shape(&shape, &self.kernel_values()).unwrap(),
            )
            .unwrap();
        let b = model.add_const("b", tensor1(&values(self.o, 2))).unwrap();
        let [top, left, bottom, right] = self.pad;
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: tvec![kh, kw],
                padding: PaddingSpec::Explicit(tvec![top, left], tvec![bottom, right]),
                dilations: None,
                strides: Some(tvec![self.stride.0, self.stride.1]),
                input_channels: self.c,
                output_channels: self.o,
            },
            kernel_fmt: KernelFormat::OIHW,
            group: self.groups,
            q_params: None,
        };
        let mut y = model.wire_node("conv", conv, &[x, k, b]).unwrap();
        if self.bn_prelu {
            let (scale, shift, slope) = self.after();
            let per_channel = |v: &[f32]| Tensor::from_shape(&[1, self.o, 1, 1], v).unwrap();
            let s = model.add_const("scale", per_channel(&scale)).unwrap();
            y = model.wire_node("bn.mul", mul(), &[y[0], s]).unwrap();
            let t = model.add_const("shift", per_channel(&shift)).unwrap();
            y = model.wire_node("bn.add", add(), &[y[0], t]).unwrap();
            let a = Tensor::from_shape(&[self.o, 1, 1], &slope).unwrap();
            let a = model.add_const("slope", a).unwrap();
            y = model
                .wire_node("prelu", crate::tract::prelu::PRelu, &[y[0], a])
                .unwrap();
        }
        model.select_output_outlets(&y).unwrap();
        model
    }

    /// The definition in f64: y[n,o,i,j] = b[o] + Σ x[n,c,s·i+r−top, s·j+q−left]·k[o,c',r,q]
    /// over the group's channels c, then x·scale + shift and the PReLU.
    fn direct(&self, x: &[f32]) -> Vec<f32> {
        let (kernel, bias) = (self.kernel_values(), values(self.o, 2));
        let (scale, shift, slope) = self.after();
        let [top, left, ..] = self.pad;
        let (out_h, out_w) = self.out();
        let (cg, og) = (self.c / self.groups, self.o / self.groups);
        let (kh, kw) = self.kernel;
        let mut y = Vec::with_capacity(self.n * self.o * out_h * out_w);
        for n in 0..self.n {
            for o in 0..self.o {
                for i in 0..out_h {
                    for j in 0..out_w {
                        let mut sum = bias[o] as f64;
                        for ci in 0..cg {
                            let c = o / og * cg + ci;
                            for r in 0..kh {
                                for q in 0..kw {
                                    let yy = (self.stride.0 * i + r).checked_sub(top);
                                    let xx = (self.stride.1 * j + q).checked_sub(left);
                                    let (Some(yy), Some(xx)) = (yy, xx) else {
                                        continue;
                                    };
                                    if yy >= self.h || xx >= self.w {
                                        continue;
                                    }
                                    let xv = x[((n * self.c + c) * self.h + yy) * self.w + xx];
                                    let kv = kernel[((o * cg + ci) * kh + r) * kw + q];
                                    sum += xv as f64 * kv as f64;
                                }
                            }
                        }
                        if self.bn_prelu {
                            sum = sum * scale[o] as f64 + shift[o] as f64;
                            if sum <= 0.0 {
                                sum *= slope[o] as f64;
                            }
                        }
                        y.push(sum as f32);
                    }
                }
            }
        }
        y
    }
}

/// Runs the case through our rewrites and tract's optimiser, on one thread and spread over
/// rayon's, checks both against the definition (largest error within 1e-5 of the output's
/// largest magnitude) and against each other bit for bit, and returns what was rewritten.
fn check(case: &Case) -> Rewrites {
    let (model, ours) = declutter_with_ours(case.model(), ConvAlgorithm::Ours).unwrap();
    let plan = model.into_optimized().unwrap().into_runnable().unwrap();
    let x = values(case.n * case.c * case.h * case.w, 3);
    let expected = case.direct(&x);
    let scale = expected.iter().fold(1f32, |m, v| m.max(v.abs()));
    let input = Tensor::from_shape(&[case.n, case.c, case.h, case.w], &x).unwrap();
    let run = |executor| {
        multithread_tract_scope(executor, || plan.run(tvec!(input.clone().into())).unwrap())[0]
            .to_plain_array_view::<f32>()
            .unwrap()
            .iter()
            .copied()
            .collect::<Vec<f32>>()
    };
    let single = run(Executor::SingleThread);
    let spread = run(Executor::RayonGlobal);
    assert_eq!(single.len(), expected.len(), "{case:?}");
    let worst = single
        .iter()
        .zip(&expected)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        worst <= 1e-5 * scale,
        "{case:?}: error {worst} (scale {scale})"
    );
    assert!(
        single
            .iter()
            .zip(&spread)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "{case:?}: one thread and all threads differ"
    );
    ours
}

#[test]
fn depthwise_and_few_channel_groups_equal_the_definition() {
    let cases = [
        // MobileFaceNet's depthwise 3×3, stride 1 and 2 (even and odd sizes), its global 7×7.
        DEPTHWISE,
        Case {
            stride: (2, 2),
            ..DEPTHWISE
        },
        Case {
            h: 15,
            w: 13,
            stride: (2, 2),
            ..DEPTHWISE
        },
        Case {
            h: 7,
            w: 7,
            kernel: (7, 7),
            pad: [0; 4],
            ..DEPTHWISE
        },
        // Its second layer: two channels per group in and out.
        Case {
            c: 8,
            o: 8,
            groups: 4,
            ..DEPTHWISE
        },
        // Three in and two out per group, asymmetric padding, stride 2 one way only.
        Case {
            c: 12,
            o: 8,
            groups: 4,
            h: 9,
            w: 11,
            stride: (1, 2),
            pad: [0, 1, 1, 0],
            ..DEPTHWISE
        },
        // Four per group, a 5×3 kernel, stride 3, padding wider than the stride; no BatchNorm.
        Case {
            c: 8,
            o: 4,
            groups: 2,
            h: 10,
            w: 12,
            kernel: (5, 3),
            stride: (3, 3),
            pad: [4, 2, 3, 2],
            bn_prelu: false,
            ..DEPTHWISE
        },
    ];
    for case in &cases {
        let g = check(case).grouped;
        let fused = case.bn_prelu as usize;
        assert_eq!(
            (g.convolutions, g.affines_fused, g.prelus_fused),
            (1, fused, fused),
            "{case:?}"
        );
    }
}

#[test]
fn groups_of_more_channels_and_ungrouped_convolutions_stay_tracts() {
    for case in [
        Case {
            c: 10,
            o: 10,
            groups: 2,
            ..DEPTHWISE
        },
        Case {
            c: 3,
            o: 8,
            groups: 1,
            ..DEPTHWISE
        },
    ] {
        assert_eq!(check(&case).grouped.convolutions, 0, "{case:?}");
    }
}

#[test]
fn pointwise_convolutions_equal_the_definition() {
    let pointwise = Case {
        c: 16,
        o: 40,
        groups: 1,
        h: 5,
        w: 7,
        kernel: (1, 1),
        pad: [0; 4],
        ..DEPTHWISE
    };
    // On AVX2 our kernel: 35 pixels split among the threads by output channels (tiles of 6:
    // 40 leaves a part), 132 (9 tiles of 16, the last of 4) by pixels; 19 input channels.
    let wide = Case {
        c: 19,
        h: 12,
        w: 11,
        ..pointwise
    };
    for case in [
        pointwise,
        Case {
            bn_prelu: false,
            ..pointwise
        },
        wide,
        Case { n: 1, ..wide },
    ] {
        let p = check(&case).pointwise;
        let fused = case.bn_prelu as usize;
        assert_eq!(
            (p.convolutions, p.affines_fused, p.prelus_fused),
            (1, fused, fused),
            "{case:?}"
        );
    }
    // The `gemm` product where the CPU has no AVX2.
    {
        use std::sync::atomic::Ordering;
        crate::tract::eval::BASELINE_ONLY.store(true, Ordering::Relaxed);
        let p = check(&wide).pointwise;
        crate::tract::eval::BASELINE_ONLY.store(false, Ordering::Relaxed);
        assert_eq!((p.convolutions, p.prelus_fused), (1, 1));
    }
    // Strided or padded 1×1 convolutions stay tract's.
    for case in [
        Case {
            stride: (2, 2),
            ..pointwise
        },
        Case {
            pad: [1, 1, 1, 1],
            ..pointwise
        },
    ] {
        assert_eq!(check(&case).pointwise.convolutions, 0, "{case:?}");
    }
}

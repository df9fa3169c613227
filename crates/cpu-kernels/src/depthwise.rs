//! The depthwise convolution (one input and one output channel per group: MobileFaceNet's 3×3
//! and 7×7 layers) directly, each output plane the sum of its kernel's shifted input planes,
//! where im2col would write Ci·kh·kw rows per image for products of a single row each.
//!
//! Planes (image, channel) run side by side on rayon's threads for the output and the input
//! gradient; the weight gradient runs channel by channel, each summed over the images in
//! order, so runs repeat bit for bit.

use rayon::prelude::*;

use crate::buffers::zeroed_chunks;
use crate::conv::Geometry;

/// Whether `g` is depthwise: as many groups as input and output channels.
pub fn applies(g: &Geometry) -> bool {
    g.groups == g.channels_in && g.groups == g.channels_out
}

/// For each kernel offset (i, j) with its weight index: the output rows and columns that read
/// inside the image, and the first input column.
fn offsets(g: &Geometry) -> Vec<(usize, usize, usize, (usize, usize), (usize, usize))> {
    let [kh, kw] = g.kernel;
    let mut out = Vec::with_capacity(kh * kw);
    for i in 0..kh {
        for j in 0..kw {
            let rows = g.valid(0, i, g.height, g.out_height);
            let cols = g.valid(1, j, g.width, g.out_width);
            if rows.0 < rows.1 && cols.0 < cols.1 {
                out.push((i * kw + j, i, j, rows, cols));
            }
        }
    }
    out
}

/// `f(output row, input row, output columns, first input column)` for every row the kernel
/// offset (i, j) touches.
fn each_row(
    g: &Geometry,
    (i, j): (usize, usize),
    (oh0, oh1): (usize, usize),
    (ow0, ow1): (usize, usize),
    mut f: impl FnMut(usize, usize, std::ops::Range<usize>, usize),
) {
    let w0 = g.source(1, ow0, j);
    for oh in oh0..oh1 {
        f(oh, g.source(0, oh, i), ow0..ow1, w0);
    }
}

/// The convolution of `x` [N, C, H, W] by `weight` [C, 1, kh, kw]: [N, C, Ho, Wo].
pub fn forward(g: &Geometry, x: &[f32], weight: &[f32]) -> Vec<f32> {
    let (hw, p, k) = (
        g.height * g.width,
        g.out_height * g.out_width,
        g.kernel[0] * g.kernel[1],
    );
    let offsets = offsets(g);
    let stride = g.stride[1];
    let len = g.batch * g.output_len();
    zeroed_chunks(len, p, |plane, out| {
        let c = plane % g.channels_in;
        let x = &x[plane * hw..][..hw];
        for &(index, i, j, rows, cols) in &offsets {
            let w = weight[c * k + index];
            each_row(g, (i, j), rows, cols, |oh, ih, ows, w0| {
                let line = &mut out[oh * g.out_width..][ows.clone()];
                let source = &x[ih * g.width..][..g.width];
                if stride == 1 {
                    let source = &source[w0..w0 + line.len()];
                    line.iter_mut().zip(source).for_each(|(o, &v)| *o += w * v);
                } else {
                    for (o, s) in line.iter_mut().zip((w0..).step_by(stride)) {
                        *o += w * source[s];
                    }
                }
            });
        }
    })
}

/// (dx [N, C, H, W] if `want_x`, dW [C, 1, kh, kw] if `want_weight`) for the output gradient
/// `grad` [N, C, Ho, Wo].
pub fn gradients(
    g: &Geometry,
    x: &[f32],
    weight: &[f32],
    grad: &[f32],
    want_x: bool,
    want_weight: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let (hw, p, k) = (
        g.height * g.width,
        g.out_height * g.out_width,
        g.kernel[0] * g.kernel[1],
    );
    let offsets = offsets(g);
    let stride = g.stride[1];
    let dx = want_x.then(|| {
        let len = g.batch * g.input_len();
        zeroed_chunks(len, hw, |plane, dx| {
            let c = plane % g.channels_in;
            let grad = &grad[plane * p..][..p];
            for &(index, i, j, rows, cols) in &offsets {
                let w = weight[c * k + index];
                each_row(g, (i, j), rows, cols, |oh, ih, ows, w0| {
                    let line = &grad[oh * g.out_width..][ows.clone()];
                    let target = &mut dx[ih * g.width..][..g.width];
                    if stride == 1 {
                        let target = &mut target[w0..w0 + line.len()];
                        target.iter_mut().zip(line).for_each(|(t, &v)| *t += w * v);
                    } else {
                        for (&v, s) in line.iter().zip((w0..).step_by(stride)) {
                            target[s] += w * v;
                        }
                    }
                });
            }
        })
    });
    let dw = want_weight.then(|| {
        let mut dw = vec![0.0; g.channels_out * k];
        dw.par_chunks_exact_mut(k.max(1))
            .enumerate()
            .for_each(|(c, dw)| {
                for n in 0..g.batch {
                    let plane = n * g.channels_in + c;
                    let x = &x[plane * hw..][..hw];
                    let grad = &grad[plane * p..][..p];
                    for &(index, i, j, rows, cols) in &offsets {
                        let mut sum = 0.0f32;
                        each_row(g, (i, j), rows, cols, |oh, ih, ows, w0| {
                            let line = &grad[oh * g.out_width..][ows.clone()];
                            let source = &x[ih * g.width..][..g.width];
                            if stride == 1 {
                                let source = &source[w0..w0 + line.len()];
                                sum += line.iter().zip(source).map(|(a, b)| a * b).sum::<f32>();
                            } else {
                                sum += line
                                    .iter()
                                    .zip((w0..).step_by(stride))
                                    .map(|(a, s)| a * source[s])
                                    .sum::<f32>();
                            }
                        });
                        dw[index] += sum;
                    }
                }
            });
        dw
    });
    (dx, dw)
}

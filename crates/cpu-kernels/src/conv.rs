//! The bias-free 2-D convolution on burn's CPU backend (Flex), forward and both gradients, as
//! im2col and one matrix product per image (as PyTorch's CPU convolution without oneDNN does):
//!
//! - forward: out[n] (Co × P) = W (Co × K) · cols(x[n]) (K × P);
//! - input gradient: dx[n] = col2im(Wᵀ (K × Co) · g[n] (Co × P));
//! - weight gradient: dW (Co × K) = Σₙ g[n] (Co × P) · cols(x[n])ᵀ (P × K);
//!
//! with K = Ci·kh·kw and P = Ho·Wo. A grouped convolution (MobileFaceNet's depthwise ones) is
//! the same with one product per group: the column matrix's rows are ordered by channel, so
//! group g's rows, its weights and its output channels are each one contiguous block; a
//! depthwise one (a channel per group) is computed directly instead (`crate::depthwise`). Why not burn-flex's own (docs/PERFORMANCE.md, "CPU
//! training"): its weight gradient is a convolution of the input by the output gradient, with
//! batch and channel axes swapped, so two transposed copies of each tensor per layer, and an
//! im2col whose "kernel" is the whole output map; its input gradient is a transposed
//! convolution. Here each is one product per image over data already in place.
//!
//! Images run side by side on rayon's threads, each product on one thread; a batch smaller than
//! the pool spreads each product instead. The weight gradient is summed over groups of images
//! fixed by the batch size, in a fixed order, so runs repeat bit for bit.

use rayon::prelude::*;

use crate::buffers::zeroed;
use crate::matmul::{View, matmul};

/// A convolution's options, as burn's `ConvOptions<2>` and PyTorch's `conv2d` take them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Options {
    pub stride: [usize; 2],
    /// Zeros (before, after) along each spatial axis.
    pub padding: [(usize, usize); 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

/// The sizes of one convolution of an [N, Ci, H, W] input by a [Co, Ci, kh, kw] weight.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Geometry {
    pub batch: usize,
    pub channels_in: usize,
    pub height: usize,
    pub width: usize,
    pub channels_out: usize,
    /// Channels split into this many independent convolutions (Ci/groups in, Co/groups out).
    pub groups: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    /// Zeros before the first row and column (those after only shorten the output).
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub out_height: usize,
    pub out_width: usize,
}

impl Geometry {
    /// None where the shapes disagree (a weight [Co, Ci/groups, kh, kw] for an [N, Ci, H, W]
    /// input, both channel counts divisible by `groups`).
    pub fn new(x: [usize; 4], weight: [usize; 4], options: &Options) -> Option<Self> {
        let [batch, channels_in, height, width] = x;
        let [channels_out, weight_in, kh, kw] = weight;
        let groups = options.groups;
        if groups == 0
            || channels_in % groups != 0
            || channels_out % groups != 0
            || weight_in * groups != channels_in
        {
            return None;
        }
        let out = |side: usize, axis: usize, kernel: usize| {
            let (begin, end) = options.padding[axis];
            let reach = options.dilation[axis] * (kernel - 1) + 1;
            (side + begin + end)
                .checked_sub(reach)
                .map(|room| room / options.stride[axis] + 1)
        };
        Some(Self {
            batch,
            channels_in,
            height,
            width,
            channels_out,
            groups,
            kernel: [kh, kw],
            stride: options.stride,
            padding: options.padding.map(|(begin, _)| begin),
            dilation: options.dilation,
            out_height: out(height, 0, kh)?,
            out_width: out(width, 1, kw)?,
        })
    }

    /// Rows of the column matrix: Ci·kh·kw.
    fn k(&self) -> usize {
        self.channels_in * self.kernel[0] * self.kernel[1]
    }

    /// Rows of one group's block of the column matrix (its weights' row length): K/groups.
    fn group_k(&self) -> usize {
        self.k() / self.groups
    }

    /// Output channels of one group.
    fn group_out(&self) -> usize {
        self.channels_out / self.groups
    }

    /// Output positions per channel: Ho·Wo.
    fn p(&self) -> usize {
        self.out_height * self.out_width
    }

    pub fn input_len(&self) -> usize {
        self.channels_in * self.height * self.width
    }

    pub fn output_len(&self) -> usize {
        self.channels_out * self.p()
    }

    /// A 1×1 convolution that keeps every position, and adds none: the image is its own column
    /// matrix.
    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1]
            && self.stride == [1, 1]
            && self.padding == [0, 0]
            && [self.out_height, self.out_width] == [self.height, self.width]
    }

    /// For kernel offset `offset` along an axis: the output range whose input index
    /// `o·stride + offset·dilation − padding` lies in 0..`side`.
    pub(crate) fn valid(
        &self,
        axis: usize,
        offset: usize,
        side: usize,
        out_side: usize,
    ) -> (usize, usize) {
        let (stride, shift) = (self.stride[axis], offset * self.dilation[axis]);
        let pad = self.padding[axis];
        // First o with o·stride + shift ≥ pad; last with o·stride + shift − pad < side.
        let first = pad.saturating_sub(shift).div_ceil(stride);
        let end = (side + pad).saturating_sub(shift).div_ceil(stride);
        (
            first.min(out_side),
            end.min(out_side).max(first.min(out_side)),
        )
    }

    /// The input row or column read at output index `o` and kernel offset `offset` (valid only
    /// inside [`valid`](Self::valid)'s range).
    pub(crate) fn source(&self, axis: usize, o: usize, offset: usize) -> usize {
        o * self.stride[axis] + offset * self.dilation[axis] - self.padding[axis]
    }

    /// Writes image `x` [Ci, H, W] as its column matrix `cols` [K, P] (zeros where the kernel
    /// overhangs the padding).
    fn im2col(&self, x: &[f32], cols: &mut [f32]) {
        let (p, [kh, kw]) = (self.p(), self.kernel);
        for (row, out) in cols.chunks_exact_mut(p).enumerate() {
            let (c, i, j) = (row / (kh * kw), row / kw % kh, row % kw);
            let plane = &x[c * self.height * self.width..][..self.height * self.width];
            let (oh0, oh1) = self.valid(0, i, self.height, self.out_height);
            let (ow0, ow1) = self.valid(1, j, self.width, self.out_width);
            out[..oh0 * self.out_width].fill(0.0);
            out[oh1 * self.out_width..].fill(0.0);
            for oh in oh0..oh1 {
                let line = &mut out[oh * self.out_width..][..self.out_width];
                let source = &plane[self.source(0, oh, i) * self.width..][..self.width];
                line[..ow0].fill(0.0);
                line[ow1..].fill(0.0);
                if ow0 < ow1 {
                    let w0 = self.source(1, ow0, j);
                    gather(&mut line[ow0..ow1], &source[w0..], self.stride[1]);
                }
            }
        }
    }

    /// Adds the column matrix `cols` [K, P] back onto image `dx` [Ci, H, W]: im2col's adjoint.
    fn col2im(&self, cols: &[f32], dx: &mut [f32]) {
        let (p, [kh, kw]) = (self.p(), self.kernel);
        for (row, values) in cols.chunks_exact(p).enumerate() {
            let (c, i, j) = (row / (kh * kw), row / kw % kh, row % kw);
            let plane = &mut dx[c * self.height * self.width..][..self.height * self.width];
            let (oh0, oh1) = self.valid(0, i, self.height, self.out_height);
            let (ow0, ow1) = self.valid(1, j, self.width, self.out_width);
            if ow0 >= ow1 {
                continue;
            }
            for oh in oh0..oh1 {
                let line = &values[oh * self.out_width..][ow0..ow1];
                let target = &mut plane[self.source(0, oh, i) * self.width..][..self.width];
                let w0 = self.source(1, ow0, j);
                scatter_add(&mut target[w0..], line, self.stride[1]);
            }
        }
    }
}

with_avx2_copy!(
    /// line[k] = source[k·step], k < line.len().
    fn gather(line: &mut [f32], source: &[f32], step: usize) = gather_baseline
);

#[inline(always)]
fn gather_baseline(line: &mut [f32], source: &[f32], step: usize) {
    let Some(last) = line.len().checked_sub(1) else {
        return;
    };
    let source = &source[..last * step + 1];
    match step {
        1 => line.copy_from_slice(source),
        // Fixed-size pairs (stride 2: every downsampling convolution): no bounds check per
        // value, and a loop LLVM vectorises with shuffles, where `step_by` ran value by value
        // (60 % of im2col's time in a tiny step).
        2 => {
            let (pairs, _) = source.as_chunks::<2>();
            for (value, pair) in line.iter_mut().zip(pairs) {
                *value = pair[0];
            }
            line[last] = source[last * 2];
        }
        _ => {
            for (value, w) in line.iter_mut().zip((0..).step_by(step)) {
                *value = source[w];
            }
        }
    }
}

with_avx2_copy!(
    /// target[k·step] += line[k], k < line.len(): [`gather`]'s adjoint.
    fn scatter_add(target: &mut [f32], line: &[f32], step: usize) = scatter_add_baseline
);

#[inline(always)]
fn scatter_add_baseline(target: &mut [f32], line: &[f32], step: usize) {
    let Some(last) = line.len().checked_sub(1) else {
        return;
    };
    let target = &mut target[..last * step + 1];
    match step {
        1 => {
            for (t, &v) in target.iter_mut().zip(line) {
                *t += v;
            }
        }
        2 => {
            let (pairs, _) = target.as_chunks_mut::<2>();
            for (pair, &v) in pairs.iter_mut().zip(line) {
                pair[0] += v;
            }
            target[last * 2] += line[last];
        }
        _ => {
            for (&v, w) in line.iter().zip((0..).step_by(step)) {
                target[w] += v;
            }
        }
    }
}

/// Whether images run side by side (each product on one thread) rather than one at a time
/// with each product spread over the pool.
fn images_side_by_side(batch: usize) -> bool {
    batch >= rayon::current_num_threads()
}

/// The convolution of `x` [N, Ci, H, W] by `weight` [Co, Ci/groups, kh, kw]: [N, Co, Ho, Wo].
pub fn forward(g: &Geometry, x: &[f32], weight: &[f32]) -> Vec<f32> {
    if crate::depthwise::applies(g) {
        return crate::depthwise::forward(g, x, weight);
    }
    let (k, p) = (g.k(), g.p());
    let (kg, cog) = (g.group_k(), g.group_out());
    let mut out = zeroed(g.batch * g.output_len());
    let one = |cols: &mut Vec<f32>, x: &[f32], out: &mut [f32], threads: bool| {
        let cols = if g.is_pointwise() {
            x
        } else {
            cols.resize(k * p, 0.0);
            g.im2col(x, cols);
            cols
        };
        for group in 0..g.groups {
            let lhs = View::rows(&weight[group * cog * kg..][..cog * kg], kg);
            let rhs = View::rows(&cols[group * kg * p..][..kg * p], p);
            let out = &mut out[group * cog * p..][..cog * p];
            matmul(out, lhs, rhs, (cog, kg, p), false, threads);
        }
    };
    let images = x.chunks_exact(g.input_len().max(1));
    if images_side_by_side(g.batch) {
        out.par_chunks_exact_mut(g.output_len().max(1))
            .zip(images.collect::<Vec<_>>())
            .for_each_init(Vec::new, |cols, (out, x)| one(cols, x, out, false));
    } else {
        let mut cols = Vec::new();
        for (out, x) in out.chunks_exact_mut(g.output_len().max(1)).zip(images) {
            one(&mut cols, x, out, true);
        }
    }
    out
}

/// Group `group`'s block of a [rows·groups, cols] matrix.
fn block(m: &[f32], group: usize, rows: usize, cols: usize) -> &[f32] {
    let len = rows * cols;
    &m[group * len..][..len]
}

/// Images per group of the weight gradient's sum: fixed by the batch alone, small enough to
/// keep both threads of a 2-core machine busy at batch 8 and up.
fn images_per_group(batch: usize) -> usize {
    batch.div_ceil(8).max(1)
}

/// (dx [N, Ci, H, W] if `want_x`, dW [Co, Ci, kh, kw] if `want_weight`) for the output
/// gradient `grad` [N, Co, Ho, Wo].
pub fn gradients(
    g: &Geometry,
    x: &[f32],
    weight: &[f32],
    grad: &[f32],
    want_x: bool,
    want_weight: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    if crate::depthwise::applies(g) {
        return crate::depthwise::gradients(g, x, weight, grad, want_x, want_weight);
    }
    let (k, p, co) = (g.k(), g.p(), g.channels_out);
    let (kg, cog) = (g.group_k(), g.group_out());
    let per_group = images_per_group(g.batch);
    let mut dx = want_x.then(|| zeroed(g.batch * g.input_len()));
    // One job per group of images: its slice of dx and, for dW, a partial sum of its own.
    let groups: Vec<(usize, Option<&mut [f32]>)> = match dx.as_mut() {
        Some(dx) => dx
            .chunks_mut((per_group * g.input_len()).max(1))
            .map(Some)
            .enumerate()
            .collect(),
        None => (0..g.batch.div_ceil(per_group))
            .map(|i| (i, None))
            .collect(),
    };
    let threads = !images_side_by_side(g.batch);
    let group = |(index, mut dx): (usize, Option<&mut [f32]>)| {
        let mut dw = want_weight.then(|| vec![0.0; co * kg]);
        let (mut cols, mut dcols) = (Vec::new(), Vec::new());
        let first = index * per_group;
        for n in first..(first + per_group).min(g.batch) {
            let x = &x[n * g.input_len()..][..g.input_len()];
            let grad = &grad[n * g.output_len()..][..g.output_len()];
            if let Some(dx) = dx.as_deref_mut() {
                let dx = &mut dx[(n - first) * g.input_len()..][..g.input_len()];
                // Wᵀ·g per group, into dx itself for a pointwise convolution.
                let products = |target: &mut [f32]| {
                    for group in 0..g.groups {
                        let lhs = View::rows(block(weight, group, cog, kg), kg).t();
                        let rhs = View::rows(block(grad, group, cog, p), p);
                        let out = &mut target[group * kg * p..][..kg * p];
                        matmul(out, lhs, rhs, (kg, cog, p), false, threads);
                    }
                };
                if g.is_pointwise() {
                    products(dx);
                } else {
                    dcols.resize(k * p, 0.0);
                    products(&mut dcols);
                    g.col2im(&dcols, dx);
                }
            }
            if let Some(dw) = dw.as_mut() {
                let cols = if g.is_pointwise() {
                    x
                } else {
                    cols.resize(k * p, 0.0);
                    g.im2col(x, &mut cols);
                    &cols
                };
                for group in 0..g.groups {
                    let lhs = View::rows(block(grad, group, cog, p), p);
                    let rhs = View::rows(block(cols, group, kg, p), p).t();
                    let out = &mut dw[group * cog * kg..][..cog * kg];
                    matmul(out, lhs, rhs, (cog, p, kg), n > first, threads);
                }
            }
        }
        dw
    };
    let partials: Vec<Option<Vec<f32>>> = if threads {
        groups.into_iter().map(group).collect()
    } else {
        groups.into_par_iter().map(group).collect()
    };
    let dw = want_weight.then(|| {
        let mut partials = partials.into_iter().flatten();
        let mut sum = partials.next().unwrap_or_else(|| vec![0.0; co * kg]);
        for partial in partials {
            sum.iter_mut().zip(&partial).for_each(|(s, v)| *s += v);
        }
        sum
    });
    (dx, dw)
}

//! Tests of the CPU kernels (crates/cpu-kernels), here because CI's `cargo test` runs this
//! crate's tests and not that crate's: against the operations' definitions, written out
//! element by element in f64.

mod buffers {
    use arcface_cpu_kernels::buffers::{zeroed, zeroed_by_tasks, zeroed_chunks};

    #[test]
    fn every_value_is_zeroed_and_then_written_by_its_chunk_s_task() {
        // Adding to the chunks proves they arrive zeroed; the uneven lengths, that the last
        // chunk is cut short and a task past a buffer's end gets an empty part.
        let [a, b] = zeroed_by_tasks(4, [10, 5], [3, 2], |i, [a, b]| {
            assert_eq!((a.len(), b.len()), ([3, 3, 3, 1][i], [2, 2, 1, 0][i]));
            a.iter_mut().for_each(|v| *v += i as f32);
            b.iter_mut().for_each(|v| *v += 10.0 * i as f32);
        });
        assert_eq!(a, [0., 0., 0., 1., 1., 1., 2., 2., 2., 3.]);
        assert_eq!(b, [0., 0., 10., 10., 20.]);
    }

    #[test]
    #[should_panic(expected = "do not cover")]
    fn tasks_that_leave_values_unwritten_are_refused() {
        zeroed_by_tasks(2, [7], [3], |_, _| {});
    }

    #[test]
    fn one_buffer_has_one_task_per_chunk_and_a_zero_chunk_means_one() {
        let a = zeroed_chunks(7, 3, |i, a| {
            assert_eq!(a.len(), [3, 3, 1][i]);
            a.iter_mut().for_each(|v| *v += i as f32 + 1.0);
        });
        assert_eq!(a, [1., 1., 1., 2., 2., 2., 3.]);
        let b = zeroed_chunks(2, 0, |i, b| b[0] = i as f32 + 1.0);
        assert_eq!(b, [1., 2.]);
        assert!(zeroed_chunks(0, 4, |_, _| unreachable!("no chunk")).is_empty());
        assert_eq!(zeroed(70_000), vec![0.0; 70_000]);
    }
}

mod matmul {
    use arcface_cpu_kernels::matmul::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for r in 0..m {
            for col in 0..n {
                c[r * n + col] = (0..k).map(|i| a[r * k + i] * b[i * n + col]).sum();
            }
        }
        c
    }

    #[test]
    fn products_and_transposes_match_the_definition() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.91).cos()).collect();
        let expected = naive(&a, &b, m, k, n);
        let mut c = vec![0.0; m * n];
        matmul(
            &mut c,
            View::rows(&a, k),
            View::rows(&b, n),
            (m, k, n),
            false,
            false,
        );
        for (x, y) in c.iter().zip(&expected) {
            assert!((x - y).abs() < 1e-5);
        }
        // Accumulating adds the product once more; through transposed copies it is the same.
        let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        matmul(
            &mut c,
            View::rows(&at, m).t(),
            View::rows(&bt, k).t(),
            (m, k, n),
            true,
            true,
        );
        for (x, y) in c.iter().zip(&expected) {
            assert!((x - 2.0 * y).abs() < 1e-5);
        }
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn a_factor_too_short_is_refused() {
        let mut c = vec![0.0; 4];
        matmul(
            &mut c,
            View::rows(&[1.0; 3], 2),
            View::rows(&[1.0; 4], 2),
            (2, 2, 2),
            false,
            false,
        );
    }
}

mod conv {
    use arcface_cpu_kernels::conv::*;

    /// The convolution by its definition, in f64: out[n,o,y,x] = Σ w[o,c,i,j]·x[n,c,y·s+i·d−p,
    /// x·s+j·d−p] over positions inside the image, c over the channels of o's group.
    fn definition(g: &Geometry, x: &[f32], w: &[f32]) -> Vec<f64> {
        let [kh, kw] = g.kernel;
        let mut out = vec![0.0; g.batch * g.output_len()];
        for n in 0..g.batch {
            for o in 0..g.channels_out {
                for y in 0..g.out_height {
                    for xo in 0..g.out_width {
                        let mut sum = 0.0f64;
                        let (cig, cog) = (g.channels_in / g.groups, g.channels_out / g.groups);
                        let group = o / cog;
                        for c in group * cig..(group + 1) * cig {
                            for i in 0..kh {
                                for j in 0..kw {
                                    let row = (y * g.stride[0] + i * g.dilation[0]) as isize
                                        - g.padding[0] as isize;
                                    let col = (xo * g.stride[1] + j * g.dilation[1]) as isize
                                        - g.padding[1] as isize;
                                    if row < 0
                                        || col < 0
                                        || row >= g.height as isize
                                        || col >= g.width as isize
                                    {
                                        continue;
                                    }
                                    let xi = ((n * g.channels_in + c) * g.height + row as usize)
                                        * g.width
                                        + col as usize;
                                    let wi = ((o * cig + c - group * cig) * kh + i) * kw + j;
                                    sum += x[xi] as f64 * w[wi] as f64;
                                }
                            }
                        }
                        out[((n * g.channels_out + o) * g.out_height + y) * g.out_width + xo] = sum;
                    }
                }
            }
        }
        out
    }

    pub(super) fn values(len: usize, seed: f32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as f32 + seed) * 0.618_034).fract() * 2.0 - 1.0)
            .collect()
    }

    pub(super) fn close(ours: &[f32], reference: &[f64], what: &str) {
        assert_eq!(ours.len(), reference.len(), "{what}: length");
        for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
            assert!(
                (*a as f64 - b).abs() < 1e-4 * (1.0 + b.abs()),
                "{what}[{i}]: {a} against {b}"
            );
        }
    }

    /// Forward and gradients against the definition, for iresnet's shapes (3×3 stride 1 and 2,
    /// 1×1 stride 2) and beyond them (1×1 stride 1, non-square kernels, dilation, asymmetric
    /// padding), with batches below and above the thread count (one image at a time and side by
    /// side). A gradient entry is the derivative of ⟨conv(x, w), up⟩ by one input (or weight)
    /// value; the convolution is linear in each, so it is the definition evaluated with that
    /// value 1 and the others 0, dotted with `up`.
    #[test]
    fn forward_and_gradients_match_the_definition() {
        let cases = [
            // (batch, ci, h, w, co, kh, kw, stride, padding (begin, end), dilation)
            (3, 2, 7, 6, 4, 3, 3, [1, 1], [(1, 1), (1, 1)], [1, 1]),
            (2, 3, 9, 8, 5, 3, 3, [2, 2], [(1, 1), (1, 1)], [1, 1]),
            (4, 3, 6, 7, 2, 1, 1, [2, 2], [(0, 0), (0, 0)], [1, 1]),
            (1, 4, 5, 5, 3, 1, 1, [1, 1], [(0, 0), (0, 0)], [1, 1]),
            (2, 2, 8, 9, 3, 3, 2, [1, 2], [(2, 0), (0, 1)], [2, 1]),
            (9, 1, 4, 4, 2, 4, 4, [1, 1], [(0, 0), (0, 0)], [1, 1]),
            // 1×1 with zeros after the last row only: not the pointwise shortcut.
            (2, 3, 4, 5, 2, 1, 1, [1, 1], [(0, 1), (0, 0)], [1, 1]),
        ];
        // Grouped: MobileFaceNet's depthwise 3×3 (stride 1 and 2) and 7×7 GDC, its first block's
        // 2-in-2-out groups, a pointwise grouped one; batches on both sides of the thread count.
        let grouped = [
            // (batch, ci, h, w, co, kh, kw, stride, padding, groups)
            (3, 4, 6, 7, 4, 3, 3, [1, 1], [(1, 1), (1, 1)], 4),
            (1, 6, 7, 6, 6, 3, 3, [2, 2], [(1, 1), (1, 1)], 6),
            (2, 3, 7, 7, 3, 7, 7, [1, 1], [(0, 0), (0, 0)], 3),
            (2, 4, 5, 5, 4, 3, 3, [1, 1], [(1, 1), (1, 1)], 2),
            (9, 6, 3, 4, 4, 1, 1, [1, 1], [(0, 0), (0, 0)], 2),
        ];
        let all = cases
            .into_iter()
            .map(|(b, ci, h, w, co, kh, kw, s, p, d)| (b, ci, h, w, co, kh, kw, s, p, d, 1))
            .chain(
                grouped
                    .into_iter()
                    .map(|(b, ci, h, w, co, kh, kw, s, p, groups)| {
                        (b, ci, h, w, co, kh, kw, s, p, [1, 1], groups)
                    }),
            );
        for (batch, ci, h, w, co, kh, kw, stride, padding, dilation, groups) in all {
            let options = Options {
                stride,
                padding,
                dilation,
                groups,
            };
            let weight_in = ci / groups;
            let g = Geometry::new([batch, ci, h, w], [co, weight_in, kh, kw], &options).unwrap();
            let case = format!("{g:?}");
            let x = values(batch * g.input_len(), 0.3);
            let wt = values(co * weight_in * kh * kw, 0.7);
            let out = forward(&g, &x, &wt);
            close(&out, &definition(&g, &x, &wt), &format!("{case} output"));

            let up = values(out.len(), 0.11);
            let (dx, dw) = gradients(&g, &x, &wt, &up, true, true);
            let (dx, dw) = (dx.unwrap(), dw.unwrap());
            // Each gradient entry is the derivative of ⟨conv(x, w), up⟩, linear in x and w:
            // the definition at a unit input (or weight) gives it exactly.
            let unit = |len: usize, at: usize| {
                let mut v = vec![0.0f32; len];
                v[at] = 1.0;
                v
            };
            let dot = |a: &[f64], b: &[f32]| a.iter().zip(b).map(|(a, b)| a * *b as f64).sum();
            let dx_ref: Vec<f64> = (0..x.len())
                .map(|i| dot(&definition(&g, &unit(x.len(), i), &wt), &up))
                .collect();
            let dw_ref: Vec<f64> = (0..wt.len())
                .map(|i| dot(&definition(&g, &x, &unit(wt.len(), i)), &up))
                .collect();
            close(&dx, &dx_ref, &format!("{case} input gradient"));
            close(&dw, &dw_ref, &format!("{case} weight gradient"));

            let (only_dx, none) = gradients(&g, &x, &wt, &up, true, false);
            assert!(none.is_none());
            assert_eq!(only_dx.unwrap(), dx, "{case}: dx alone");
            let (none, only_dw) = gradients(&g, &x, &wt, &up, false, true);
            assert!(none.is_none());
            assert_eq!(only_dw.unwrap(), dw, "{case}: dW alone");
        }
    }

    #[test]
    fn mismatched_convolutions_are_left_to_burn() {
        let options = |padding: usize, groups: usize| Options {
            stride: [1, 1],
            padding: [(padding, padding); 2],
            dilation: [1, 1],
            groups,
        };
        // Groups that do not divide the channels, or a weight of another group width.
        assert!(Geometry::new([1, 4, 5, 5], [3, 2, 3, 3], &options(1, 2)).is_none());
        assert!(Geometry::new([1, 4, 5, 5], [4, 4, 3, 3], &options(1, 2)).is_none());
        assert!(Geometry::new([1, 4, 5, 5], [4, 2, 3, 3], &options(1, 2)).is_some());
        let plain = options(0, 1);
        assert!(Geometry::new([1, 4, 5, 5], [4, 3, 3, 3], &plain).is_none());
        // A kernel larger than the padded image has no output.
        assert!(Geometry::new([1, 1, 2, 2], [1, 1, 3, 3], &plain).is_none());
    }
}

mod batch_norm {
    use arcface_cpu_kernels::batch_norm::*;

    fn values(len: usize, seed: f64, offset: f64) -> Vec<f32> {
        (0..len)
            .map(|i| (((i as f64 + seed) * 0.618_034).fract() * 2.0 - 1.0 + offset) as f32)
            .collect()
    }

    /// Forward, statistics and every gradient against the formulas in f64 written out element
    /// by element, on a batch whose mean (3.0) is far from 0 and with planes of a length that
    /// is not a multiple of the lane count.
    #[test]
    fn matches_the_formulas_in_f64() {
        let layout = Layout::of(&[3, 4, 5, 3]);
        let (n, c, m) = (3, 4, 15);
        let x = values(n * c * m, 0.2, 3.0);
        let grad = values(n * c * m, 0.9, 0.1);
        let gamma = [0.5f32, -1.5, 2.0, 1.0];
        let beta = [0.1f32, 0.2, -0.3, 0.0];
        let eps = 1e-5;
        let (mean, var) = statistics(layout, &x);
        let y = normalize(layout, &x, &gamma, &beta, (&mean, &var), eps);
        let (dx, dg, db) = backward(layout, &x, &gamma, (&mean, &var), eps, &grad);
        let at = |i: usize, ch: usize, j: usize| (i * c + ch) * m + j;
        for ch in 0..c {
            let xs: Vec<f64> = (0..n)
                .flat_map(|i| (0..m).map(move |j| (i, j)))
                .map(|(i, j)| x[at(i, ch, j)] as f64)
                .collect();
            let count = xs.len() as f64;
            let mu = xs.iter().sum::<f64>() / count;
            let v = xs.iter().map(|a| (a - mu).powi(2)).sum::<f64>() / count;
            assert!((mean[ch] as f64 - mu).abs() < 1e-6, "mean");
            assert!((var[ch] as f64 - v).abs() < 1e-6, "variance");
            let sigma = (v + eps).sqrt();
            let (mut sum_dy, mut sum_dy_hat) = (0.0, 0.0);
            for i in 0..n {
                for j in 0..m {
                    let hat = (x[at(i, ch, j)] as f64 - mu) / sigma;
                    let expected = gamma[ch] as f64 * hat + beta[ch] as f64;
                    assert!((y[at(i, ch, j)] as f64 - expected).abs() < 1e-5, "output");
                    sum_dy += grad[at(i, ch, j)] as f64;
                    sum_dy_hat += grad[at(i, ch, j)] as f64 * hat;
                }
            }
            assert!((db[ch] as f64 - sum_dy).abs() < 1e-5, "dβ");
            assert!((dg[ch] as f64 - sum_dy_hat).abs() < 1e-5, "dγ");
            for i in 0..n {
                for j in 0..m {
                    let hat = (x[at(i, ch, j)] as f64 - mu) / sigma;
                    let dy = grad[at(i, ch, j)] as f64;
                    let expected =
                        gamma[ch] as f64 / sigma * (dy - sum_dy / count - hat * sum_dy_hat / count);
                    assert!((dx[at(i, ch, j)] as f64 - expected).abs() < 1e-4, "dx");
                }
            }
        }
    }
}

mod prelu {
    use arcface_cpu_kernels::batch_norm::Layout;
    use arcface_cpu_kernels::prelu::*;

    #[test]
    fn matches_the_definition() {
        let layout = Layout::of(&[2, 3, 2, 5]);
        let x: Vec<f32> = (0..60)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.25)
            .collect();
        let grad: Vec<f32> = (0..60)
            .map(|i| ((i * 11 % 17) as f32 - 8.0) * 0.5)
            .collect();
        let alpha = [0.25f32, -0.5, 2.0];
        let y = forward(layout, &x, &alpha);
        let (dx, da) = backward(layout, &x, &alpha, &grad);
        let mut expected_da = [0.0f32; 3];
        for i in 0..60 {
            let c = i / 10 % 3;
            let expected_y = if x[i] < 0.0 { alpha[c] * x[i] } else { x[i] };
            assert_eq!(y[i], expected_y, "y[{i}]");
            let expected = if x[i] < 0.0 {
                alpha[c] * grad[i]
            } else {
                grad[i]
            };
            assert_eq!(dx[i], expected);
            if x[i] < 0.0 {
                expected_da[c] += grad[i] * x[i];
            }
        }
        for c in 0..3 {
            assert!((da[c] - expected_da[c]).abs() < 1e-4, "dα[{c}]");
        }
        assert!(expected_da.iter().all(|&v| v != 0.0));
    }
}

mod attention {
    use arcface_cpu_kernels::attention::*;

    #[test]
    fn exp_is_within_two_ulp_of_the_definition() {
        let mut worst = 0u32;
        for i in 0..=1_000_000u32 {
            let x = -87.0 * i as f32 / 1e6;
            let want = (x as f64).exp() as f32;
            worst = worst.max(exp(x).to_bits().abs_diff(want.to_bits()));
        }
        assert!(worst <= 2, "{worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) > 0.0 && exp(-1000.0) < 1.3e-38);
    }

    /// `n` values, deterministic, both signs.
    fn inputs(n: usize, salt: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + salt * 104_729) % 2003) as f32 / 1001.5 - 1.0) * 1.5)
            .collect()
    }

    /// Values in a token's output row, and in its packed qkv row.
    fn dims(s: Shape) -> (usize, usize) {
        (s.heads * s.width, 3 * s.heads * s.width)
    }

    /// Σ out ⊙ g over everything in f64, out the heads' softmax(scale·q·kᵀ)·v side by side,
    /// q, k, v read from the packed rows [3, heads, width]: the definition.
    fn loss(s: Shape, qkv: &[f64], g: &[f32], scale: f64) -> f64 {
        let (t, w, (d, row)) = (s.tokens, s.width, dims(s));
        let mut total = 0.0;
        for image in 0..s.images {
            for h in 0..s.heads {
                let at = |part: usize, r: usize, c: usize| {
                    qkv[(image * t + r) * row + (part * s.heads + h) * w + c]
                };
                for i in 0..t {
                    let scores: Vec<f64> = (0..t)
                        .map(|j| scale * (0..w).map(|c| at(0, i, c) * at(1, j, c)).sum::<f64>())
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for c in 0..w {
                        let out: f64 = (0..t).map(|j| e[j] / sum * at(2, j, c)).sum();
                        total += out * g[(image * t + i) * d + h * w + c] as f64;
                    }
                }
            }
        }
        total
    }

    #[test]
    fn forward_and_gradients_equal_the_definition() {
        // 9 tokens: a row shorter than the kernel's 16 running sums; 37: two chunks and a
        // tail; two and three heads: q, k, v and the output read and written between others.
        for (images, heads, tokens, width) in [(3, 1, 9, 4), (2, 2, 37, 4), (1, 3, 20, 3)] {
            let s = Shape {
                images,
                heads,
                tokens,
                width,
            };
            forward_and_gradients_equal_the_definition_at(s);
        }
    }

    fn forward_and_gradients_equal_the_definition_at(s: Shape) {
        let scale = 0.5;
        let (d, row) = dims(s);
        let (qkv, g) = (
            inputs(s.images * s.tokens * row, 1),
            inputs(s.images * s.tokens * d, 4),
        );
        let (out, probs) = forward(s, &qkv, scale as f32);
        let dqkv = backward(s, &qkv, &probs, &g, scale as f32);
        let wide: Vec<f64> = qkv.iter().map(|&v| v as f64).collect();
        // The forward: Σ out ⊙ g is the loss.
        let ours: f64 = out.iter().zip(&g).map(|(o, g)| *o as f64 * *g as f64).sum();
        let want = loss(s, &wide, &g, scale);
        assert!(
            (ours - want).abs() < 1e-5 * want.abs().max(1.0),
            "{s:?}: {ours} vs {want}"
        );
        // Each gradient against central differences of the definition, value by value.
        for i in (0..dqkv.len()).step_by(5) {
            let h = 1e-5;
            let mut shifted = wide.clone();
            shifted[i] += h;
            let up = loss(s, &shifted, &g, scale);
            shifted[i] -= 2.0 * h;
            let down = loss(s, &shifted, &g, scale);
            let numeric = (up - down) / (2.0 * h);
            assert!(
                (dqkv[i] as f64 - numeric).abs() < 1e-4,
                "{s:?}: dqkv[{i}]: {} vs {numeric}",
                dqkv[i]
            );
        }
    }

    #[test]
    fn a_nan_score_makes_its_rows_nan_as_in_pytorch() {
        let s = Shape {
            images: 2,
            heads: 2,
            tokens: 20,
            width: 3,
        };
        let (d, row) = dims(s);
        let mut qkv = inputs(s.images * s.tokens * row, 1);
        // Image 0, token 3, head 1's q: that head's row of scores is NaN, nothing else.
        qkv[3 * row + s.width] = f32::NAN;
        let (out, _) = forward(s, &qkv, 0.5);
        for (token, values) in out.chunks(d).enumerate() {
            for (h, values) in values.chunks(s.width).enumerate() {
                let nan = values.iter().all(|x| x.is_nan());
                assert_eq!(
                    nan,
                    token == 3 && h == 1,
                    "token {token} head {h}: {values:?}"
                );
                assert!(nan || values.iter().all(|x| x.is_finite()));
            }
        }
    }

    #[test]
    fn the_avx2_softmax_equals_the_baseline_bit_for_bit() {
        for t in [5, 16, 144, 150] {
            let rows: Vec<f32> = (0..7 * t)
                .map(|i| ((i * 7919 % 2003) as f32 / 100.0) - 10.0)
                .collect();
            let (mut ours, mut baseline) = (rows.clone(), rows);
            softmax_rows(&mut ours, t, 0.37);
            softmax_rows_baseline(&mut baseline, t, 0.37);
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&ours), bits(&baseline), "{t} tokens");
            for row in ours.chunks(t) {
                let sum: f64 = row.iter().map(|&p| p as f64).sum();
                assert!((sum - 1.0).abs() < 1e-5, "{t} tokens: Σ = {sum}");
            }
        }
    }
}

mod relu6 {
    use arcface_cpu_kernels::relu6::*;

    #[test]
    fn follows_pytorchs_relu6_and_hardtanh_backward() {
        // Across a task boundary (chunks of 2¹⁴), with the edges 0 and 6 and a NaN.
        let n = (1 << 14) + 37;
        let mut x: Vec<f32> = (0..n).map(|i| (i % 97) as f32 * 0.17 - 4.0).collect();
        x[3] = 0.0;
        x[4] = 6.0;
        x[5] = f32::NAN;
        let grad: Vec<f32> = (0..n).map(|i| 1.0 + i as f32).collect();
        let (y, dx) = (forward(&x), backward(&x, &grad));
        for i in 0..n {
            let want = if x[i].is_nan() {
                x[i]
            } else {
                x[i].clamp(0.0, 6.0)
            };
            assert!(y[i] == want || (y[i].is_nan() && want.is_nan()), "y[{i}]");
            let passes = x[i] > 0.0 && x[i] < 6.0;
            assert_eq!(dx[i], if passes { grad[i] } else { 0.0 }, "dx[{i}]");
        }
        assert!(y[5].is_nan() && dx[3] == 0.0 && dx[4] == 0.0);
    }
}

mod linear {
    use super::conv::{close, values};
    use arcface_cpu_kernels::linear::*;

    /// y = x·W + b, dx = dy·Wᵀ, dW = xᵀ·dy, db = Σ_rows dy written out in f64, for row counts
    /// inside one block, across the forward's blocks of 256 rows and across the sums' blocks of
    /// 1,024 (vit_tiny's 4,160 rows), with and without a bias.
    #[test]
    fn forward_and_gradients_match_the_definition() {
        for (m, k, n, with_bias) in [(3, 5, 4, true), (300, 7, 6, false), (2100, 9, 5, true)] {
            let (x, w, b, dy) = (
                values(m * k, 1.0),
                values(k * n, 2.0),
                values(n, 3.0),
                values(m * n, 4.0),
            );
            let bias = with_bias.then_some(&b[..]);
            let y = forward(&x, &w, bias, (m, k, n));
            let (dx, dw, db) = backward(&x, &w, &dy, (m, k, n), with_bias);
            let at = |v: &[f32], i: usize| v[i] as f64;
            let want_y: Vec<f64> = (0..m * n)
                .map(|i| {
                    let (r, c) = (i / n, i % n);
                    let b = if with_bias { at(&b, c) } else { 0.0 };
                    b + (0..k)
                        .map(|j| at(&x, r * k + j) * at(&w, j * n + c))
                        .sum::<f64>()
                })
                .collect();
            let want_dx: Vec<f64> = (0..m * k)
                .map(|i| {
                    (0..n)
                        .map(|c| at(&dy, i / k * n + c) * at(&w, i % k * n + c))
                        .sum()
                })
                .collect();
            let want_dw: Vec<f64> = (0..k * n)
                .map(|i| {
                    (0..m)
                        .map(|r| at(&x, r * k + i / n) * at(&dy, r * n + i % n))
                        .sum()
                })
                .collect();
            let want_db: Vec<f64> = (0..n)
                .map(|c| (0..m).map(|r| at(&dy, r * n + c)).sum())
                .collect();
            let case = format!("m {m}, k {k}, n {n}, bias {with_bias}");
            close(&y, &want_y, &format!("y ({case})"));
            close(&dx, &want_dx, &format!("dx ({case})"));
            close(&dw, &want_dw, &format!("dW ({case})"));
            assert_eq!(db.is_some(), with_bias, "db ({case})");
            if let Some(db) = db {
                close(&db, &want_db, &format!("db ({case})"));
            }
        }
    }
}

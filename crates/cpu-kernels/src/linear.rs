//! A fully connected layer, y = x·W + b over rows (burn's `Linear`: W is [in, out]), and its
//! backward: dx = dy·Wᵀ, dW = xᵀ·dy, db = Σ_rows dy.
//!
//! burn's CPU backend runs these as a generic product (its output zeroed on the calling thread,
//! then copied once more into realigned memory: burn-flex 0.22's `FlexTensor::empty`), a
//! broadcast addition of the bias and, backward, a reduction over the rows; and gemm's own
//! threads split dW = xᵀ·dy by its small output, 1.6× slower than PyTorch's on vit_tiny's
//! [4160 × 64]ᵀ·[4160 × 192]. Here the rows are cut into blocks, one task each on rayon's
//! threads: y's block starts as the bias and takes its product on top, dx's the same, and dW and
//! db are summed block by block and the blocks' sums added in order. The blocks depend on the
//! shapes alone, so every value's summation order is fixed and runs repeat bit for bit.

use crate::buffers::zeroed_by_tasks;
use crate::matmul::{View, matmul};

/// Rows a block of the forward and of dx. A single block (few rows: the flat layers of a
/// batch) is one product spread over the threads by gemm.
const ROWS: usize = 256;

/// Rows summed by one task of dW and db.
const SUM_ROWS: usize = 1024;

/// y [m, n] = x [m, k] · w [k, n] (+ bias [n] on every row).
pub fn forward(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    (m, k, n): (usize, usize, usize),
) -> Vec<f32> {
    assert!(k > 0 && n > 0, "linear: {k} inputs, {n} outputs");
    assert_eq!(
        (x.len(), w.len()),
        (m * k, k * n),
        "linear: shapes do not match the values"
    );
    if let Some(bias) = bias {
        assert_eq!(
            bias.len(),
            n,
            "linear: bias of {} for {n} outputs",
            bias.len()
        );
    }
    let tasks = m.div_ceil(ROWS);
    let [y] = zeroed_by_tasks(tasks, [m * n], [ROWS * n], |task, [y]| {
        let rows = y.len() / n.max(1);
        if let Some(bias) = bias {
            y.chunks_exact_mut(n)
                .for_each(|row| row.copy_from_slice(bias));
        }
        let x = &x[task * ROWS * k..][..rows * k];
        let threads = tasks == 1;
        matmul(
            y,
            View::rows(x, k),
            View::rows(w, n),
            (rows, k, n),
            true,
            threads,
        );
    });
    y
}

/// (dx [m, k], dW [k, n], db [n] when `bias`) for the output gradient `dy` [m, n] at the input
/// `x` [m, k] and weight `w` [k, n].
pub fn backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    (m, k, n): (usize, usize, usize),
    bias: bool,
) -> (Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
    assert!(k > 0 && n > 0, "linear: {k} inputs, {n} outputs");
    assert_eq!(
        (x.len(), w.len(), dy.len()),
        (m * k, k * n, m * n),
        "linear: shapes do not match the values"
    );
    let tasks = m.div_ceil(ROWS);
    let [dx] = zeroed_by_tasks(tasks, [m * k], [ROWS * k], |task, [dx]| {
        let rows = dx.len() / k.max(1);
        let dy = &dy[task * ROWS * n..][..rows * n];
        let threads = tasks == 1;
        matmul(
            dx,
            View::rows(dy, n),
            View::rows(w, n).t(),
            (rows, n, k),
            false,
            threads,
        );
    });
    let (dw, db) = parameter_gradients(x, dy, (m, k, n), bias);
    (dx, dw, db)
}

/// dW = xᵀ·dy and db = Σ_rows dy: partial sums over blocks of `SUM_ROWS` rows on rayon's
/// threads, added in block order. With a single block (few rows: the flat layers), one product
/// spread over the threads by gemm.
fn parameter_gradients(
    x: &[f32],
    dy: &[f32],
    (m, k, n): (usize, usize, usize),
    bias: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let blocks = m.div_ceil(SUM_ROWS).max(1);
    let width = k * n + if bias { n } else { 0 };
    let [partials] = zeroed_by_tasks(blocks, [blocks * width], [width], |block, [partial]| {
        let first = block * SUM_ROWS;
        let rows = SUM_ROWS.min(m - first.min(m));
        let (dw, db) = partial.split_at_mut(k * n);
        let x = &x[first * k..][..rows * k];
        let dy = &dy[first * n..][..rows * n];
        let threads = blocks == 1;
        matmul(
            dw,
            View::rows(x, k).t(),
            View::rows(dy, n),
            (k, rows, n),
            false,
            threads,
        );
        for row in dy.chunks_exact(n) {
            db.iter_mut().zip(row).for_each(|(sum, &g)| *sum += g);
        }
    });
    let mut sums = partials[..width].to_vec();
    for partial in partials.chunks_exact(width).skip(1) {
        sums.iter_mut().zip(partial).for_each(|(sum, &p)| *sum += p);
    }
    let db = bias.then(|| sums.split_off(k * n));
    (sums, db)
}

//! A bounds-checked front to the `gemm` crate's f32 matrix product (the one burn's CPU backend
//! uses), for the kernels of this folder.

/// A read-only m×n matrix in `data`: element (r, c) at `data[r·row_stride + c·col_stride]`.
/// A transposed view is the same data with the strides swapped.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> View<'a> {
    /// Row-major with `cols` columns.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose.
    pub fn t(self) -> Self {
        Self {
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Panics unless the m×n matrix lies inside `data` (what makes the product below safe).
    fn check(&self, m: usize, n: usize, what: &str) {
        if m == 0 || n == 0 {
            return;
        }
        let last = (m - 1) * self.row_stride + (n - 1) * self.col_stride;
        assert!(
            last < self.data.len(),
            "matmul: {what} {m}×{n} does not fit its {} values",
            self.data.len()
        );
    }
}

/// `dst` (m×n, row-major) = `lhs` (m×k) · `rhs` (k×n), or `dst` += that when `accumulate`.
/// `threads`: spread this one product over rayon's pool (for a lone image); otherwise it runs
/// on the calling thread, and its summation order is fixed.
pub fn matmul(
    dst: &mut [f32],
    lhs: View,
    rhs: View,
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
    threads: bool,
) {
    matmul_strided(dst, n, lhs, rhs, (m, k, n), accumulate, threads)
}

/// [`matmul`] into rows `dst_row_stride` apart (a block of columns of a wider matrix).
pub fn matmul_strided(
    dst: &mut [f32],
    dst_row_stride: usize,
    lhs: View,
    rhs: View,
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
    threads: bool,
) {
    assert!(
        n <= dst_row_stride && (m == 0 || dst.len() >= (m - 1) * dst_row_stride + n),
        "matmul: destination {m}×{n} (rows {dst_row_stride} apart) too small"
    );
    lhs.check(m, k, "left factor");
    rhs.check(k, n, "right factor");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for row in 0..m {
                dst[row * dst_row_stride..][..n].fill(0.0);
            }
        }
        return;
    }
    let parallelism = if threads {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every element gemm reads or writes lies inside its slice (checked above: the
    // largest offset of each matrix is within bounds and all strides are non-negative), `dst`
    // is borrowed mutably and so aliases neither factor.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_row_stride as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

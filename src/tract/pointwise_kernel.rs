//! The product of a 1×1 convolution, out[o, p] = Σ_c w[o, c]·x[c, p], on AVX2 + FMA: tiles of
//! 6 output channels × 16 pixels held in twelve registers through every input channel (with
//! the two of the pixels and the broadcast weight, 15 of the 16; 4 × 24 needed one more, and
//! the spilled sum's round trip through memory halved the rate).
//!
//! Why not `gemm` (the crate's product, still used on CPUs without AVX2): on mbf at batch 1 it
//! reached ~80 GFLOP/s a core on these shapes, repacking both factors at every call (6 % of the
//! image in packing alone), where onnxruntime's convolutions ran at ~95. Here the weights are
//! packed once when the graph is built ([`pack_weights`]), and an activation's 16-pixel panel
//! once per panel. Each output value is one chain of fused multiply-adds over the input
//! channels in order, whichever thread computes it, so runs repeat bit for bit.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
#[cfg(target_arch = "x86_64")]
use std::ops::Range;

#[cfg(target_arch = "x86_64")]
use super::fusion::Epilogue;

/// Output channels a tile.
pub(super) const ROWS: usize = 6;
/// Pixels a tile: two registers of eight.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) const COLS: usize = 16;

/// Weights [o, c] row-major → [o/ROWS tiles][c][ROWS], the rows past `o` zero.
pub(super) fn pack_weights(weights: &[f32], o: usize, c: usize) -> Vec<f32> {
    super::eval::pack_row_blocks::<ROWS>(weights, o, c)
}

/// One image's output [o, pixels], shared by the threads that write its disjoint parts.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(super) struct Output {
    values: *mut f32,
    len: usize,
}

// SAFETY: the threads given one `Output` write disjoint tiles of it ([`product`]'s contract).
#[cfg(target_arch = "x86_64")]
unsafe impl Send for Output {}
#[cfg(target_arch = "x86_64")]
unsafe impl Sync for Output {}

#[cfg(target_arch = "x86_64")]
impl Output {
    pub(super) fn new(values: &mut [f32]) -> Self {
        Self {
            values: values.as_mut_ptr(),
            len: values.len(),
        }
    }
}

/// Output rows `rows` (its start a multiple of [`ROWS`]) × pixel tiles `tiles` (of COLS) of
/// w · x for x [c, pixels] and the weights packed by [`pack_weights`], each value then
/// shifted and through the PReLU of `epilogue` as tract's nodes after it would.
///
/// # Safety
/// The CPU must have AVX2 and FMA, and no other thread may touch those rows × pixels of
/// `out` meanwhile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn product(
    out: Output,
    (packed, epilogue): (&[f32], &Epilogue),
    x: &[f32],
    (c, pixels): (usize, usize),
    rows: Range<usize>,
    tiles: Range<usize>,
) {
    assert!(rows.start.is_multiple_of(ROWS) && out.len >= rows.end * pixels);
    assert!(x.len() >= c * pixels && packed.len() >= rows.end.div_ceil(ROWS) * c * ROWS);
    let mut panel = vec![0.0f32; c * COLS];
    for tile in tiles {
        let p0 = tile * COLS;
        let width = COLS.min(pixels - p0);
        // The panel: input channel by channel, COLS pixels each (zeros past the last pixel).
        // Whole rows as fixed-size copies, which compile to two moves where a slice copy
        // called memcpy each time (8 % of an image).
        for (ci, lane) in panel.as_chunks_mut::<COLS>().0.iter_mut().enumerate() {
            let source = &x[ci * pixels + p0..][..width];
            match <&[f32; COLS]>::try_from(source) {
                Ok(whole) => *lane = *whole,
                Err(_) => {
                    lane[..width].copy_from_slice(source);
                    lane[width..].fill(0.0);
                }
            }
        }
        for first in rows.clone().step_by(ROWS) {
            let w = &packed[first * c..][..c * ROWS];
            // SAFETY: AVX2 and FMA, this function's contract.
            let sums = unsafe { tile_sums(w, &panel, epilogue, first) };
            for (row, sums) in (first..rows.end).zip(&sums) {
                // SAFETY: inside `out` (asserted above), and ours alone (the contract).
                let target = unsafe {
                    std::slice::from_raw_parts_mut(out.values.add(row * pixels + p0), width)
                };
                target.copy_from_slice(&sums[..width]);
            }
        }
    }
}

/// One tile's sums: for each of the ROWS channels, COLS pixels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile_sums(
    w: &[f32],
    panel: &[f32],
    epilogue: &Epilogue,
    first: usize,
) -> [[f32; COLS]; ROWS] {
    let mut acc = [[_mm256_setzero_ps(); 2]; ROWS];
    for (w, x) in w.chunks_exact(ROWS).zip(panel.chunks_exact(COLS)) {
        // SAFETY: each load reads 8 values of a 16-value chunk.
        let x = unsafe {
            [
                _mm256_loadu_ps(x.as_ptr()),
                _mm256_loadu_ps(x.as_ptr().add(8)),
            ]
        };
        for r in 0..ROWS {
            let weight = _mm256_set1_ps(w[r]);
            for j in 0..2 {
                acc[r][j] = _mm256_fmadd_ps(weight, x[j], acc[r][j]);
            }
        }
    }
    // The epilogue on the registers: + shift, then x > 0 ? x : a·x (tract's nodes' arithmetic;
    // rows past the last channel get channel 0's, and are not stored).
    let channels = epilogue.shift().len();
    for (r, acc) in acc.iter_mut().enumerate() {
        let channel = if first + r < channels { first + r } else { 0 };
        let shift = _mm256_set1_ps(epilogue.shift()[channel]);
        let slope = epilogue.slope(channel);
        for v in acc.iter_mut() {
            let shifted = _mm256_add_ps(*v, shift);
            *v = match slope {
                Some(a) => {
                    let positive = _mm256_cmp_ps::<_CMP_GT_OQ>(shifted, _mm256_setzero_ps());
                    let scaled = _mm256_mul_ps(shifted, _mm256_set1_ps(a));
                    _mm256_blendv_ps(scaled, shifted, positive)
                }
                None => shifted,
            };
        }
    }
    let mut sums = [[0.0f32; COLS]; ROWS];
    for (row, acc) in sums.iter_mut().zip(&acc) {
        for (j, v) in acc.iter().enumerate() {
            // SAFETY: 8 values into a 16-value row at 0 and 8.
            unsafe { _mm256_storeu_ps(row.as_mut_ptr().add(8 * j), *v) };
        }
    }
    sums
}

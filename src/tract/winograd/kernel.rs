//! One of Winograd's matrix products, M = U·V (U the transformed kernel at one tile position,
//! [o, c]; V the transformed input tiles there, [c, tiles]), on AVX2 + FMA: tiles of 16 output
//! channels × 5 tile columns held in ten registers through every input channel.
//!
//! Why not tract's product (which products.rs keeps for CPUs without AVX2): at batch 1 these
//! products are short and narrow (r100's 14×14 stage: 49 columns, 256 channels) and their
//! weights come from memory, not from a cache: the 58 convolutions of that stage stream 240 MB
//! of transformed weights per image. tract ran them at ~50 GFLOP/s a core, each call repacking
//! V (`pack_t`, 7 % of an r100 image) and reading U cold, and a lone image's products went to
//! the two cores as two tract plans. Here U is packed once when the graph is built, V's
//! 5-column panels are copied as fixed-size moves, the next 16 rows of U are prefetched while
//! the current ones meet the second panel, and a lone image's tile positions are spread over
//! the threads one by one (products.rs). r100's products at batch 1 went from 98–127 to 72–90
//! ms an image in alternated runs (docs/HISTORY.md). The 16 × 5 shape is tract's own choice for
//! these products (49 columns: ten panels, one column of padding). Each output is one chain of
//! fused multiply-adds over the input channels in order, as in tract's kernel: the products
//! equal tract's bit for bit (tested), and runs repeat.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Output channels a tile: two registers of eight.
pub(super) const ROWS: usize = 16;
/// Columns (tiles of the image) a tile, broadcast one by one.
pub(super) const COLS: usize = 5;

/// U [o, c] row-major → [o/ROWS blocks][c][ROWS], the rows past `o` zero.
pub(super) fn pack_kernel(u: &[f32], o: usize, c: usize) -> Vec<f32> {
    crate::tract::eval::pack_row_blocks::<ROWS>(u, o, c)
}

/// out [o, columns] = U·v for v [c, columns] and U packed by [`pack_kernel`]; `panels` is
/// scratch space, resized as needed.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn product(
    packed: &[f32],
    v: &[f32],
    out: &mut [f32],
    (o, c, columns): (usize, usize, usize),
    panels: &mut Vec<f32>,
) {
    let blocks = o.div_ceil(ROWS);
    assert!(packed.len() >= blocks * c * ROWS && v.len() >= c * columns);
    assert!(out.len() >= o * columns);
    let count = columns.div_ceil(COLS);
    // V's panels: input channel by input channel, COLS columns each (zeros past the last).
    // Whole runs as fixed-size copies, which compile to moves where a slice copy of a
    // variable length called memmove (7 % of an r100 image).
    panels.resize(count * c * COLS, 0.0);
    for (p, panel) in panels.chunks_exact_mut(c * COLS).enumerate() {
        let (first, width) = (p * COLS, COLS.min(columns - p * COLS));
        let lanes = panel.as_chunks_mut::<COLS>().0;
        for (lane, row) in lanes.iter_mut().zip(v.chunks_exact(columns)) {
            match <&[f32; COLS]>::try_from(&row[first..first + width]) {
                Ok(whole) => *lane = *whole,
                Err(_) => {
                    lane[..width].copy_from_slice(&row[first..first + width]);
                    lane[width..].fill(0.0);
                }
            }
        }
    }
    for block in 0..blocks {
        let u = &packed[block * c * ROWS..][..c * ROWS];
        let next = packed.get((block + 1) * c * ROWS..(block + 2) * c * ROWS);
        // This block's output rows (the last block's stop at `o`).
        let rows = &mut out[block * ROWS * columns..o.min((block + 1) * ROWS) * columns];
        for (p, panel) in panels.chunks_exact(c * COLS).enumerate() {
            // The next block's rows, fetched from memory meanwhile (while this block is
            // multiplied with its second panel, once the first has brought it in).
            let ahead = if p == 1 { next } else { None };
            // SAFETY: AVX2 and FMA, this function's contract.
            let sums = unsafe { tile_sums(u, panel, ahead) };
            let (first, width) = (p * COLS, COLS.min(columns - p * COLS));
            for (r, row) in rows.chunks_exact_mut(columns).enumerate() {
                let column = |j: usize| sums[j][r];
                match <&mut [f32; COLS]>::try_from(&mut row[first..first + width]) {
                    Ok(whole) => *whole = std::array::from_fn(column),
                    Err(_) => {
                        let part = &mut row[first..first + width];
                        part.iter_mut()
                            .enumerate()
                            .for_each(|(j, v)| *v = column(j));
                    }
                }
            }
        }
    }
}

/// One tile's sums: for each of the COLS columns, ROWS output channels. `ahead`: a block of U
/// to prefetch, one cache line (16 values) per input channel.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile_sums(u: &[f32], panel: &[f32], ahead: Option<&[f32]>) -> [[f32; ROWS]; COLS] {
    let mut acc = [[_mm256_setzero_ps(); 2]; COLS];
    let (u, panel) = (u.as_chunks::<ROWS>().0, panel.as_chunks::<COLS>().0);
    for (k, (u, v)) in u.iter().zip(panel).enumerate() {
        if let Some(ahead) = ahead {
            // A hint: never faults, whatever the address.
            _mm_prefetch::<_MM_HINT_T0>(ahead.as_ptr().wrapping_add(k * ROWS).cast());
        }
        // SAFETY: each load reads 8 values of a 16-value chunk.
        let u = unsafe {
            [
                _mm256_loadu_ps(u.as_ptr()),
                _mm256_loadu_ps(u.as_ptr().add(8)),
            ]
        };
        for (j, &value) in v.iter().enumerate() {
            let value = _mm256_set1_ps(value);
            for half in 0..2 {
                acc[j][half] = _mm256_fmadd_ps(u[half], value, acc[j][half]);
            }
        }
    }
    let mut sums = [[0.0f32; ROWS]; COLS];
    for (column, acc) in sums.iter_mut().zip(&acc) {
        for (half, v) in acc.iter().enumerate() {
            // SAFETY: 8 values into a 16-value row at 0 and 8.
            unsafe { _mm256_storeu_ps(column.as_mut_ptr().add(8 * half), *v) };
        }
    }
    sums
}

//! What our tract operations (src/tract/winograd/, src/tract/pointwise.rs) share when they
//! evaluate: a tensor's f32 values as a slice, weights packed in blocks of rows for our AVX2
//! products, whether this image may use every thread, and loops compiled twice, for baseline
//! x86-64 and for AVX2.

use tract_linalg::multithread::{Executor, current_tract_executor};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

/// Whether this image may spread over rayon's threads: the runner (src/tract/run.rs) says so
/// through tract's executor when one image is alone; a batch already runs an image per thread.
pub(crate) fn spread_over_threads() -> bool {
    !matches!(current_tract_executor(), Executor::SingleThread)
}

/// Weights [o, c] row-major → [o/ROWS blocks][c][ROWS], the rows past `o` zero: the layout our
/// AVX2 products read, ROWS output channels' weights side by side for each input channel
/// (src/tract/pointwise_kernel.rs, winograd/kernel.rs).
pub(crate) fn pack_row_blocks<const ROWS: usize>(weights: &[f32], o: usize, c: usize) -> Vec<f32> {
    let mut packed = vec![0.0; o.div_ceil(ROWS) * c * ROWS];
    for (row, w) in weights.chunks_exact(c).enumerate().take(o) {
        let (block, r) = (row / ROWS, row % ROWS);
        for (ci, &v) in w.iter().enumerate() {
            packed[(block * c + ci) * ROWS + r] = v;
        }
    }
    packed
}

pub(crate) fn plain(t: &Tensor) -> TractResult<&[f32]> {
    t.try_as_plain_ram()?.as_slice::<f32>()
}

pub(crate) fn plain_mut(t: &mut Tensor) -> TractResult<&mut [f32]> {
    t.to_plain_array_view_mut::<f32>()?
        .into_slice()
        .context("not contiguous")
}

// Our operations' loops are plain loops that LLVM vectorises. Built for baseline x86-64 they get
// 4-wide SSE2; where the CPU has AVX2 and FMA they run as copies compiled for those, 8-wide
// (measured: docs/HISTORY.md). Rust never contracts a·b + c into a fused multiply-add, so
// both copies compute the same values. The copies are whole functions with
// `#[target_feature]` around `#[inline(always)]` bodies (`with_avx2_copy!`): a closure handed
// to one such function is not inlined into it and stays baseline (checked in the disassembly).

#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2() -> bool {
    #[cfg(test)]
    if BASELINE_ONLY.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Tests set this to run the baseline copies on a CPU with AVX2. (Other tests running meanwhile
/// may take the baseline copies too; they compute the same values.)
#[cfg(test)]
pub(crate) static BASELINE_ONLY: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Defines `$name`, which runs `$body` with the same arguments as a copy compiled for AVX2 and
/// FMA (`$avx2`) where the CPU has them, else as built. `$body` must be `#[inline(always)]`.
macro_rules! with_avx2_copy_ {
    (fn $name:ident, $avx2:ident <$(const $c:ident: usize),*> ($($arg:ident: $ty:ty),* $(,)?) => $body:ident) => {
        #[allow(clippy::too_many_arguments)]
        fn $name<$(const $c: usize),*>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if $crate::tract::eval::has_avx2() {
                // SAFETY: the CPU has AVX2 and FMA, checked just above.
                return unsafe { $avx2($($arg),*) };
            }
            $body($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $avx2<$(const $c: usize),*>($($arg: $ty),*) {
            $body($($arg),*)
        }
    };
}
pub(crate) use with_avx2_copy_ as with_avx2_copy;

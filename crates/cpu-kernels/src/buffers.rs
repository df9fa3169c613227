//! Output buffers that the parallel tasks writing them also zero.
//!
//! `vec![0.0; n]` zeroes a whole output on the calling thread before any task starts: for the
//! 17 MB of attention probabilities of a vit_tiny block that was one core's memset while the
//! other waited, 2–4 % of a training step (perf), and the memory went through the cache twice.
//! Here each task zeroes its own chunks just before it writes them: in parallel, and while they
//! are in that core's cache.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// A buffer's start, shared by the tasks, each of which touches only its own chunk.
struct Start(*mut MaybeUninit<f32>);

// SAFETY: the tasks of `zeroed_by_tasks` write disjoint chunks of the buffer it points into.
unsafe impl Sync for Start {}

/// `B` buffers of `lens` values, cut into chunks of `chunks` values (the last one shorter where
/// they do not divide): `task(i, parts)` runs for every i in 0..`tasks` on rayon's threads with
/// part j chunk i of buffer j (empty past its end), zero-filled. Panics unless the tasks cover
/// every buffer.
pub fn zeroed_by_tasks<const B: usize>(
    tasks: usize,
    lens: [usize; B],
    chunks: [usize; B],
    task: impl Fn(usize, [&mut [f32]; B]) + Sync + Send,
) -> [Vec<f32>; B] {
    zeroed_by_tasks_with(tasks, lens, chunks, task).0
}

/// [`zeroed_by_tasks`] with what each task returns, in task order.
pub fn zeroed_by_tasks_with<const B: usize, R: Send>(
    tasks: usize,
    lens: [usize; B],
    chunks: [usize; B],
    task: impl Fn(usize, [&mut [f32]; B]) -> R + Sync + Send,
) -> ([Vec<f32>; B], Vec<R>) {
    for (len, chunk) in lens.iter().zip(&chunks) {
        assert!(
            tasks.saturating_mul(*chunk) >= *len,
            "zeroed_by_tasks: {tasks} chunks of {chunk} do not cover {len} values"
        );
    }
    let mut buffers: [Vec<f32>; B] = lens.map(Vec::with_capacity);
    let starts = buffers
        .each_mut()
        .map(|buffer| Start(buffer.spare_capacity_mut().as_mut_ptr()));
    let results = (0..tasks)
        .into_par_iter()
        .map(|i| {
            let parts = std::array::from_fn(|j| {
                let begin = (i * chunks[j]).min(lens[j]);
                let end = ((i + 1) * chunks[j]).min(lens[j]);
                // SAFETY: begin..end lies inside buffer j's capacity (lens[j]), and chunk i is
                // this task's alone.
                let part =
                    unsafe { std::slice::from_raw_parts_mut(starts[j].0.add(begin), end - begin) };
                part.fill(MaybeUninit::new(0.0));
                // SAFETY: every value of `part` was initialised just above.
                unsafe { &mut *(part as *mut [MaybeUninit<f32>] as *mut [f32]) }
            });
            task(i, parts)
        })
        .collect();
    for (buffer, len) in buffers.iter_mut().zip(lens) {
        // SAFETY: the tasks' chunks cover 0..len (asserted above) and every task has run (a
        // panicking one unwinds through the collect, before this line).
        unsafe { buffer.set_len(len) };
    }
    (buffers, results)
}

/// One buffer of `len` values in chunks of `chunk` (at least 1; the last one shorter where
/// they do not divide), one task each: `task(i, chunk i)` on rayon's threads, zero-filled.
pub fn zeroed_chunks(
    len: usize,
    chunk: usize,
    task: impl Fn(usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let chunk = chunk.max(1);
    let [out] = zeroed_by_tasks(len.div_ceil(chunk), [len], [chunk], |i, [part]| {
        task(i, part)
    });
    out
}

/// `len` zeros, written in parallel chunks: for outputs whose writers are not one task per
/// chunk (a matrix product spread over the threads by gemm).
pub fn zeroed(len: usize) -> Vec<f32> {
    zeroed_chunks(len, 1 << 16, |_, _| {})
}

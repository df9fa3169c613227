//! f32 kernels of arcface's training operations on the CPU, over NCHW data in plain slices:
//! the bias-free 2-D convolution as im2col and one matrix product per image ([`conv`]; the
//! depthwise one directly, [`depthwise`]),
//! BatchNorm in training ([`batch_norm`]), PReLU ([`prelu`]), ReLU6 ([`relu6`]), scaled
//! dot-product attention ([`attention`]) and the fully connected layer ([`linear`]), each with
//! its backward; their outputs zeroed by the tasks that write them ([`buffers`]).
//!
//! burn's CPU backend (Flex) composes these from generic tensor operations; arcface plugs these
//! kernels in instead (src/model/flex/). Every reduction is summed in an order fixed by the
//! shapes alone, never by which thread finishes first, so runs repeat bit for bit.

/// `fn $name(args) -> R` that runs `$body(args)` compiled a second time with AVX2 where the CPU
/// has it. This crate is built for baseline x86-64 (SSE2), where a loop vectorises four lanes
/// wide; AVX2 doubles that. The two copies compute the same values (Rust never fuses a multiply
/// into an add, and every sum's order is written out in the body), so runs repeat bit for bit
/// across CPUs too. `$body` must be `#[inline(always)]` and keep its hot loops out of closures:
/// a closure is compiled once, as baseline code, whatever function calls it.
macro_rules! with_avx2_copy {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $body:ident) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                // SAFETY: the CPU has AVX2, checked just above.
                return unsafe { avx2($($arg),*) };
            }
            $body($($arg),*)
        }
    };
}

pub mod attention;
pub mod batch_norm;
pub mod buffers;
pub mod conv;
pub mod depthwise;
pub mod linear;
pub mod matmul;
pub mod prelu;
pub mod relu6;

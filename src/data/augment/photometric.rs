//! torchvision's ColorJitter on a PIL image, as AdaFace's photometric augmentation applies it:
//! `adjust_brightness`, `adjust_contrast` and `adjust_saturation` are Pillow's ImageEnhance,
//! each a `Image.blend(degenerate, image, factor)` — black, the image's mean grey, its greyscale
//! — with Pillow's arithmetic: the greyscale L = (19595·R + 38470·G + 7471·B + 2¹⁵) >> 16, the
//! blend in f32 truncated to an integer (clipped to [0, 255] when the factor extrapolates).
//! Written here because no kept crate has Pillow's enhance (and its truncation).

/// One of ColorJitter's adjustments with its factor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Adjust {
    Brightness(f32),
    Contrast(f32),
    Saturation(f32),
}

/// Pillow's L of one RGB pixel.
fn luma(p: &[u8]) -> u8 {
    ((19595 * p[0] as u32 + 38470 * p[1] as u32 + 7471 * p[2] as u32 + 0x8000) >> 16) as u8
}

/// Pillow's ImagingBlend of one channel value: in1 + α·(in2 − in1), truncated.
fn blend(degenerate: u8, value: u8, alpha: f32) -> u8 {
    let t = degenerate as f32 + alpha * (value as f32 - degenerate as f32);
    if (0.0..=1.0).contains(&alpha) {
        t as u8
    } else {
        t.clamp(0.0, 255.0) as u8
    }
}

/// `rgb` (interleaved RGB) adjusted in place.
pub fn apply(rgb: &mut [u8], adjust: Adjust) {
    match adjust {
        Adjust::Brightness(f) => rgb.iter_mut().for_each(|v| *v = blend(0, *v, f)),
        Adjust::Contrast(f) => {
            // ImageStat's mean of the L image, rounded as int(mean + 0.5).
            let n = rgb.len() / 3;
            let sum: u64 = rgb.chunks_exact(3).map(|p| luma(p) as u64).sum();
            let mean = (sum as f64 / n as f64 + 0.5) as u8;
            rgb.iter_mut().for_each(|v| *v = blend(mean, *v, f));
        }
        Adjust::Saturation(f) => {
            for p in rgb.chunks_exact_mut(3) {
                let grey = luma(p);
                p.iter_mut().for_each(|v| *v = blend(grey, *v, f));
            }
        }
    }
}

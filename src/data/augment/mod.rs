//! Training-time augmentations of a decoded 112×112 face, before the flip: AdaFace's and
//! arcface_torch's, each with its probability (0: off). First AdaFace's, as its
//! dataset/augmenter.py applies them (mk-minchul/AdaFace), in this order:
//!
//! - **crop**: torchvision's RandomResizedCrop parameters (scale 0.2–1, ratio 3/4–4/3) pick a
//!   box, which stays where it is, the rest of the image zeroed (AdaFace's crop is not resized);
//! - **low resolution**: down to int(r·112) pixels a side, r uniform in [0.2, 1), and back up,
//!   each way with one of cv2's nearest, linear, area, cubic, Lanczos-4 drawn uniformly;
//! - **photometric**: ColorJitter(brightness 0.5, contrast 0.5, saturation 0.5) on a PIL image:
//!   the three in a random order, each factor uniform in [0.5, 1.5].
//!
//! then arcface_torch's DALI set (`dali.rs`: resize, blur, hsv, gray). Every draw comes from the
//! loader's (seed, epoch, position) stream, so a batch is the same whatever the threads do and
//! wherever a run resumes.

pub mod dali;
pub mod photometric;
pub mod resize;

use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use photometric::Adjust;
use resize::Interpolation;

/// Probabilities of the augmentations (0: off): AdaFace's three, then arcface_torch's four.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Augmentations {
    pub crop: f64,
    pub low_res: f64,
    pub photometric: f64,
    pub resize: f64,
    pub blur: f64,
    pub hsv: f64,
    pub gray: f64,
}

/// What was drawn for one image, applied in this order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Drawn {
    /// (top, left, height, width) of the box kept.
    pub crop: Option<[usize; 4]>,
    /// The small side, and the interpolations down and up.
    pub low_res: Option<(usize, Interpolation, Interpolation)>,
    /// The adjustments in the order applied.
    pub photometric: Option<Vec<Adjust>>,
    /// arcface_torch's random resize: the size asked of DALI's resize (56 to 89).
    pub resize: Option<f32>,
    /// arcface_torch's Gaussian blur: the window's side (3 or 5).
    pub blur: Option<usize>,
    /// arcface_torch's hue rotation (degrees) and saturation factor.
    pub hsv: Option<(f32, f32)>,
    /// arcface_torch's gray op, which every image passes when it is on: greyscale (true) or
    /// DALI's saturation-1 matrices (false).
    pub gray: Option<bool>,
}

impl Augmentations {
    pub fn is_off(&self) -> bool {
        *self == Augmentations::default()
    }

    /// The ones on with their probabilities, by whose they are, in the order applied
    /// ("none" if none).
    pub fn describe(&self) -> String {
        let adaface = [
            ("crop", self.crop),
            ("low resolution", self.low_res),
            ("photometric", self.photometric),
        ];
        let arcface_torch = [
            ("resize", self.resize),
            ("blur", self.blur),
            ("hsv", self.hsv),
            ("gray", self.gray),
        ];
        let sets: [(&str, &[(&str, f64)]); 2] =
            [("AdaFace's", &adaface), ("arcface_torch's", &arcface_torch)];
        let on: Vec<String> = sets
            .iter()
            .filter_map(|(whose, set)| {
                let named: Vec<String> = set
                    .iter()
                    .filter(|(_, p)| *p > 0.0)
                    .map(|(name, p)| format!("{name} {p}"))
                    .collect();
                (!named.is_empty()).then(|| format!("{whose} {}", named.join(", ")))
            })
            .collect();
        if on.is_empty() {
            return "none".into();
        }
        on.join("; ")
    }

    /// One image's draws for a `side`-pixel square, as augmenter.py's `augment` makes them.
    pub fn draw(&self, side: usize, rng: &mut impl Rng) -> Drawn {
        let mut drawn = Drawn::default();
        if rng.random::<f64>() < self.crop {
            drawn.crop = Some(random_resized_crop(side, rng));
        }
        if rng.random::<f64>() < self.low_res {
            let ratio = rng.random_range(0.2..1.0);
            let small = ((ratio * side as f64) as usize).max(1);
            let mut pick = || Interpolation::ALL[rng.random_range(0..Interpolation::ALL.len())];
            drawn.low_res = Some((small, pick(), pick()));
        }
        if rng.random::<f64>() < self.photometric {
            // ColorJitter.get_params: randperm(4) (hue, the fourth, is off) and each factor.
            let mut order = [0, 1, 2];
            order.shuffle(rng);
            let factors: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.5..1.5));
            let adjust = order.map(|k| match k {
                0 => Adjust::Brightness(factors[0]),
                1 => Adjust::Contrast(factors[1]),
                _ => Adjust::Saturation(factors[2]),
            });
            drawn.photometric = Some(adjust.to_vec());
        }
        if rng.random::<f64>() < self.resize {
            drawn.resize = Some(rng.random_range(dali::RESIZE_RANGE));
        }
        if rng.random::<f64>() < self.blur {
            // fn.random.uniform(range=(1, 2), dtype=INT32) rounds a draw from [1, 2).
            let w = rng.random_range(1.0f32..2.0).round() as usize;
            drawn.blur = Some(2 * w + 1);
        }
        if rng.random::<f64>() < self.hsv {
            let hue = rng.random_range(dali::HUE_RANGE);
            drawn.hsv = Some((hue, rng.random_range(dali::SATURATION_RANGE)));
        }
        if self.gray > 0.0 {
            drawn.gray = Some(rng.random::<f64>() < self.gray);
        }
        drawn
    }
}

impl Drawn {
    pub fn is_empty(&self) -> bool {
        *self == Drawn::default()
    }

    /// Applies the draws to `rgb`, a `side`-pixel square of interleaved RGB.
    pub fn apply(&self, rgb: &mut [u8], side: usize) {
        if let Some([top, left, height, width]) = self.crop {
            for y in 0..side {
                for x in 0..side {
                    let inside =
                        (top..top + height).contains(&y) && (left..left + width).contains(&x);
                    if !inside {
                        rgb[(y * side + x) * 3..][..3].fill(0);
                    }
                }
            }
        }
        if let Some((small, down, up)) = self.low_res {
            let reduced = resize::resize(rgb, side, small, down);
            rgb.copy_from_slice(&resize::resize(&reduced, small, side, up));
        }
        for &adjust in self.photometric.iter().flatten() {
            photometric::apply(rgb, adjust);
        }
        if let Some(size) = self.resize {
            dali::resize_down_and_up(rgb, side, size);
        }
        if let Some(window) = self.blur {
            dali::blur(rgb, side, window);
        }
        if let Some((hue, saturation)) = self.hsv {
            dali::hsv(rgb, hue, saturation);
        }
        if let Some(gray) = self.gray {
            dali::hsv(rgb, 0.0, if gray { 0.0 } else { 1.0 });
        }
    }
}

/// torchvision's RandomResizedCrop.get_params on a `side` square: up to ten tries of an area
/// share uniform in [0.2, 1) and a log-uniform aspect ratio in [3/4, 4/3], the sides rounded
/// half to even (Python's round), the corner uniform; else the whole image (its fallback for a
/// square).
fn random_resized_crop(side: usize, rng: &mut impl Rng) -> [usize; 4] {
    let area = (side * side) as f64;
    let (lo, hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * rng.random_range(0.2..1.0);
        let aspect = rng.random_range(lo..hi).exp();
        let w = (target * aspect).sqrt().round_ties_even() as usize;
        let h = (target / aspect).sqrt().round_ties_even() as usize;
        if (1..=side).contains(&w) && (1..=side).contains(&h) {
            let top = rng.random_range(0..=side - h);
            let left = rng.random_range(0..=side - w);
            return [top, left, h, w];
        }
    }
    [0, 0, side, side]
}

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

/// Probabilities of the augmentations (0: off): AdaFace's three, then arcface_torch's four;
/// and the ranges they draw from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Augmentations {
    pub crop: f64,
    pub low_res: f64,
    pub photometric: f64,
    pub resize: f64,
    pub blur: f64,
    pub hsv: f64,
    pub gray: f64,
    pub ranges: Ranges,
}

/// The ranges [low, high) the augmentations draw from: by default the recipes'.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ranges {
    /// RandomResizedCrop's share of the area (AdaFace: 0.2–1).
    pub crop_scale: [f64; 2],
    /// Low resolution's side ratio r, the small side int(r·112) (AdaFace: 0.2–1).
    pub low_res: [f64; 2],
    /// ColorJitter's brightness, contrast and saturation factors (AdaFace: 0.5–1.5).
    pub photometric: [f64; 2],
    /// The size DALI's resize is asked for, in pixels (arcface_torch: 56–89).
    pub resize: [f64; 2],
    /// The blur's half-width draw, rounded: the window 2·w + 1 (arcface_torch: 1–2, so 3 or 5).
    pub blur: [f64; 2],
    /// hsv's hue turn in degrees (arcface_torch: 0–20).
    pub hue: [f64; 2],
    /// hsv's saturation factor (arcface_torch: 1–1.2).
    pub saturation: [f64; 2],
}

impl Default for Ranges {
    fn default() -> Ranges {
        Ranges {
            crop_scale: [0.2, 1.0],
            low_res: [0.2, 1.0],
            photometric: [0.5, 1.5],
            // dataset.py: int(112·0.5) to int(112·0.8).
            resize: [56.0, 89.0],
            blur: [1.0, 2.0],
            hue: [0.0, 20.0],
            saturation: [1.0, 1.2],
        }
    }
}

/// A draw uniform in [low, high).
fn uniform(rng: &mut impl Rng, [low, high]: [f64; 2]) -> f64 {
    rng.random_range(low..high)
}

/// A single-precision draw uniform in [low, high) (for the values the image ops take in f32).
fn uniform_f32(rng: &mut impl Rng, [low, high]: [f64; 2]) -> f32 {
    rng.random_range(low as f32..high as f32)
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
        [
            self.crop,
            self.low_res,
            self.photometric,
            self.resize,
            self.blur,
            self.hsv,
            self.gray,
        ]
        .iter()
        .all(|p| *p == 0.0)
    }

    /// The ones on with their probabilities, by whose they are, in the order applied
    /// ("none" if none).
    pub fn describe(&self) -> String {
        let (r, recipe) = (&self.ranges, Ranges::default());
        // Each with its ranges where they are not the recipe's.
        let ranged = |ranges: &[([f64; 2], [f64; 2])]| -> String {
            ranges
                .iter()
                .filter(|(given, default)| given != default)
                .map(|([low, high], _)| format!(" in [{low}, {high})"))
                .collect()
        };
        let adaface = [
            (
                "crop",
                self.crop,
                ranged(&[(r.crop_scale, recipe.crop_scale)]),
            ),
            (
                "low resolution",
                self.low_res,
                ranged(&[(r.low_res, recipe.low_res)]),
            ),
            (
                "photometric",
                self.photometric,
                ranged(&[(r.photometric, recipe.photometric)]),
            ),
        ];
        let arcface_torch = [
            ("resize", self.resize, ranged(&[(r.resize, recipe.resize)])),
            ("blur", self.blur, ranged(&[(r.blur, recipe.blur)])),
            (
                "hsv",
                self.hsv,
                ranged(&[(r.hue, recipe.hue), (r.saturation, recipe.saturation)]),
            ),
            ("gray", self.gray, String::new()),
        ];
        // (name, probability, its ranges where not the recipe's)
        type Named = (&'static str, f64, String);
        let sets: [(&str, &[Named]); 2] =
            [("AdaFace's", &adaface), ("arcface_torch's", &arcface_torch)];
        let on: Vec<String> = sets
            .iter()
            .filter_map(|(whose, set)| {
                let named: Vec<String> = set
                    .iter()
                    .filter(|(_, p, _)| *p > 0.0)
                    .map(|(name, p, range)| format!("{name} {p}{range}"))
                    .collect();
                (!named.is_empty()).then(|| format!("{whose} {}", named.join(", ")))
            })
            .collect();
        if on.is_empty() {
            return "none".into();
        }
        on.join("; ")
    }

    /// One image's draws for a `side`-pixel square, as augmenter.py's `augment` and
    /// dataset.py's `dali_data_iter` make them.
    pub fn draw(&self, side: usize, rng: &mut impl Rng) -> Drawn {
        let mut drawn = Drawn::default();
        if rng.random::<f64>() < self.crop {
            drawn.crop = Some(random_resized_crop(side, self.ranges.crop_scale, rng));
        }
        if rng.random::<f64>() < self.low_res {
            let ratio = uniform(rng, self.ranges.low_res);
            let small = ((ratio * side as f64) as usize).max(1);
            let mut pick = || Interpolation::ALL[rng.random_range(0..Interpolation::ALL.len())];
            drawn.low_res = Some((small, pick(), pick()));
        }
        if rng.random::<f64>() < self.photometric {
            // ColorJitter.get_params: randperm(4) (hue, the fourth, is off) and each factor.
            let mut order = [0, 1, 2];
            order.shuffle(rng);
            let factors: [f32; 3] =
                std::array::from_fn(|_| uniform_f32(rng, self.ranges.photometric));
            let adjust = order.map(|k| match k {
                0 => Adjust::Brightness(factors[0]),
                1 => Adjust::Contrast(factors[1]),
                _ => Adjust::Saturation(factors[2]),
            });
            drawn.photometric = Some(adjust.to_vec());
        }
        if rng.random::<f64>() < self.resize {
            drawn.resize = Some(uniform_f32(rng, self.ranges.resize));
        }
        if rng.random::<f64>() < self.blur {
            // fn.random.uniform(range=(1, 2), dtype=INT32) rounds a draw from [1, 2).
            let w = uniform_f32(rng, self.ranges.blur).round() as usize;
            drawn.blur = Some(2 * w + 1);
        }
        if rng.random::<f64>() < self.hsv {
            let hue = uniform_f32(rng, self.ranges.hue);
            drawn.hsv = Some((hue, uniform_f32(rng, self.ranges.saturation)));
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
/// share uniform in `scale` and a log-uniform aspect ratio in [3/4, 4/3], the sides rounded
/// half to even (Python's round), the corner uniform; else the whole image (its fallback for a
/// square).
fn random_resized_crop(side: usize, scale: [f64; 2], rng: &mut impl Rng) -> [usize; 4] {
    let area = (side * side) as f64;
    let (lo, hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * uniform(rng, scale);
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

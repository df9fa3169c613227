//! Synthetic face-like identities in insightface's formats, for demos and tests where no real
//! face set can be had.
//!
//! Each identity is a fixed drawing (face shape, skin, hair, eyes, brows, nose, mouth and a few
//! marks); every image of it varies pose (shift, rotation, scale), expression, lighting,
//! colour, blur, noise and partial occlusion, over a random background. Identity lives in
//! structure, not in global colour, so raw pixels verify poorly while a network can learn it.
//! Everything is drawn from counter-based seeds: the same seed gives the same bytes, and
//! images can be drawn in parallel in any order.

use std::path::Path;

use image::{Rgb, RgbImage};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::seed::rng as rng_for;
use rayon::prelude::*;

use super::bin::PairSet;
use super::image::{FACE_SIZE, encode_jpeg};
use super::irheader::IrHeader;
use super::property::Property;
use super::recordio::RecordWriter;

#[derive(Debug, Clone)]
pub struct SynthConfig {
    pub identities: usize,
    pub images_per_identity: usize,
    pub val_pairs: usize,
    /// Identities (not in training) the validation pairs are drawn from.
    pub val_identities: usize,
    pub seed: u64,
}

impl SynthConfig {
    pub fn new(identities: usize, images_per_identity: usize, val_pairs: usize, seed: u64) -> Self {
        SynthConfig {
            identities,
            images_per_identity,
            val_pairs,
            val_identities: (val_pairs / 10).clamp(20, 500),
            seed,
        }
    }
}

const TRAIN: u64 = 1;
const VAL: u64 = 2;
const PAIRS: u64 = 3;

type Colour = [f32; 3];

/// The fixed drawing of one identity, in face coordinates (the face centred, ±1 ≈ ±56 px).
struct Face {
    face: (f32, f32),
    skin: Colour,
    hair: Colour,
    hair_top: f32,
    hair_sides: f32,
    eye_dx: f32,
    eye_y: f32,
    eye_r: (f32, f32),
    iris: Colour,
    brow_lift: f32,
    brow_tilt: f32,
    brow_thick: f32,
    nose: (f32, f32),
    mouth_y: f32,
    mouth: (f32, f32),
    lips: Colour,
    marks: Vec<(f32, f32, f32, Colour)>,
}

fn colour(rng: &mut ChaCha8Rng, lo: f32, hi: f32) -> Colour {
    [
        rng.random_range(lo..hi),
        rng.random_range(lo..hi),
        rng.random_range(lo..hi),
    ]
}

impl Face {
    fn draw(rng: &mut ChaCha8Rng) -> Face {
        let tone = rng.random_range(0.0..1.0f32);
        let skin = [
            90.0 + 150.0 * tone,
            60.0 + 130.0 * tone,
            40.0 + 120.0 * tone,
        ];
        let marks = (0..rng.random_range(3..6))
            .map(|_| {
                (
                    rng.random_range(-0.5..0.5),
                    rng.random_range(-0.45..0.65),
                    rng.random_range(0.07..0.13),
                    colour(rng, 0.0, 255.0),
                )
            })
            .collect();
        Face {
            face: (rng.random_range(0.55..0.8), rng.random_range(0.75..0.95)),
            skin,
            hair: colour(rng, 10.0, 140.0),
            hair_top: rng.random_range(0.0..0.35),
            hair_sides: rng.random_range(0.0..0.25),
            eye_dx: rng.random_range(0.2..0.38),
            eye_y: rng.random_range(-0.3..-0.05),
            eye_r: (rng.random_range(0.08..0.15), rng.random_range(0.04..0.08)),
            iris: colour(rng, 20.0, 200.0),
            brow_lift: rng.random_range(0.1..0.2),
            brow_tilt: rng.random_range(-0.35..0.35),
            brow_thick: rng.random_range(0.02..0.06),
            nose: (rng.random_range(0.05..0.12), rng.random_range(0.12..0.32)),
            mouth_y: rng.random_range(0.38..0.6),
            mouth: (rng.random_range(0.14..0.38), rng.random_range(0.03..0.08)),
            lips: [
                rng.random_range(120.0..220.0),
                rng.random_range(30.0..110.0),
                rng.random_range(30.0..110.0),
            ],
            marks,
        }
    }
}

fn inside_ellipse(u: f32, v: f32, cu: f32, cv: f32, ru: f32, rv: f32) -> bool {
    let (a, b) = ((u - cu) / ru, (v - cv) / rv);
    a * a + b * b <= 1.0
}

/// Per-image variation of an identity's drawing.
struct Take {
    angle: f32,
    scale: f32,
    shift: (f32, f32),
    mouth_open: f32,
    eye_open: f32,
    background: Colour,
    gradient: (f32, f32, f32),
    gains: Colour,
    light: f32,
    blur: usize,
    noise: f32,
    occluder: Option<(f32, f32, f32, f32, Colour)>,
}

impl Take {
    fn draw(rng: &mut ChaCha8Rng) -> Take {
        let side = FACE_SIZE as f32;
        let occluder = rng.random_bool(0.2).then(|| {
            let (w, h) = (rng.random_range(14.0..36.0), rng.random_range(10.0..26.0));
            (
                rng.random_range(0.0..side - w),
                rng.random_range(0.0..side - h),
                w,
                h,
                colour(rng, 0.0, 255.0),
            )
        });
        Take {
            angle: rng.random_range(-0.12..0.12),
            scale: rng.random_range(0.94..1.06),
            shift: (rng.random_range(-4.0..4.0), rng.random_range(-4.0..4.0)),
            mouth_open: rng.random_range(0.6..1.7),
            eye_open: rng.random_range(0.4..1.2),
            background: colour(rng, 0.0, 255.0),
            gradient: (
                rng.random_range(-1.0..1.0),
                rng.random_range(-1.0..1.0),
                rng.random_range(0.0..0.2),
            ),
            gains: colour(rng, 0.9, 1.1),
            light: rng.random_range(0.8..1.15),
            blur: [0, 0, 1][rng.random_range(0..3)],
            noise: rng.random_range(0.0..6.0),
            occluder,
        }
    }
}

/// The colour of face point (u, v), or None outside the head.
fn shade(f: &Face, t: &Take, u: f32, v: f32) -> Option<Colour> {
    let (fw, fh) = f.face;
    let in_face = inside_ellipse(u, v, 0.0, 0.05, fw, fh);
    let in_hair = inside_ellipse(
        u,
        v,
        0.0,
        -0.05 - f.hair_top * 0.5,
        fw + f.hair_sides,
        fh + f.hair_top * 0.6,
    ) && (v < -0.35 || !in_face);
    if !in_face {
        return in_hair.then_some(f.hair);
    }
    if in_hair && v < -fh + 0.1 + f.hair_top {
        return Some(f.hair);
    }
    for &(mu, mv, r, c) in &f.marks {
        if inside_ellipse(u, v, mu, mv, r, r) {
            return Some(c);
        }
    }
    for side in [-1.0f32, 1.0] {
        let cu = side * f.eye_dx;
        let (ru, rv) = (f.eye_r.0, f.eye_r.1 * t.eye_open);
        if inside_ellipse(u, v, cu, f.eye_y, ru * 0.45, rv.max(0.02)) {
            return Some(f.iris);
        }
        if inside_ellipse(u, v, cu, f.eye_y, ru, rv.max(0.015)) {
            return Some([235.0, 235.0, 230.0]);
        }
        // A brow: a slanted bar above the eye.
        let du = u - cu;
        let brow_v = f.eye_y - f.brow_lift + side * f.brow_tilt * du;
        if du.abs() < ru * 1.2 && (v - brow_v).abs() < f.brow_thick {
            return Some(f.hair);
        }
    }
    let (nw, nl) = f.nose;
    let nose_top = f.eye_y + 0.05;
    if v > nose_top && v < nose_top + nl && u.abs() < nw * (v - nose_top) / nl {
        return Some(f.skin.map(|c| c * 0.7));
    }
    if inside_ellipse(u, v, 0.0, f.mouth_y, f.mouth.0, f.mouth.1 * t.mouth_open) {
        return Some(f.lips);
    }
    Some(f.skin)
}

/// Renders one image of `face` with variation `take`, plus noise from `rng`.
fn render(face: &Face, take: &Take, rng: &mut ChaCha8Rng) -> RgbImage {
    let n = FACE_SIZE as usize;
    let half = n as f32 / 2.0;
    let (sin, cos) = take.angle.sin_cos();
    let mut pixels = vec![[0f32; 3]; n * n];
    for y in 0..n {
        for x in 0..n {
            // Pixel → face coordinates: undo shift, rotation and scale.
            let (px, py) = (
                x as f32 - half - take.shift.0,
                y as f32 - half - take.shift.1,
            );
            let (u, v) = (
                (cos * px + sin * py) / (half * take.scale),
                (-sin * px + cos * py) / (half * take.scale),
            );
            let c = shade(face, take, u, v).unwrap_or(take.background);
            let (gx, gy, strength) = take.gradient;
            let light = take.light
                * (1.0 + strength * (gx * (x as f32 / half - 1.0) + gy * (y as f32 / half - 1.0)));
            pixels[y * n + x] = [0, 1, 2].map(|k| c[k] * take.gains[k] * light);
        }
    }
    if let Some((ox, oy, w, h, c)) = take.occluder {
        for y in (oy as usize)..((oy + h) as usize).min(n) {
            for x in (ox as usize)..((ox + w) as usize).min(n) {
                pixels[y * n + x] = c;
            }
        }
    }
    let pixels = box_blur(&pixels, n, take.blur);
    let mut image = RgbImage::new(FACE_SIZE, FACE_SIZE);
    for (i, p) in pixels.iter().enumerate() {
        let noisy = p.map(|c| (c + take.noise * gaussian(rng)).round().clamp(0.0, 255.0) as u8);
        image.put_pixel((i % n) as u32, (i / n) as u32, Rgb(noisy));
    }
    image
}

fn box_blur(pixels: &[[f32; 3]], n: usize, radius: usize) -> Vec<[f32; 3]> {
    if radius == 0 {
        return pixels.to_vec();
    }
    let r = radius as isize;
    let at = |x: isize, y: isize| {
        pixels[(y.clamp(0, n as isize - 1) as usize) * n + x.clamp(0, n as isize - 1) as usize]
    };
    let count = ((2 * r + 1) * (2 * r + 1)) as f32;
    (0..n * n)
        .map(|i| {
            let (x, y) = ((i % n) as isize, (i / n) as isize);
            let mut sum = [0f32; 3];
            for dy in -r..=r {
                for dx in -r..=r {
                    let p = at(x + dx, y + dy);
                    (0..3).for_each(|k| sum[k] += p[k]);
                }
            }
            sum.map(|s| s / count)
        })
        .collect()
}

fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    // Box–Muller.
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// Image `index` of identity `identity` from the split `split` (TRAIN or VAL), as JPEG q95.
fn image_of(seed: u64, split: u64, identity: usize, index: usize) -> Vec<u8> {
    let face = Face::draw(&mut rng_for(seed, &[split, identity as u64]));
    let mut rng = rng_for(seed, &[split, identity as u64, 1 + index as u64]);
    let take = Take::draw(&mut rng);
    encode_jpeg(&render(&face, &take, &mut rng), 95)
}

/// The validation pairs: alternately same and different identity, from identities that the
/// training split never sees.
pub fn val_pairs(config: &SynthConfig) -> PairSet {
    let drawn: Vec<(Vec<u8>, Vec<u8>, bool)> = (0..config.val_pairs)
        .into_par_iter()
        .map(|i| {
            let mut rng = rng_for(config.seed, &[PAIRS, i as u64]);
            let ids = config.val_identities;
            let a = rng.random_range(0..ids);
            let same = i % 2 == 0;
            let b = if same {
                a
            } else {
                (a + rng.random_range(1..ids)) % ids
            };
            let (ia, ib) = (2 * i, 2 * i + 1);
            (
                image_of(config.seed, VAL, a, ia),
                image_of(config.seed, VAL, b, ib),
                same,
            )
        })
        .collect();
    let mut set = PairSet {
        images: Vec::new(),
        issame: Vec::new(),
    };
    for (a, b, same) in drawn {
        set.images.push(a);
        set.images.push(b);
        set.issame.push(same);
    }
    set
}

/// Writes train.rec/.idx/property (insightface's layout) and synth_val.bin under `out`.
pub fn generate(
    out: &Path,
    config: &SynthConfig,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.identities >= 2 && config.images_per_identity >= 1,
        "need at least 2 identities with 1 image each"
    );
    anyhow::ensure!(
        config.val_identities >= 2,
        "need at least 2 validation identities"
    );
    std::fs::create_dir_all(out)?;
    let (n, m) = (config.identities, config.images_per_identity);
    progress.set_length((n * m + config.val_pairs) as u64);
    let mut writer = RecordWriter::create(&out.join("train.rec"), &out.join("train.idx"))?;
    let first_identity_key = 1 + (n * m) as u64;
    let end_key = first_identity_key + n as u64;
    writer.write(
        0,
        &IrHeader::with_labels(vec![first_identity_key as f32, end_key as f32], 0).pack(&[]),
    )?;
    // A chunk of identities at a time: parallel drawing, sequential writing, bounded memory.
    for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
        let images: Vec<Vec<Vec<u8>>> = chunk
            .par_iter()
            .map(|&id| {
                let imgs = (0..m)
                    .map(|j| image_of(config.seed, TRAIN, id, j))
                    .collect();
                progress.inc(m as u64);
                imgs
            })
            .collect();
        for (&id, imgs) in chunk.iter().zip(images) {
            for (j, jpeg) in imgs.iter().enumerate() {
                let key = 1 + (id * m + j) as u64;
                writer.write(key, &IrHeader::scalar(id as f32, key).pack(jpeg))?;
            }
        }
    }
    for id in 0..n {
        let key = first_identity_key + id as u64;
        let range = vec![(1 + id * m) as f32, (1 + (id + 1) * m) as f32];
        writer.write(key, &IrHeader::with_labels(range, key).pack(&[]))?;
    }
    writer.finish()?;
    let property = Property {
        num_classes: n,
        height: FACE_SIZE as usize,
        width: FACE_SIZE as usize,
    };
    property.write(out)?;
    let pairs = val_pairs(config);
    progress.inc(config.val_pairs as u64);
    pairs.write(&out.join("synth_val.bin"))?;
    Ok(())
}

//! A picture of what training sees (`arcface inspect DATA --augment PRESET --grid out.png`):
//! one row per image, spread over the dataset, the original beside `draws` versions as the
//! loader makes them (the augmentations, then the flip), each labelled: the original with its
//! identity and record key, each draw with what was applied.

use anyhow::{Context, Result};
use image::{Rgb, RgbImage};
use rand::Rng;

use super::augment::photometric::Adjust;
use super::augment::{Augmentations, Drawn};
use super::dataset::RecDataset;
use super::image::decode_face;
use crate::picture::{GLYPH, text};

const SIDE: u32 = 112;
/// A cell: the face and up to `LINES` lines of label under it, 21 characters wide.
const CELL_W: u32 = 21 * GLYPH;
const LINES: u32 = 6;
const CELL_H: u32 = SIDE + 4 + LINES * (GLYPH + 1);
/// Seed path of the grid's draws.
const GRID: u64 = 9;

/// The grid of `rows` images of `dataset` with `draws` draws each from `augment` (seeded).
pub fn augmentation_grid(
    dataset: &RecDataset,
    augment: Augmentations,
    rows: usize,
    draws: usize,
    seed: u64,
) -> Result<RgbImage> {
    let rows = rows.min(dataset.len()).max(1);
    let mut grid = RgbImage::from_pixel(
        CELL_W * (draws as u32 + 1),
        CELL_H * rows as u32,
        Rgb([255, 255, 255]),
    );
    for row in 0..rows {
        let index = row * dataset.len() / rows;
        let sample = dataset.sample(index)?;
        let face = decode_face(&sample.image)
            .with_context(|| format!("record {} of {}", sample.key, dataset.dir().display()))?;
        let y = row as u32 * CELL_H;
        let label = [
            "original".to_string(),
            format!("identity {}", sample.label),
            format!("record {}", sample.key),
        ];
        put(&mut grid, 0, y, &face, &label);
        for d in 0..draws {
            let mut rng = crate::seed::rng(seed, &[GRID, index as u64, d as u64]);
            let drawn = augment.draw(SIDE as usize, &mut rng);
            let flip = rng.random_bool(0.5);
            let mut seen = face.clone();
            drawn.apply(&mut seen, SIDE as usize);
            if flip {
                image::imageops::flip_horizontal_in_place(&mut seen);
            }
            let mut label = lines(&drawn);
            if flip {
                label.push("flip".into());
            }
            if label.is_empty() {
                label.push("as it is".into());
            }
            put(&mut grid, (d as u32 + 1) * CELL_W, y, &seen, &label);
        }
    }
    Ok(grid)
}

/// `face` at (`x`, `y`) with `label` under it, a line each (the lines past `LINES` dropped).
fn put(grid: &mut RgbImage, x: u32, y: u32, face: &RgbImage, label: &[String]) {
    image::imageops::replace(grid, face, x as i64, y as i64);
    for (k, line) in label.iter().take(LINES as usize).enumerate() {
        let ly = y + SIDE + 4 + k as u32 * (GLYPH + 1);
        text(grid, x, ly, line, [0, 0, 0]);
    }
}

/// What `drawn` applied, a short line each (21 characters fit a cell).
fn lines(drawn: &Drawn) -> Vec<String> {
    let mut out = Vec::new();
    if let Some([top, left, h, w]) = drawn.crop {
        out.push(format!("crop {w}x{h}+{left}+{top}"));
    }
    if let Some((small, down, up)) = drawn.low_res {
        out.push(format!("low-res {small}px"));
        out.push(format!(" {}/{}", down.name(), up.name()));
    }
    for adjust in drawn.photometric.iter().flatten() {
        out.push(match adjust {
            Adjust::Brightness(f) => format!("brightness {f:.2}"),
            Adjust::Contrast(f) => format!("contrast {f:.2}"),
            Adjust::Saturation(f) => format!("saturation {f:.2}"),
        });
    }
    if let Some(size) = drawn.resize {
        out.push(format!("resize {size:.1}px"));
    }
    if let Some(window) = drawn.blur {
        out.push(format!("blur {window}x{window}"));
    }
    if let Some((hue, saturation)) = drawn.hsv {
        out.push(format!("hue {hue:.1} sat {saturation:.2}"));
    }
    if drawn.gray == Some(true) {
        out.push("gray".into());
    }
    out
}

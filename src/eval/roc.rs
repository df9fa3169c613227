//! ROC curves as a PNG: TPR against FPR (log scale, 1e-4 … 1), one colour per target, with a
//! legend. Drawn with `image` and our 8×8 bitmap text (`picture`): plotting crates need a font
//! file for any text, which a fresh machine does not have.

use image::{Rgb, RgbImage};

use super::embed::TargetResult;
use crate::picture::text;

const W: u32 = 720;
const H: u32 = 540;
const LEFT: u32 = 70;
const RIGHT: u32 = 20;
const TOP: u32 = 30;
const BOTTOM: u32 = 60;
/// Decades of FPR on the x axis of the .bin sets' picture (1e-4 … 1).
const FPR_DECADES: f64 = 4.0;
const COLOURS: [[u8; 3]; 6] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
];

fn line(img: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), colour: [u8; 3]) {
    let steps = ((x1 - x0).abs().max((y1 - y0).abs()) * 2.0).ceil().max(1.0) as usize;
    for s in 0..=steps {
        let t = s as f64 / steps as f64;
        let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
        for (dx, dy) in [(0.0, 0.0), (0.5, 0.0), (0.0, 0.5)] {
            let (px, py) = ((x + dx) as u32, (y + dy) as u32);
            if px < W && py < H {
                img.put_pixel(px, py, Rgb(colour));
            }
        }
    }
}

/// Plot coordinates of (fpr, tpr) with `decades` of FPR on the x axis.
fn to_px(fpr: f64, tpr: f64, decades: f64) -> (f64, f64) {
    let (pw, ph) = ((W - LEFT - RIGHT) as f64, (H - TOP - BOTTOM) as f64);
    let x = (fpr.max(10f64.powf(-decades)).log10() + decades) / decades;
    (LEFT as f64 + x * pw, TOP as f64 + (1.0 - tpr) * ph)
}

/// One curve of a picture: its legend and its points.
pub struct Curve<'a> {
    pub label: String,
    pub fpr: &'a [f64],
    pub tpr: &'a [f64],
}

/// The ROC picture of `results`.
pub fn plot(results: &[TargetResult]) -> RgbImage {
    let curves: Vec<Curve> = results
        .iter()
        .map(|r| Curve {
            label: format!("{} acc {:.4}", r.name, r.accuracy),
            fpr: &r.verification.fpr,
            tpr: &r.verification.tpr,
        })
        .collect();
    plot_curves(&curves, FPR_DECADES)
}

/// A picture of `curves`, FPR on a log axis from 10^−`decades` to 1.
pub fn plot_curves(curves: &[Curve], decades: f64) -> RgbImage {
    let to_px = |fpr, tpr| to_px(fpr, tpr, decades);
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let grey = [200, 200, 200];
    let black = [0, 0, 0];
    for d in 0..=decades as i32 {
        let fpr = 10f64.powi(d - decades as i32);
        let (x, _) = to_px(fpr, 0.0);
        line(&mut img, (x, TOP as f64), (x, (H - BOTTOM) as f64), grey);
        text(
            &mut img,
            x as u32 - 16,
            H - BOTTOM + 8,
            &format!("1e{}", d - decades as i32),
            black,
        );
    }
    for t in 0..=5 {
        let tpr = t as f64 / 5.0;
        let (_, y) = to_px(1.0, tpr);
        line(&mut img, (LEFT as f64, y), ((W - RIGHT) as f64, y), grey);
        text(&mut img, 30, y as u32 - 4, &format!("{tpr:.1}"), black);
    }
    line(
        &mut img,
        (LEFT as f64, TOP as f64),
        (LEFT as f64, (H - BOTTOM) as f64),
        black,
    );
    line(
        &mut img,
        (LEFT as f64, (H - BOTTOM) as f64),
        ((W - RIGHT) as f64, (H - BOTTOM) as f64),
        black,
    );
    text(
        &mut img,
        W / 2 - 100,
        H - 24,
        "false positive rate (log)",
        black,
    );
    text(&mut img, 4, 12, "TPR", black);
    for (k, r) in curves.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let mut points: Vec<(f64, f64)> =
            r.fpr.iter().copied().zip(r.tpr.iter().copied()).collect();
        points.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        for pair in points.windows(2) {
            line(
                &mut img,
                to_px(pair[0].0, pair[0].1),
                to_px(pair[1].0, pair[1].1),
                colour,
            );
        }
        let label = &r.label;
        let y = H - BOTTOM - 20 - 14 * (curves.len() - k) as u32;
        line(
            &mut img,
            ((W - 260) as f64, y as f64 + 4.0),
            ((W - 235) as f64, y as f64 + 4.0),
            colour,
        );
        text(&mut img, W - 228, y, label, black);
    }
    img
}

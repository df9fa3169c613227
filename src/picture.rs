//! Text on the pictures we write (ROC curves, the augmentation grid): an 8×8 bitmap font drawn
//! with `image`, since plotting and font crates need a font file, which a fresh machine lacks.

use image::{Rgb, RgbImage};

/// Pixels a character takes, across and down.
pub const GLYPH: u32 = 8;

/// `s` drawn at (`x`, `y`) (its top left) in `colour`, clipped to the image; characters past
/// ASCII as the font's last.
pub fn text(img: &mut RgbImage, x: u32, y: u32, s: &str, colour: [u8; 3]) {
    let (w, h) = img.dimensions();
    for (i, ch) in s.chars().enumerate() {
        let glyph = font8x8::legacy::BASIC_LEGACY[(ch as usize).min(127)];
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..GLYPH {
                if bits >> col & 1 == 1 {
                    let (px, py) = (x + i as u32 * GLYPH + col, y + row as u32);
                    if px < w && py < h {
                        img.put_pixel(px, py, Rgb(colour));
                    }
                }
            }
        }
    }
}

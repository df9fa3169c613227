//! Image decoding and encoding shared by the loader, the packers and the evaluators.

use image::codecs::jpeg::JpegEncoder;
use image::imageops::FilterType;
use image::{ImageFormat, RgbImage};

/// Side of the aligned face crops everything here works on.
pub const FACE_SIZE: u32 = 112;

/// Why bytes gave no image. The caller adds which file or record they came from.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not an image ({len} bytes starting {head})")]
    NotAnImage { len: usize, head: String },
    #[error("cannot decode {format:?} image: {source}")]
    Damaged {
        format: ImageFormat,
        source: image::ImageError,
    },
}

/// Decodes JPEG or PNG bytes to RGB; errors say what the bytes are not.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, DecodeError> {
    let format = image::guess_format(bytes).map_err(|_| {
        let head: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
        DecodeError::NotAnImage {
            len: bytes.len(),
            head: head.join(" "),
        }
    })?;
    let decoded = image::load_from_memory_with_format(bytes, format)
        .map_err(|source| DecodeError::Damaged { format, source })?;
    Ok(decoded.into_rgb8())
}

/// Decodes a photo for face detection. JPEGs go through libjpeg-turbo's decoder (mozjpeg's C
/// code), the decoder of OpenCV and Pillow, so detection sees the pixels insightface's pipeline
/// sees: the `image` crate's decoder differs by up to a few levels on some pixels, enough to move
/// a face scored near a threshold. The `image` crate decodes first, so a bad file gets its clear
/// error; other formats and colour spaces libjpeg cannot give as RGB keep its result.
pub fn decode_photo(bytes: &[u8]) -> Result<RgbImage, DecodeError> {
    let checked = decode_rgb(bytes)?;
    if image::guess_format(bytes).ok() == Some(ImageFormat::Jpeg)
        && let Some(exact) = libjpeg_rgb(bytes)
        && exact.dimensions() == checked.dimensions()
    {
        return Ok(exact);
    }
    Ok(checked)
}

/// libjpeg reports errors by unwinding out of its C code (mozjpeg's contract): caught here.
fn libjpeg_rgb(bytes: &[u8]) -> Option<RgbImage> {
    use mozjpeg::ColorSpace;
    std::panic::catch_unwind(|| {
        let decompress = mozjpeg::Decompress::new_mem(bytes).ok()?;
        if !matches!(
            decompress.color_space(),
            ColorSpace::JCS_YCbCr | ColorSpace::JCS_GRAYSCALE | ColorSpace::JCS_RGB
        ) {
            return None;
        }
        let mut rgb = decompress.rgb().ok()?;
        let (w, h) = (rgb.width() as u32, rgb.height() as u32);
        let pixels: Vec<u8> = rgb.read_scanlines::<u8>().ok()?;
        rgb.finish().ok()?;
        RgbImage::from_raw(w, h, pixels)
    })
    .ok()
    .flatten()
}

/// Decodes and brings to 112×112 (bilinear resize only when the size differs), with the
/// `image` crate's decoder: what training batches use, it being the faster one here (`arcface
/// bench data` measures both). Validation and evaluation use [`decode_face_exact`].
pub fn decode_face(bytes: &[u8]) -> Result<RgbImage, DecodeError> {
    let rgb = decode_rgb(bytes)?;
    Ok(to_face_size(rgb))
}

/// As [`decode_face`], with JPEGs decoded by libjpeg-turbo's decoder ([`decode_photo`]): the
/// pixels insightface's verification.py gets from mxnet's imdecode (or PIL, OpenCV), so
/// distances near a threshold fall on the same side and `eval` gives its number to the pair.
pub fn decode_face_exact(bytes: &[u8]) -> Result<RgbImage, DecodeError> {
    Ok(to_face_size(decode_photo(bytes)?))
}

pub fn to_face_size(rgb: RgbImage) -> RgbImage {
    if rgb.dimensions() == (FACE_SIZE, FACE_SIZE) {
        rgb
    } else {
        image::imageops::resize(&rgb, FACE_SIZE, FACE_SIZE, FilterType::Triangle)
    }
}

/// JPEG at `quality` (insightface packs at 95).
pub fn encode_jpeg(rgb: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * 1024);
    JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(rgb)
        .expect("encoding an in-memory RGB image to a Vec cannot fail");
    out
}

/// Writes a 112×112 RGB image into `out` as 3 planes (CHW), mirrored left–right if `flip`:
/// the layout the model takes, from the layout images decode to.
pub fn to_chw<T: From<u8> + Copy>(rgb: &RgbImage, flip: bool, out: &mut [T]) {
    let side = FACE_SIZE as usize;
    let plane = side * side;
    let raw = rgb.as_raw();
    assert!(
        raw.len() == 3 * plane && out.len() == 3 * plane,
        "to_chw takes 112×112 RGB"
    );
    for y in 0..side {
        for x in 0..side {
            let sx = if flip { side - 1 - x } else { x };
            let src = (y * side + sx) * 3;
            let dst = y * side + x;
            out[dst] = T::from(raw[src]);
            out[plane + dst] = T::from(raw[src + 1]);
            out[2 * plane + dst] = T::from(raw[src + 2]);
        }
    }
}

/// Is this a format we decode (by content, not by name)?
pub fn is_image(bytes: &[u8]) -> bool {
    matches!(
        image::guess_format(bytes),
        Ok(ImageFormat::Jpeg | ImageFormat::Png)
    )
}

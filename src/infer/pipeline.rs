//! Photo → faces → embeddings: detection (or none, for aligned crops), alignment, embedding
//! with the optional mirror image added, L2 normalisation.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use image::RgbImage;
use serde::Serialize;

use super::align::{TEMPLATE, align_face};
use super::mtcnn::Mtcnn;
use crate::data::image::{decode_photo, to_chw, to_face_size};
use crate::embedder::{Embedder, IMAGE_VALUES};

#[derive(Debug, Clone, Serialize)]
pub struct FaceResult {
    /// x1, y1, x2, y2 in pixels.
    pub bbox: [f32; 4],
    pub score: f32,
    /// Left eye, right eye, nose, left and right mouth corner.
    pub landmarks: [[f32; 2]; 5],
    /// L2-normalised.
    pub embedding: Vec<f32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageResult {
    pub path: PathBuf,
    /// Largest first.
    pub faces: Vec<FaceResult>,
}

pub struct Pipeline {
    /// None: inputs are aligned 112×112 crops.
    pub detector: Option<Mtcnn>,
    pub embedder: Embedder,
    /// Add the embedding of the mirrored crop, as insightface's validation does.
    pub flip: bool,
}

/// Reads and decodes an image file; the error names the file.
pub fn read_image(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    decode_photo(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

impl Pipeline {
    /// Every face of the image at `path`, largest first; aligned crops are saved into
    /// `save_crops` as `<stem>_<i>.png` when given.
    pub fn run(&self, path: &Path, save_crops: Option<&Path>) -> Result<ImageResult> {
        let image = read_image(path)?;
        let (faces, crops) = self
            .faces(&image)
            .with_context(|| format!("{}", path.display()))?;
        if let Some(dir) = save_crops {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let stem = path
                .file_stem()
                .map_or("image".into(), |s| s.to_string_lossy().into_owned());
            for (i, crop) in crops.iter().enumerate() {
                let out = dir.join(format!("{stem}_{i}.png"));
                crop.save(&out)
                    .with_context(|| format!("writing {}", out.display()))?;
            }
        }
        let embeddings = self.embed(&crops)?;
        Ok(ImageResult {
            path: path.to_path_buf(),
            faces: faces
                .into_iter()
                .zip(embeddings)
                .map(|((bbox, score, landmarks), embedding)| FaceResult {
                    bbox,
                    score,
                    landmarks,
                    embedding,
                })
                .collect(),
        })
    }

    /// (bbox, score, landmarks) and the aligned crop of every face, largest first.
    #[allow(clippy::type_complexity)]
    pub fn faces(
        &self,
        image: &RgbImage,
    ) -> Result<(Vec<([f32; 4], f32, [[f32; 2]; 5])>, Vec<RgbImage>)> {
        let Some(detector) = &self.detector else {
            // An aligned crop: the whole image is the face, its landmarks the template's.
            let (w, h) = (image.width() as f32, image.height() as f32);
            let landmarks = TEMPLATE.map(|[x, y]| [x * w / 112.0, y * h / 112.0]);
            return Ok((
                vec![([0.0, 0.0, w, h], 1.0, landmarks)],
                vec![to_face_size(image.clone())],
            ));
        };
        let mut found = detector.detect(image)?;
        found.sort_by(|a, b| b.area().total_cmp(&a.area()));
        let mut faces = Vec::new();
        let mut crops = Vec::new();
        for face in found {
            // Five coincident landmarks cannot be aligned; such a detection is not a face.
            if let Some(crop) = align_face(image, &face.landmarks) {
                faces.push((face.bbox, face.score, face.landmarks));
                crops.push(crop);
            }
        }
        Ok((faces, crops))
    }

    /// L2-normalised embeddings of aligned 112×112 crops (plus their mirror images with `flip`).
    pub fn embed(&self, crops: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
        if crops.is_empty() {
            return Ok(Vec::new());
        }
        let e = self.embedder.embedding_size();
        let mut sums = vec![0f32; crops.len() * e];
        for flip in [false, true] {
            if flip && !self.flip {
                break;
            }
            let mut data = vec![0f32; crops.len() * IMAGE_VALUES];
            for (out, crop) in data.chunks_mut(IMAGE_VALUES).zip(crops) {
                to_chw(crop, flip, out);
            }
            for (s, v) in sums.iter_mut().zip(self.embedder.embed(&data)?) {
                *s += v;
            }
        }
        Ok(sums
            .chunks(e)
            .map(|v| {
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                v.iter().map(|x| x / norm).collect()
            })
            .collect())
    }
}

/// Cosine similarity of two L2-normalised embeddings.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

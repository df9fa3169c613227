//! What a run reads: the training set (generated first when the config asks for synthetic
//! identities and the folder is absent) and the validation targets.

use std::sync::Arc;

use anyhow::{Context, Result, bail};

use crate::config::Config;
use crate::data::bin::PairSet;
use crate::data::dataset::RecDataset;
use crate::data::synth::{SynthConfig, generate};

/// The training set of `config.rec` and the number of classes of the head.
pub fn open_dataset(config: &Config) -> Result<(Arc<RecDataset>, usize)> {
    if !config.rec.exists() {
        match &config.synthetic {
            Some(spec) => {
                println!(
                    "{} does not exist: generating synthetic identities there",
                    config.rec.display()
                );
                let synth = SynthConfig::new(
                    spec.identities,
                    spec.images_per_identity,
                    spec.val_pairs,
                    spec.seed,
                );
                // Made beside it and renamed when whole, so that an interrupted or failed
                // generation (Ctrl-C, a full disk) never leaves a half-made `rec` that the
                // next run would take for the data; its leftover is replaced.
                let Some(partial) = crate::fs::sibling(&config.rec, ".partial") else {
                    bail!("`rec` = {} does not name a folder", config.rec.display());
                };
                if partial.exists() {
                    std::fs::remove_dir_all(&partial).with_context(|| {
                        format!("removing an unfinished generation {}", partial.display())
                    })?;
                }
                let bar = crate::progress::bar(0, "synth");
                generate(&partial, &synth, &bar)?;
                bar.finish_and_clear();
                std::fs::rename(&partial, &config.rec).with_context(|| {
                    format!("renaming {} to {}", partial.display(), config.rec.display())
                })?;
            }
            None => bail!(
                "data folder {} does not exist (set `rec` in the config)",
                config.rec.display()
            ),
        }
    }
    let dataset = Arc::new(RecDataset::open(&config.rec)?);
    let num_classes = match config.num_classes {
        Some(n) if n < dataset.num_classes() => {
            bail!(
                "config `num_classes` = {n} but {} has {} identities",
                config.rec.display(),
                dataset.num_classes()
            )
        }
        Some(n) => n,
        None => dataset.num_classes(),
    };
    Ok((dataset, num_classes))
}

/// The validation sets of `val_targets` present in `dir` (missing ones are reported and skipped).
pub fn load_targets(config: &Config, log: &mut Vec<String>) -> Result<Vec<(String, PairSet)>> {
    let mut targets = Vec::new();
    for name in &config.val_targets {
        let path = config.rec.join(format!("{name}.bin"));
        if path.exists() {
            targets.push((name.clone(), PairSet::read(&path)?));
        } else {
            log.push(format!(
                "validation target {name}: {} not found, skipped",
                path.display()
            ));
        }
    }
    Ok(targets)
}

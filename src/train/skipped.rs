//! Training records that fail to decode mid-run (a truncated JPEG in a 5M-image .rec): the
//! loader puts another image of the same batch in their place (`data::loader`), and here the
//! run counts them, names each once, and stops past `max_skipped_records`. Every rank keeps the
//! same set of keys: the ranks gather the keys of a step that skipped any (rare, so the extra
//! collective costs nothing in a healthy run), and a checkpoint stores them.

use anyhow::{Result, bail};

use super::monitor::Monitor;
use super::state::State;
use crate::config::Config;
use crate::data::loader::Batch;
use crate::distributed::Group;

/// The records this step's batches skipped, on every rank: new ones named (this rank's with
/// the decoder's message; rank 0's log names the others' keys too), then the limit checked.
pub fn note(
    state: &mut State,
    batch: &Batch,
    config: &Config,
    group: &Group,
    mut monitor: Option<&mut Monitor>,
) -> Result<()> {
    let limit = config.max_skipped_records;
    for (key, message) in &batch.skipped {
        if !state.skipped.contains(key) {
            let line = format!("skipped a record that does not decode: {message}");
            match monitor.as_deref_mut() {
                Some(m) => m.line(&line),
                None => eprintln!("rank {}: {line}", group.rank()),
            }
        }
    }
    let mine: Vec<i64> = batch.skipped.iter().map(|(k, _)| *k as i64).collect();
    let all = group.all_gather_lists(&mine, "gathering the skipped records' keys")?;
    let mut new = Vec::new();
    for (rank, keys) in all.into_iter().enumerate() {
        for key in keys {
            if state.skipped.insert(key as u64) {
                new.push((rank, key));
            }
        }
    }
    if let Some(m) = monitor {
        for (rank, key) in new.iter().filter(|(r, _)| *r != 0) {
            m.line(&format!(
                "skipped record key {key} on rank {rank}, which does not decode (rank {rank}'s \
                 output says why)"
            ));
        }
        if !new.is_empty() {
            m.line(&format!(
                "{} record(s) skipped so far (at most max_skipped_records = {limit})",
                state.skipped.len()
            ));
        }
    }
    if state.skipped.len() > limit {
        let last: Vec<String> = new.iter().map(|(_, k)| k.to_string()).collect();
        bail!(
            "{} records of {} failed to decode, more than max_skipped_records = {limit}: the \
             last ones keys {}. `arcface inspect {} --verify` lists every one; repack the data \
             or raise the limit",
            state.skipped.len(),
            config.rec.join("train.rec").display(),
            last.join(", "),
            config.rec.display()
        );
    }
    Ok(())
}

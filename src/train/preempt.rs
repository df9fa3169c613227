//! Preemption in the loop: after every step the ranks agree on whether a stop signal reached
//! any of them (`crate::signals`), so that all stop at the same step, write one checkpoint
//! together (the loop's own save) and exit with "resume me"; the same agreement carries the
//! count of records the step skipped (`skipped`).

use anyhow::Result;

use super::monitor::Monitor;
use super::skipped;
use super::state::State;
use crate::checkpoint;
use crate::config::Config;
use crate::data::loader::Batch;
use crate::distributed::Group;

/// After every step the ranks agree on whether any was asked to stop (a signal to one rank
/// stops all at the same step) and learn the records this step skipped. A stop is what to say
/// of it.
pub(super) fn agree_after_step(
    state: &mut State,
    batch: &Batch,
    config: &Config,
    group: &Group,
    monitor: Option<&mut Monitor>,
) -> Result<Option<String>> {
    let signal = crate::signals::requested();
    let flags = [
        f64::from(u8::from(signal.is_some())),
        batch.skipped.len() as f64,
    ];
    let sums = group.sum(&flags, "agreeing on stop signals and skipped records")?;
    if sums[1] > 0.0 {
        skipped::note(state, batch, config, group, monitor)?;
    }
    Ok((sums[0] > 0.0).then(|| match signal {
        Some(s) => crate::signals::name(s),
        None => "a signal to another rank".into(),
    }))
}

/// The run stopped by `why` at the step just done, its checkpoint written (the loop skipped its
/// validation): said in the log; the error that makes `arcface` exit with "resume me".
pub(super) fn stopped(
    config: &Config,
    group: &mut Group,
    state: &State,
    monitor: Option<&mut Monitor>,
    why: &str,
) -> anyhow::Error {
    let path = checkpoint::step_path(&config.output, state.step);
    let whose = match group.is_main() {
        true => "",
        false => " in rank 0's output folder",
    };
    let said = format!(
        "stopped by {why} at step {} (epoch {}) with checkpoint {}{whose}: run the same command \
         with --resume auto to continue",
        state.step,
        state.cursor.epoch,
        path.display()
    );
    if let Some(m) = monitor {
        m.bar.finish_and_clear();
        m.line(&said);
        m.flush();
    }
    group.finish();
    crate::signals::Stopped(said).into()
}

//! TensorBoard scalars: `<output>/tensorboard/events.out.tfevents.*`, one record per scalar.
//!
//! Written here rather than by tensorboard-rs's `SummaryWriter`, which writes from a thread of
//! its own that panics on any I/O error (a full disk), after which the training thread panics
//! at its next scalar and again when the writer is dropped. The file format is still the
//! crate's: its `RecordWriter` frames each record (length, masked CRC-32C of both) and
//! tensorboard-proto's `Event` is the record; here every write returns its error, naming the
//! file.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use protobuf::Message;
use tensorboard_proto::event::{Event, SessionLog, SessionLog_SessionStatus};
use tensorboard_rs::record_writer::RecordWriter;

pub struct EventFile {
    path: PathBuf,
    records: RecordWriter<BufWriter<File>>,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |t| t.as_secs_f64())
}

impl EventFile {
    /// A new event file in `dir`, named as TensorBoard's own writers name theirs (it reads
    /// every file with `tfevents` in its name; the seconds and the process id keep runs apart).
    pub fn create(dir: &Path) -> Result<EventFile> {
        let name = format!(
            "events.out.tfevents.{:010}.arcface.{}.0",
            now() as u64,
            std::process::id()
        );
        EventFile::open(&dir.join(name))
    }

    /// An event file at `path`, begun with the version record every event file starts with.
    pub fn open(path: &Path) -> Result<EventFile> {
        let file = File::create(path).with_context(|| format!("{}", path.display()))?;
        let mut events = EventFile {
            path: path.to_path_buf(),
            records: RecordWriter::new(BufWriter::new(file)),
        };
        let mut version = Event::new();
        version.set_wall_time(now());
        version.set_file_version("brain.Event:2".to_string());
        events.write(&version)?;
        events.flush()?;
        Ok(events)
    }

    pub fn scalar(&mut self, tag: &str, value: f32, step: usize) -> Result<()> {
        let mut event = Event::new();
        event.set_wall_time(now());
        event.set_step(step as i64);
        event.set_summary(tensorboard_rs::summary::scalar(tag, value));
        self.write(&event)
    }

    /// A SessionLog START at `step`: TensorBoard then discards what earlier files of the folder
    /// logged at `step` and after (its `purge_orphaned_data`), so a run resumed from a
    /// checkpoint behind its last logged step shows each step once.
    pub fn start_at(&mut self, step: usize) -> Result<()> {
        let mut log = SessionLog::new();
        log.set_status(SessionLog_SessionStatus::START);
        let mut event = Event::new();
        event.set_wall_time(now());
        event.set_step(step as i64);
        event.set_session_log(log);
        self.write(&event)?;
        self.flush()
    }

    /// Writes what is buffered; a full disk shows here at the latest.
    pub fn flush(&mut self) -> Result<()> {
        self.records
            .flush()
            .with_context(|| format!("{}", self.path.display()))
    }

    fn write(&mut self, event: &Event) -> Result<()> {
        let bytes = event
            .write_to_bytes()
            .with_context(|| format!("{}: encoding an event", self.path.display()))?;
        self.records
            .write(&bytes)
            .with_context(|| format!("{}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/dev/full` fails every write with ENOSPC, as a full disk does: errors, not panics.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_full_disk_is_an_error_that_names_the_file() {
        let Err(error) = EventFile::open(Path::new("/dev/full")) else {
            panic!("writing to /dev/full must fail");
        };
        let text = format!("{error:#}");
        assert!(
            text.contains("/dev/full") && text.contains("No space left on device"),
            "{text}"
        );
    }

    #[test]
    fn records_are_framed_as_tensorboard_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut events = EventFile::create(dir.path()).unwrap();
        events.scalar("train/loss", 1.5, 7).unwrap();
        events.flush().unwrap();
        let path = std::fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        assert!(path.to_string_lossy().contains("tfevents"));
        let bytes = std::fs::read(&path).unwrap();
        // Two records: [u64 length][u32 masked CRC][event][u32 masked CRC] each.
        let mut pos = 0;
        let mut events = Vec::new();
        while pos < bytes.len() {
            let len = u64::from_le_bytes(bytes[pos..pos + 8].try_into().unwrap()) as usize;
            events.push(Event::parse_from_bytes(&bytes[pos + 12..pos + 12 + len]).unwrap());
            pos += 12 + len + 4;
        }
        assert_eq!(pos, bytes.len());
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].get_file_version(), "brain.Event:2");
        assert_eq!(events[1].get_step(), 7);
        let value = &events[1].get_summary().get_value()[0];
        assert_eq!(
            (value.get_tag(), value.get_simple_value()),
            ("train/loss", 1.5)
        );
    }
}

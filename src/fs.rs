//! Files written whole or not at all.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Writes `path` by `write` into `<path>.tmp`, flushes and fsyncs it, renames it over `path`
/// and fsyncs the folder: a kill, a power cut or a full disk at any moment leaves the old
/// `path` (or none) and no temporary file behind, since the temporary file is removed on any
/// error.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let tmp = sibling(path, ".tmp").ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path ends in no file name",
        )
    })?;
    let result = (|| {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        write(&mut out)?;
        out.flush()?;
        out.get_ref().sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_folder_of(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `path` with `suffix` added to its last component, beside it: `m.onnx` → `m.onnx.tmp`, and
/// `data/synthetic/` (whose last component is `synthetic`) → `data/synthetic.partial`; None
/// where the path ends in no name (`/`, `..`).
pub fn sibling(path: &Path, suffix: &str) -> Option<PathBuf> {
    let mut name = path.file_name()?.to_os_string();
    name.push(suffix);
    Some(path.with_file_name(name))
}

/// A rename is on disk only once the folder that holds the name is (POSIX); without this, a
/// power cut after the rename can bring back the old file, or none.
fn sync_folder_of(path: &Path) -> std::io::Result<()> {
    if cfg!(unix) {
        let folder = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(folder)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_files_and_leaves_nothing_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        write_atomically(&path, |out| out.write_all(b"first")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first");

        // A failing writer keeps the old file and removes its temporary one.
        let err = write_atomically(&path, |out| {
            out.write_all(b"half")?;
            Err(std::io::Error::other("disk on fire"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk on fire");
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        assert!(!dir.path().join("a.bin.tmp").exists());

        assert_eq!(
            sibling(Path::new("data/synthetic/"), ".partial"),
            Some(PathBuf::from("data/synthetic.partial"))
        );
        assert_eq!(sibling(Path::new("/"), ".tmp"), None);

        // A bare name's folder is the working directory (`parent()` is "", which cannot be
        // opened).
        sync_folder_of(Path::new("b.bin")).unwrap();
    }
}

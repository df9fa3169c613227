//! insightface's `property` file: one line `num_classes,height,width`.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Property {
    pub num_classes: usize,
    pub height: usize,
    pub width: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PropertyError {
    #[error(
        "{0}: cannot read the property file ({1}); a dataset folder needs `property` with `num_classes,112,112`"
    )]
    Read(PathBuf, std::io::Error),
    #[error("{0}: expected `num_classes,height,width` (three positive integers), found {1:?}")]
    Format(PathBuf, String),
}

impl Property {
    /// Reads `<dir>/property`.
    pub fn read(dir: &Path) -> Result<Property, PropertyError> {
        let path = dir.join("property");
        let text =
            std::fs::read_to_string(&path).map_err(|e| PropertyError::Read(path.clone(), e))?;
        Self::parse(&text).ok_or_else(|| PropertyError::Format(path, text.trim().to_string()))
    }

    pub fn parse(text: &str) -> Option<Property> {
        let fields: Vec<usize> = text
            .trim()
            .split(',')
            .map(|f| f.trim().parse().ok().filter(|&n| n > 0))
            .collect::<Option<_>>()?;
        match fields[..] {
            [num_classes, height, width] => Some(Property {
                num_classes,
                height,
                width,
            }),
            _ => None,
        }
    }

    /// The text insightface writes (no trailing newline).
    pub fn to_text(&self) -> String {
        format!("{},{},{}", self.num_classes, self.height, self.width)
    }

    /// Writes `<dir>/property`; an error names the file.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join("property");
        std::fs::write(&path, self.to_text())
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_insightface_property() {
        // faces_emore's property file.
        assert_eq!(
            Property::parse("85742,112,112\n"),
            Some(Property {
                num_classes: 85742,
                height: 112,
                width: 112
            })
        );
        assert_eq!(
            Property::parse("85742,112,112").unwrap().to_text(),
            "85742,112,112"
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "85742",
            "85742,112",
            "a,112,112",
            "0,112,112",
            "1,2,3,4",
            "-1,112,112",
        ] {
            assert_eq!(Property::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn missing_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = Property::read(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&dir.path().join("property").display().to_string()),
            "{err}"
        );
    }
}

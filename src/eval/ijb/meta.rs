//! insightface's IJB release layout (`IJB_release/IJBC`): `meta/<t>_face_tid_mid.txt`
//! (`name template media`), `meta/<t>_template_pair_label.txt` (`t1 t2 label`),
//! `meta/<t>_name_5pts_score.txt` (`name x1 y1 … x5 y5 score`), the crops in `loose_crop/`;
//! `<t>` is `ijbc` or `ijbb`. The two lists of crops are in the same order, as eval_ijbc.py
//! assumes; here that is checked.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// One IJB target's meta data.
#[derive(Debug, Clone)]
pub struct IjbSet {
    pub name: String,
    pub dir: PathBuf,
    /// Per crop: file name (in `loose_crop/`), template, media, five landmarks, detector score.
    pub crops: Vec<String>,
    pub templates: Vec<u64>,
    pub medias: Vec<u64>,
    pub landmarks: Vec<[[f32; 2]; 5]>,
    pub scores: Vec<f32>,
    /// Template pairs and whether they are the same identity.
    pub pairs: Vec<(u64, u64, bool)>,
}

/// Whitespace-separated fields of each non-empty line of `path`, with its line number.
fn lines(path: &Path) -> Result<Vec<(usize, Vec<String>)>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read {} (an IJB folder has meta/ and loose_crop/)",
            path.display()
        )
    })?;
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l.split_whitespace().map(str::to_string).collect()))
        .collect())
}

fn field<T: std::str::FromStr>(path: &Path, line: usize, what: &str, text: &str) -> Result<T> {
    text.parse().map_err(|_| {
        anyhow::anyhow!(
            "{} line {line}: {what} `{text}` is not a number",
            path.display()
        )
    })
}

impl IjbSet {
    /// The meta files of `target` ("IJBC" or "IJBB") under `dir`.
    pub fn open(dir: &Path, target: &str) -> Result<IjbSet> {
        let t = match target.to_ascii_uppercase().as_str() {
            "IJBC" => "ijbc",
            "IJBB" => "ijbb",
            other => bail!("--target {other}: IJBC or IJBB"),
        };
        let meta = dir.join("meta");
        let media_path = meta.join(format!("{t}_face_tid_mid.txt"));
        let pair_path = meta.join(format!("{t}_template_pair_label.txt"));
        let points_path = meta.join(format!("{t}_name_5pts_score.txt"));
        let mut set = IjbSet {
            name: target.to_ascii_uppercase(),
            dir: dir.to_path_buf(),
            crops: Vec::new(),
            templates: Vec::new(),
            medias: Vec::new(),
            landmarks: Vec::new(),
            scores: Vec::new(),
            pairs: Vec::new(),
        };
        set.read_media(&media_path)?;
        set.read_points(&points_path, &media_path)?;
        set.read_pairs(&pair_path, &media_path)?;
        if set.pairs.is_empty() {
            bail!("{}: no pairs", pair_path.display());
        }
        Ok(set)
    }

    /// The crops with their template and media ids: `<t>_face_tid_mid.txt`.
    fn read_media(&mut self, media_path: &Path) -> Result<()> {
        for (n, f) in lines(media_path)? {
            if f.len() != 3 {
                bail!(
                    "{} line {n}: {} fields, expected 3 (name template media)",
                    media_path.display(),
                    f.len()
                );
            }
            self.crops.push(f[0].clone());
            self.templates
                .push(field(media_path, n, "template", &f[1])?);
            self.medias.push(field(media_path, n, "media", &f[2])?);
        }
        Ok(())
    }

    /// Each crop's five landmarks and detector score, in the media file's order: `<t>_name_5pts_score.txt`.
    fn read_points(&mut self, points_path: &Path, media_path: &Path) -> Result<()> {
        for (i, (n, f)) in lines(points_path)?.into_iter().enumerate() {
            if f.len() != 12 {
                bail!(
                    "{} line {n}: {} fields, expected 12 (name, 5 landmarks x y, score)",
                    points_path.display(),
                    f.len()
                );
            }
            match self.crops.get(i) {
                Some(name) if *name == f[0] => {}
                Some(name) => bail!(
                    "{} line {n}: crop `{}`, but {} lists `{name}` there: the two files must list the crops in one order",
                    points_path.display(),
                    f[0],
                    media_path.display()
                ),
                None => bail!(
                    "{} line {n}: more crops than the {} of {}",
                    points_path.display(),
                    self.crops.len(),
                    media_path.display()
                ),
            }
            let mut points = [[0f32; 2]; 5];
            for (k, p) in points.iter_mut().enumerate() {
                p[0] = field(points_path, n, "landmark", &f[1 + 2 * k])?;
                p[1] = field(points_path, n, "landmark", &f[2 + 2 * k])?;
            }
            self.landmarks.push(points);
            self.scores.push(field(points_path, n, "score", &f[11])?);
        }
        if self.landmarks.len() != self.crops.len() {
            bail!(
                "{} lists {} crops, {} lists {}",
                points_path.display(),
                self.landmarks.len(),
                media_path.display(),
                self.crops.len()
            );
        }
        Ok(())
    }

    /// The template pairs and their labels: `<t>_template_pair_label.txt`.
    fn read_pairs(&mut self, pair_path: &Path, media_path: &Path) -> Result<()> {
        let known: std::collections::HashSet<u64> = self.templates.iter().copied().collect();
        for (n, f) in lines(pair_path)? {
            if f.len() != 3 {
                bail!(
                    "{} line {n}: {} fields, expected 3 (t1 t2 label)",
                    pair_path.display(),
                    f.len()
                );
            }
            let t1: u64 = field(pair_path, n, "template", &f[0])?;
            let t2: u64 = field(pair_path, n, "template", &f[1])?;
            for t in [t1, t2] {
                if !known.contains(&t) {
                    bail!(
                        "{} line {n}: template {t} has no crop in {}",
                        pair_path.display(),
                        media_path.display()
                    );
                }
            }
            let label = match f[2].as_str() {
                "1" => true,
                "0" => false,
                other => bail!(
                    "{} line {n}: label `{other}`, expected 0 or 1",
                    pair_path.display()
                ),
            };
            self.pairs.push((t1, t2, label));
        }
        Ok(())
    }

    /// The crop file of image `i`.
    pub fn crop_path(&self, i: usize) -> PathBuf {
        self.dir.join("loose_crop").join(&self.crops[i])
    }
}

//! numpy's .npy for the one array IJB features are: 2-D, C order, little-endian float32 (read
//! also as float64). Ours rather than a crate's: forty lines against a dependency for them.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Writes `values` as a `rows` × `cols` float32 array (`np.load` reads it).
pub fn write(path: &Path, rows: usize, cols: usize, values: &[f32]) -> Result<()> {
    assert_eq!(values.len(), rows * cols);
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + length (2) + header + '\n' padded to a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    crate::fs::write_atomically(path, |out| {
        out.write_all(b"\x93NUMPY\x01\x00")?;
        out.write_all(&(header.len() as u16).to_le_bytes())?;
        out.write_all(header.as_bytes())?;
        for v in values {
            out.write_all(&v.to_le_bytes())?;
        }
        Ok(())
    })
    .with_context(|| format!("writing {}", path.display()))
}

/// Reads a 2-D C-order `<f4` or `<f8` array: (rows, cols, values as f32).
pub fn read(path: &Path) -> Result<(usize, usize, Vec<f32>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bad = |why: &str| anyhow::anyhow!("{}: not a 2-D float .npy array ({why})", path.display());
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("no .npy magic"));
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        ),
        _ => return Err(bad("unknown version")),
    };
    let header = std::str::from_utf8(
        bytes
            .get(start..start + len)
            .ok_or_else(|| bad("short header"))?,
    )
    .map_err(|_| bad("header not text"))?;
    let width = if header.contains("'<f4'") {
        4
    } else if header.contains("'<f8'") {
        8
    } else {
        return Err(bad("dtype other than little-endian float32/float64"));
    };
    if header.contains("'fortran_order': True") {
        return Err(bad("Fortran order"));
    }
    let shape = header
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape"))?;
    let dims: Vec<usize> = shape
        .trim_start_matches([' ', '('])
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|_| bad("shape"))?;
    let [rows, cols] = dims[..] else {
        bail!(
            "{}: shape {dims:?}, expected 2-D [crops, features]",
            path.display()
        );
    };
    let body = &bytes[start + len..];
    if body.len() != rows * cols * width {
        return Err(bad(&format!(
            "{} data bytes for shape ({rows}, {cols})",
            body.len()
        )));
    }
    let values = match width {
        4 => body
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        _ => body
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
    };
    Ok((rows, cols, values))
}

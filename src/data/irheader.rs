//! MXNet's image-record header `IRHeader`, struct `<IfQQ`: u32 flag, f32 label, u64 id, u64 id2.
//! With flag > 0, `flag` f32 labels follow the header and the struct's label field is 0
//! (label[0] is the identity in insightface's files).

/// Bytes of the fixed part.
pub const HEADER_LEN: usize = 24;

/// A record too short for the header it announces. The caller adds the file and the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HeaderError {
    #[error("record of {len} bytes is shorter than the {HEADER_LEN}-byte IRHeader")]
    Short { len: usize },
    #[error("IRHeader flag {flag} announces {flag} labels, more than the {len}-byte record holds")]
    Labels { flag: u32, len: usize },
}

#[derive(Debug, Clone, PartialEq)]
pub struct IrHeader {
    pub flag: u32,
    pub label: f32,
    pub id: u64,
    pub id2: u64,
    /// The `flag` labels that follow the header (empty for flag 0).
    pub labels: Vec<f32>,
}

impl IrHeader {
    /// A header with a scalar label (flag 0), as insightface writes image records.
    pub fn scalar(label: f32, id: u64) -> IrHeader {
        IrHeader {
            flag: 0,
            label,
            id,
            id2: 0,
            labels: Vec::new(),
        }
    }

    /// A header with a label array (flag = its length), as insightface writes header0 and the
    /// per-identity records.
    pub fn with_labels(labels: Vec<f32>, id: u64) -> IrHeader {
        IrHeader {
            flag: labels.len() as u32,
            label: 0.0,
            id,
            id2: 0,
            labels,
        }
    }

    /// The identity: label[0] with a label array, else the scalar label.
    pub fn identity(&self) -> f32 {
        self.labels.first().copied().unwrap_or(self.label)
    }

    /// Splits a record payload into its header and the rest (the image bytes).
    pub fn unpack(payload: &[u8]) -> Result<(IrHeader, &[u8]), HeaderError> {
        if payload.len() < HEADER_LEN {
            return Err(HeaderError::Short { len: payload.len() });
        }
        let u32_at = |i: usize| u32::from_le_bytes(payload[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(payload[i..i + 8].try_into().unwrap());
        let flag = u32_at(0);
        let label = f32::from_bits(u32_at(4));
        let (id, id2) = (u64_at(8), u64_at(16));
        let labels_end = (flag as usize)
            .checked_mul(4)
            .and_then(|n| n.checked_add(HEADER_LEN))
            .filter(|&end| end <= payload.len())
            .ok_or(HeaderError::Labels {
                flag,
                len: payload.len(),
            })?;
        let labels = payload[HEADER_LEN..labels_end]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        Ok((
            IrHeader {
                flag,
                label,
                id,
                id2,
                labels,
            },
            &payload[labels_end..],
        ))
    }

    /// Header (and labels) followed by `body`.
    pub fn pack(&self, body: &[u8]) -> Vec<u8> {
        debug_assert_eq!(self.flag as usize, self.labels.len());
        let mut out = Vec::with_capacity(HEADER_LEN + 4 * self.labels.len() + body.len());
        out.extend_from_slice(&self.flag.to_le_bytes());
        out.extend_from_slice(&self.label.to_le_bytes());
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.id2.to_le_bytes());
        for l in &self.labels {
            out.extend_from_slice(&l.to_le_bytes());
        }
        out.extend_from_slice(body);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_kinds() {
        for header in [
            IrHeader::scalar(7.0, 3),
            IrHeader::with_labels(vec![1.0, 5.0], 0),
        ] {
            let packed = header.pack(b"jpeg");
            let (back, body) = IrHeader::unpack(&packed).unwrap();
            assert_eq!(back, header);
            assert_eq!(body, b"jpeg");
        }
    }

    #[test]
    fn matches_python_struct_layout() {
        // struct.pack('<IfQQ', 0, 7.0, 3, 0)
        let expect = [
            0, 0, 0, 0, 0, 0, 0xe0, 0x40, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(IrHeader::scalar(7.0, 3).pack(&[]), expect);
    }

    #[test]
    fn rejects_short_or_overclaiming_records() {
        assert!(IrHeader::unpack(&[0; 10]).is_err());
        let mut bad = IrHeader::scalar(1.0, 0).pack(&[]);
        bad[0..4].copy_from_slice(&1000u32.to_le_bytes());
        assert!(
            IrHeader::unpack(&bad)
                .unwrap_err()
                .to_string()
                .contains("flag 1000")
        );
        bad[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(IrHeader::unpack(&bad).is_err());
    }
}

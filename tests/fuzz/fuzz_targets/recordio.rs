//! Any bytes as a .rec (every record from offset 0 and from a fuzzed offset), as a record
//! payload (IRHeader), and as .idx text: errors are fine, panics are not.
#![no_main]

use std::path::Path;

use arcface::data::irheader::IrHeader;
use arcface::data::recordio::{parse_index, read_record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut offset = 0u64;
    while let Ok((record, next)) = read_record(data, offset) {
        let _ = IrHeader::unpack(&record);
        if next <= offset {
            panic!("read_record did not advance at offset {offset}");
        }
        offset = next;
    }
    if data.len() >= 8 {
        let at = u64::from_le_bytes(data[..8].try_into().unwrap());
        let _ = read_record(data, at);
    }
    let _ = IrHeader::unpack(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_index(text, Path::new("fuzz.idx"));
    }
});

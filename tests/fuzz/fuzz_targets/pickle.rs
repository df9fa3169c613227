//! Any bytes as a validation .bin pickle: errors are fine, panics are not.
#![no_main]

use std::path::Path;

use arcface::data::bin::PairSet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = PairSet::from_pickle(data, Path::new("fuzz.bin"));
});

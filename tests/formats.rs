//! RecordIO and .bin against an independent Python implementation (struct/pickle/Pillow/numpy):
//! files it writes are read by us, files we write are read by it, and every kind of damage
//! is a clear error naming the file and the key or offset.

mod common;

use std::path::Path;

use arcface::data::bin::PairSet;
use arcface::data::dataset::RecDataset;
use arcface::data::irheader::IrHeader;
use arcface::data::recordio::{MAGIC, RecFile, RecordWriter};
use serde_json::Value;

fn python(args: &[&str]) -> Value {
    let out = std::process::Command::new(common::python())
        .arg(common::root().join("tests/reference/formats.py"))
        .args(args)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "formats.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// insightface's layout written by Python: 9 images of 3 identities, header0, identity records.
fn python_rec() -> (tempfile::TempDir, Value) {
    let dir = tempfile::tempdir().unwrap();
    let manifest = python(&["write-rec", dir.path().to_str().unwrap()]);
    (dir, manifest)
}

#[test]
fn reads_the_insightface_layout_written_by_python() {
    let (dir, manifest) = python_rec();
    let ds = RecDataset::open(dir.path()).unwrap();
    let images = manifest["images"].as_array().unwrap();
    assert_eq!(ds.len(), images.len());
    assert_eq!(ds.num_classes(), 3);
    assert_eq!(ds.header_identities(), Some(3));
    for (i, expect) in images.iter().enumerate() {
        let sample = ds.sample(i).unwrap();
        assert_eq!(sample.key, expect["key"].as_u64().unwrap());
        assert_eq!(
            sample.label as u64,
            expect["label"].as_u64().unwrap(),
            "key {}",
            sample.key
        );
        assert_eq!(
            sample.image,
            unhex(expect["image"].as_str().unwrap()),
            "key {}",
            sample.key
        );
    }
    let (a, _) = ds.identity_keys.unwrap();
    for (j, range) in manifest["identities"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let expect = (range[0].as_u64().unwrap(), range[1].as_u64().unwrap());
        assert_eq!(ds.identity_range(a + j as u64).unwrap(), expect);
    }
}

#[test]
fn the_python_fixture_really_has_a_split_record() {
    let (dir, _) = python_rec();
    let rec = std::fs::read(dir.path().join("train.rec")).unwrap();
    let idx = arcface::data::recordio::read_index(&dir.path().join("train.idx")).unwrap();
    let offset = idx.iter().find(|(k, _)| *k == 2).unwrap().1 as usize;
    let lrec = u32::from_le_bytes(rec[offset + 4..offset + 8].try_into().unwrap());
    assert_eq!(lrec >> 29, 1, "key 2 should start a split record (cflag 1)");
}

#[test]
fn sequential_scan_needs_no_index() {
    let (dir, manifest) = python_rec();
    let rec = RecFile::open(&dir.path().join("train.rec")).unwrap();
    let records: Vec<_> = rec.scan().collect::<Result<_, _>>().unwrap();
    // header0 + 9 images + 3 identity records.
    assert_eq!(records.len(), 13);
    let (_, payload) = &records[2];
    let (header, body) = IrHeader::unpack(payload).unwrap();
    assert_eq!(header.id, 2);
    assert_eq!(
        body,
        unhex(manifest["images"][1]["image"].as_str().unwrap())
    );
}

#[test]
fn python_reads_what_we_write() {
    let dir = tempfile::tempdir().unwrap();
    let magic = MAGIC.to_le_bytes();
    // Payload bodies with the magic at aligned offsets (after the 24-byte header: aligned too),
    // at the very end, twice in a row, and not at all; plus a multi-label header.
    let bodies: Vec<Vec<u8>> = vec![
        [b"abcd".as_slice(), &magic, b"efgh"].concat(),
        [b"xy".as_slice(), &magic, b"zw"].concat(), // unaligned: no split
        [magic, magic].concat(),
        [b"1234".as_slice(), &magic].concat(),
        b"plain image bytes".to_vec(),
    ];
    let mut writer =
        RecordWriter::create(&dir.path().join("train.rec"), &dir.path().join("train.idx")).unwrap();
    for (k, body) in bodies.iter().enumerate() {
        let header = if k == 4 {
            IrHeader::with_labels(vec![7.0, 1.5, 2.0], k as u64)
        } else {
            IrHeader::scalar(k as f32, k as u64)
        };
        writer.write(k as u64, &header.pack(body)).unwrap();
    }
    writer.finish().unwrap();
    let read = python(&["read-rec", dir.path().to_str().unwrap()]);
    for (k, body) in bodies.iter().enumerate() {
        let r = &read[k];
        assert_eq!(r["key"], k as u64);
        assert_eq!(unhex(r["body"].as_str().unwrap()), *body, "key {k}");
        if k == 4 {
            assert_eq!(r["flag"], 3);
            assert_eq!(r["labels"], serde_json::json!([7.0, 1.5, 2.0]));
        } else {
            assert_eq!(r["label"].as_f64().unwrap(), k as f64);
        }
    }
    // And our reader agrees with our writer.
    let rec = RecFile::open(&dir.path().join("train.rec")).unwrap();
    let scanned: Vec<_> = rec.scan().map(|r| r.unwrap().1).collect();
    for (k, payload) in scanned.iter().enumerate() {
        assert_eq!(IrHeader::unpack(payload).unwrap().1, bodies[k].as_slice());
    }
}

#[test]
fn reads_every_bin_style_python_writes() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = python(&["write-bins", dir.path().to_str().unwrap()]);
    let images: Vec<Vec<u8>> = manifest["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| unhex(h.as_str().unwrap()))
        .collect();
    let issame: Vec<bool> = manifest["issame"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_bool().unwrap())
        .collect();
    for file in manifest["files"].as_array().unwrap() {
        let path = dir.path().join(file.as_str().unwrap());
        let set = PairSet::read(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(set.images, images, "{file}");
        assert_eq!(set.issame, issame, "{file}");
    }
}

#[test]
fn python_reads_the_bin_we_write() {
    let dir = tempfile::tempdir().unwrap();
    let set = PairSet {
        images: vec![
            vec![0xff, 0xd8, 1],
            vec![7; 1000],
            vec![0; 255],
            vec![1; 256],
        ],
        issame: vec![false, true],
    };
    let path = dir.path().join("ours.bin");
    set.write(&path).unwrap();
    let read = python(&["read-bin", path.to_str().unwrap()]);
    let images: Vec<Vec<u8>> = read["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| unhex(h.as_str().unwrap()))
        .collect();
    assert_eq!(images, set.images);
    assert_eq!(read["issame"], serde_json::json!([false, true]));
}

// ---- bad input -------------------------------------------------------------------------

fn open_err(dir: &Path) -> String {
    match RecDataset::open(dir) {
        Ok(_) => panic!("{} should not open", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn modify(dir: &Path, file: &str, f: impl FnOnce(&mut Vec<u8>)) {
    let path = dir.join(file);
    let mut bytes = std::fs::read(&path).unwrap();
    f(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn truncated_rec_names_the_file_and_offset() {
    let (dir, _) = python_rec();
    // Cut into the last record (identity key 12, 40 bytes): its offset still exists.
    modify(dir.path(), "train.rec", |b| b.truncate(b.len() - 10));
    let ds = RecDataset::open(dir.path()).unwrap();
    let err = ds.identity_range(12).unwrap_err().to_string();
    assert!(
        err.contains("train.rec") && err.contains("offset") && err.contains("past the end"),
        "{err}"
    );

    // Cut more: offsets in the index now point past the end, which open() reports.
    modify(dir.path(), "train.rec", |b| b.truncate(b.len() - 100));
    let err = open_err(dir.path());
    assert!(
        err.contains("train.idx") && err.contains("points past the end"),
        "{err}"
    );
}

#[test]
fn wrong_magic_names_the_offset() {
    let (dir, _) = python_rec();
    let idx = arcface::data::recordio::read_index(&dir.path().join("train.idx")).unwrap();
    let offset = idx.iter().find(|(k, _)| *k == 3).unwrap().1 as usize;
    modify(dir.path(), "train.rec", |b| b[offset] ^= 0xff);
    let ds = RecDataset::open(dir.path()).unwrap();
    let err = ds.sample(2).err().expect("bad magic").to_string();
    assert!(
        err.contains(&format!("offset {offset}")) && err.contains("wrong magic"),
        "{err}"
    );
}

#[test]
fn length_past_the_end() {
    let (dir, _) = python_rec();
    let len = std::fs::metadata(dir.path().join("train.rec"))
        .unwrap()
        .len();
    let idx = arcface::data::recordio::read_index(&dir.path().join("train.idx")).unwrap();
    let offset = idx.iter().find(|(k, _)| *k == 9).unwrap().1 as usize;
    modify(dir.path(), "train.rec", |b| {
        b[offset + 4..offset + 8].copy_from_slice(&((1u32 << 29) - 1).to_le_bytes())
    });
    let ds = RecDataset::open(dir.path()).unwrap();
    let err = ds.sample(8).err().expect("overlong").to_string();
    assert!(
        err.contains("runs past the end") && err.contains(&len.to_string()),
        "{err}"
    );
}

#[test]
fn idx_offsets_that_point_nowhere() {
    let (dir, _) = python_rec();
    let text = std::fs::read_to_string(dir.path().join("train.idx")).unwrap();
    std::fs::write(
        dir.path().join("train.idx"),
        text.replacen("\n5\t", "\n5\t99999999", 1),
    )
    .unwrap();
    let err = open_err(dir.path());
    assert!(
        err.contains("train.idx") && err.contains("key 5") && err.contains("past the end"),
        "{err}"
    );
}

#[test]
fn idx_offset_inside_a_record() {
    let (dir, _) = python_rec();
    let text = std::fs::read_to_string(dir.path().join("train.idx")).unwrap();
    let fixed: String = text
        .lines()
        .map(|l| {
            let (k, o) = l.split_once('\t').unwrap();
            if k == "4" {
                format!("{k}\t{}\n", o.parse::<u64>().unwrap() + 40)
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(dir.path().join("train.idx"), fixed).unwrap();
    let ds = RecDataset::open(dir.path()).unwrap();
    let err = ds.sample(3).err().expect("mid-record offset").to_string();
    assert!(err.contains("wrong magic"), "{err}");
}

#[test]
fn duplicate_and_missing_keys() {
    let (dir, _) = python_rec();
    let text = std::fs::read_to_string(dir.path().join("train.idx")).unwrap();
    std::fs::write(dir.path().join("train.idx"), text.replace("\n6\t", "\n5\t")).unwrap();
    let err = open_err(dir.path());
    assert!(
        err.contains("train.idx") && err.contains("duplicate key 5"),
        "{err}"
    );

    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("6\t")).collect();
    std::fs::write(dir.path().join("train.idx"), lines.join("\n")).unwrap();
    let err = open_err(dir.path());
    assert!(err.contains("key 6") && err.contains("missing"), "{err}");
}

#[test]
fn header0_range_past_the_end() {
    let (dir, _) = python_rec();
    modify(dir.path(), "train.rec", |b| {
        // header0's labels [a, b) start at byte 8 (part header) + 24 (IRHeader).
        b[36..40].copy_from_slice(&500f32.to_le_bytes());
    });
    let err = open_err(dir.path());
    assert!(
        err.contains("header0 range [10, 500)") && err.contains("past the end"),
        "{err}"
    );
}

#[test]
fn label_outside_property_is_not_silently_used() {
    let (dir, _) = python_rec();
    std::fs::write(dir.path().join("property"), "2,112,112").unwrap();
    let ds = RecDataset::open(dir.path()).unwrap();
    // Identity 2 (keys 6..9) is outside [0, 2).
    let err = ds
        .sample(5)
        .err()
        .expect("label 2 >= 2 classes")
        .to_string();
    assert!(err.contains("key 6") && err.contains("label 2"), "{err}");
}

#[test]
fn missing_property_file() {
    let (dir, _) = python_rec();
    std::fs::remove_file(dir.path().join("property")).unwrap();
    let err = open_err(dir.path());
    assert!(
        err.contains("property") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn bin_of_the_wrong_shape() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[u8]); 4] = [
        // pickle.dumps([1, 2, 3], protocol=2)
        ("list3.bin", b"\x80\x02]q\x00(K\x01K\x02K\x03e."),
        // pickle.dumps(({}, [True]), protocol=2)
        ("dict.bin", b"\x80\x02}q\x00]q\x01\x88a\x86q\x02."),
        // pickle.dumps(([b'a', b'b'], [True, False]), protocol=4): 1 pair, 2 flags
        ("count.bin", b"\x80\x04\x95\x17\x00\x00\x00\x00\x00\x00\x00]\x94(C\x01a\x94C\x01b\x94e]\x94(\x88\x89e\x86\x94."),
        ("garbage.bin", b"this is not a pickle"),
    ];
    for (name, bytes) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let err = PairSet::read(&path).unwrap_err().to_string();
        assert!(err.contains(name), "{name}: {err}");
        println!("{name}: {err}");
    }
}

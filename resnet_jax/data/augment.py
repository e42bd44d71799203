"""Training augmentations of one encoded image, on the host (numpy, simplejpeg, OpenCV): the
paper's scale augmentation, the Inception crop and the centre crop, each a pure function of
the image and its own random generator (`example_rng(seed, epoch, index)`).

Every view is a window of the original image resized to size x size (bilinear, half-pixel
centres, no antialiasing: tf.image.resize's convention) and maybe flipped. The window is drawn
from the image's size alone (the JPEG header), before decoding, so only the window is decoded
(`jpeg`: region decoding, reduced scale for large windows) and resampled (OpenCV, 5-10x
Pillow's resize); the crops are those of resizing the whole image and cropping it, within one
source pixel (tests/data/test_augment.py). Everything else (grayscale, CMYK and PNG-in-JPEG
files, PNG, 16-bit, files cut short, corrupt files) goes through `decode.decode_rgb`, the one
decode of the project, so odd files give exactly its RGB; an undecodable file raises its
`CorruptImageError` naming the file. PCA lighting and normalization run on the device
(`device_ops`). Evaluation views are `data.views` (shared with `eval --data`).
"""
from __future__ import annotations

import math
from typing import Callable, Tuple

import numpy as np

from resnet_jax.data import jpeg
from resnet_jax.data.decode import decode_rgb

# y, x, height, width in original pixels, maybe fractions (a window of the resized image)
Window = Tuple[float, float, float, float]
TRAIN_AUGMENTS = ("scale", "inception", "none")


def example_rng(seed: int, epoch: int, index: int, slot: int | None = None
                ) -> np.random.Generator:
    """The generator of example `index` in epoch `epoch`: its augmentation depends on nothing
    else (not the process, the worker or where the run restarted). `slot`: the position of the
    epoch order it stands in for (a corrupt image's, `elements.TrainPlan.stand_ins`), which
    draws it another view than the one of its own position."""
    key = [seed & 0xFFFFFFFF, epoch, index, 0xA9] + ([] if slot is None else [1 + slot])
    return np.random.default_rng(key)


def scale_window(h: int, w: int, rng: np.random.Generator, size: int = 224,
                 min_side: int = 256, max_side: int = 480) -> Window:
    """Paper Sec. 3.4: the shorter side s ~ U{min_side..max_side} and a uniform size x size
    crop of the image resized to shorter side s, as the window it covers in the original."""
    s = int(rng.integers(min_side, max_side + 1))
    new_h = max(round(h * s / min(h, w)), size)
    new_w = max(round(w * s / min(h, w)), size)
    oy, ox = int(rng.integers(0, new_h - size + 1)), int(rng.integers(0, new_w - size + 1))
    # resize's own scales (new_h / h may differ from new_w / w by the rounding)
    return oy * h / new_h, ox * w / new_w, size * h / new_h, size * w / new_w


def inception_window(h: int, w: int, rng: np.random.Generator,
                     area_range=(0.08, 1.0), aspect_range=(3 / 4, 4 / 3),
                     attempts: int = 10) -> Window:
    """Inception random-resized crop: area fraction ~ U(area_range), log aspect ratio uniform
    in aspect_range; the first of `attempts` draws that fits, else the whole image."""
    log_lo, log_hi = math.log(aspect_range[0]), math.log(aspect_range[1])
    for _ in range(attempts):
        area = h * w * rng.uniform(*area_range)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    return 0, 0, h, w


def center_window(h: int, w: int, size: int, resize: int) -> Window:
    """The centre size x size crop of the image resized to shorter side `resize`."""
    crop = min(max(round(size * min(h, w) / resize), 1), h, w)
    return (h - crop) // 2, (w - crop) // 2, crop, crop


def region_of(window: Window, h: int, w: int, crop: bool) -> Tuple[int, int, int, int]:
    """The pixels of an h x w image that a view of `window` reads. `crop`: the window is cut
    out, then resized (Inception crop, centre crop; whole pixels): its own pixels, whose
    edge pixels repeat beyond it, as tf.data's crop + resize. Else the window is the part of
    the whole image that a resize of all of it maps to the view (scale augmentation): the
    window and one pixel more each side, within the image (only the image's own edges
    repeat). The caller says which: a window of the resized image may be whole numbers too
    (240 x 320 enlarged x2: (86, 52, 112, 112)), and its edges still read their neighbours."""
    if crop:
        return tuple(int(v) for v in window)
    y, x, ch, cw = window
    y0, x0 = max(0, math.floor(y) - 1), max(0, math.floor(x) - 1)
    return y0, x0, min(h, math.ceil(y + ch) + 1) - y0, min(w, math.ceil(x + cw) + 1) - x0


def sample(img: np.ndarray, origin: Tuple[float, float], scale: Tuple[float, float],
           window: Window, size: int) -> np.ndarray:
    """uint8 (size, size, 3): bilinear samples (half-pixel centres, no antialiasing) of
    `window` from `img`, which holds the original's pixels from `origin` on at `scale`
    (1/f when decoded at reduced scale); its edge pixels repeat beyond it. Output pixel i
    samples the original at y + (i + 1/2) height / size - 1/2: the pixel that resizing the
    whole image and cropping it gives, to within the rounding of OpenCV's fixed point."""
    import cv2
    y, x, ch, cw = window
    (oy, ox), (sy, sx) = origin, scale
    ay, ax = ch * sy / size, cw * sx / size
    m = np.array([[ax, 0.0, (x - ox) * sx + ax / 2 - 0.5],
                  [0.0, ay, (y - oy) * sy + ay / 2 - 0.5]])
    return cv2.warpAffine(np.ascontiguousarray(img), m, (size, size),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def crop_resize(data: bytes, name: str, window_of: Callable[[int, int], Window],
                size: int, crop: bool) -> np.ndarray:
    """uint8 (size, size, 3): the window `window_of(h, w)` of the encoded image, resized
    (`crop`: cut out, then resized; else a window of the whole image resized: `region_of`).
    Colour JPEGs decode only the pixels the window reads (at 1/4 or 1/8 scale when it is
    that large: `jpeg.decode_region`); others through `decode_rgb` (CorruptImageError naming
    `name` when nothing can decode it)."""
    shape = jpeg.header(data)
    decoded = window = None
    if shape is not None:
        window = window_of(*shape)  # drawn once: a fallback decode below reuses it
        decoded = jpeg.decode_region(data, shape, region_of(window, *shape, crop),
                                     jpeg.decode_factor(window, size))
    if decoded is None:
        img = decode_rgb(data, name)
        if window is None or img.shape[:2] != shape:
            window = window_of(*img.shape[:2])
        y, x, h, w = region_of(window, *img.shape[:2], crop)
        decoded = img[y:y + h, x:x + w], (y, x), (1.0, 1.0)
    return sample(*decoded, window, size)


def flip(img: np.ndarray) -> np.ndarray:
    """Left-right mirror, contiguous."""
    import cv2
    return cv2.flip(img, 1)


def train_view(data: bytes, name: str, augment: str, rng: np.random.Generator,
               size: int = 224, eval_resize: int = 256) -> np.ndarray:
    """uint8 (size, size, 3) training view of one encoded image.

    augment 'scale': `scale_window` (shorter side in [256, 480] x size / 224) + flip
    (p = 1/2); 'inception': `inception_window` + flip;
    'none': the centre crop of the evaluation (`center_window`), no flip, no randomness.
    """
    if augment == "none":
        return crop_resize(data, name, lambda h, w: center_window(h, w, size, eval_resize), size,
                           crop=True)
    if augment == "scale":  # [256, 480] for a 224 crop, in proportion for other sizes
        lo, hi = round(256 * size / 224), round(480 * size / 224)
        window_of = lambda h, w: scale_window(h, w, rng, size, lo, hi)  # noqa: E731
    elif augment == "inception":
        window_of = lambda h, w: inception_window(h, w, rng)  # noqa: E731
    else:
        raise ValueError(f"data.train_augment={augment!r}; allowed: {', '.join(TRAIN_AUGMENTS)}")
    # the paper's scale augmentation resizes the whole image; the Inception crop cuts first
    out = crop_resize(data, name, window_of, size, crop=augment == "inception")
    return flip(out) if rng.random() < 0.5 else out

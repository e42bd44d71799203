"""Training augmentations of one encoded image, on the host (numpy, simplejpeg, OpenCV): the
paper's scale augmentation, the Inception crop and the centre crop, each a pure function of
the image and its own random generator (`example_rng(seed, epoch, index)`).

Every view is a window of the original image resized to size x size (bilinear, half-pixel
centres, no antialiasing: tf.image.resize's convention) and maybe flipped, so only the window
is resampled. Decoding was chosen by measurement (benchmarks/input_pipeline.py, the decoder
table): simplejpeg decodes a colour (YCbCr) JPEG with libjpeg-turbo's fast IDCT and
upsampling, at 1/2, 1/4 or 1/8 scale when the window stays at least size pixels there (the
`draft` of Pillow); OpenCV resizes (5-10x Pillow's resize). Everything else (grayscale, CMYK
and PNG-in-JPEG files, PNG, 16-bit, corrupt files) goes through `decode.decode_rgb`, the one
decode of the project, so odd files give exactly its RGB; an undecodable file raises its
`CorruptImageError` naming the file. PCA lighting and normalization run on the device
(`device_ops`). Evaluation views are `resnet_jax.interop.views` (shared with `eval --data`).
"""
from __future__ import annotations

import math
from typing import Callable, Tuple

import numpy as np

from resnet_jax.data.decode import decode_rgb

Window = Tuple[int, int, int, int]  # y, x, height, width in original pixels
TRAIN_AUGMENTS = ("scale", "inception", "none")


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of example `index` in epoch `epoch`: its augmentation depends on nothing
    else (not the process, the worker or where the run restarted)."""
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, index, 0xA9])


def scale_window(h: int, w: int, rng: np.random.Generator, size: int = 224,
                 min_side: int = 256, max_side: int = 480) -> Window:
    """Paper Sec. 3.4: the shorter side s ~ U{min_side..max_side} and a uniform size x size
    crop of the image resized to shorter side s, as the window it covers in the original."""
    s = int(rng.integers(min_side, max_side + 1))
    scale = s / min(h, w)
    new_h, new_w = max(round(h * scale), size), max(round(w * scale), size)
    oy, ox = int(rng.integers(0, new_h - size + 1)), int(rng.integers(0, new_w - size + 1))
    crop = max(round(size / scale), 1)
    y, x = math.floor(oy / scale), math.floor(ox / scale)
    return y, x, min(crop, h - y), min(crop, w - x)


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


def jpeg_header(data: bytes):
    """(height, width) of a colour JPEG that the fast path decodes, else None (every other
    file, and any header simplejpeg cannot read, goes through `decode_rgb`)."""
    import simplejpeg
    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except (ValueError, TypeError):
        return None
    return (h, w) if colorspace == "YCbCr" else None


def draft_factor(window: Window, size: int) -> int:
    """The largest of 1, 2, 4, 8 that keeps the window at least `size` pixels each way."""
    f = 1
    while f < 8 and min(window[2], window[3]) >= 2 * f * size:
        f *= 2
    return f


def resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """uint8 (h, w, 3) bilinear resize (half-pixel centres, no antialiasing)."""
    import cv2
    if img.shape[:2] == (h, w):
        return np.ascontiguousarray(img)
    return cv2.resize(np.ascontiguousarray(img), (w, h), interpolation=cv2.INTER_LINEAR)


def crop_resize(data: bytes, name: str, window_of: Callable[[int, int], Window],
                size: int) -> np.ndarray:
    """uint8 (size, size, 3): the window `window_of(h, w)` of the encoded image, resized.
    Colour JPEGs decode at the coarsest scale the window allows; others through
    `decode_rgb` (CorruptImageError naming `name` when nothing can decode it)."""
    import simplejpeg
    shape = jpeg_header(data)
    img = window = None
    if shape is not None:
        window = window_of(*shape)  # drawn once: a fallback decode below reuses it
        f = draft_factor(window, size)
        try:
            # Fast IDCT as tf.data had (INTEGER_FAST); fancy chroma upsampling kept: the fast
            # one shifts saturated colours by several levels for ~5% of the time.
            img = simplejpeg.decode_jpeg(data, fastdct=True, min_factor=f)
        except ValueError:
            img = None  # a damaged JPEG: decode_rgb names it (or reads what it can)
        if img is not None and img.shape[:2] != shape:
            sy, sx = img.shape[0] / shape[0], img.shape[1] / shape[1]
            y, x, ch, cw = window
            y0, x0 = int(y * sy), int(x * sx)
            window = (y0, x0, max(1, min(round(ch * sy), img.shape[0] - y0)),
                      max(1, min(round(cw * sx), img.shape[1] - x0)))
    if img is None:
        img = decode_rgb(data, name)
        if window is None or img.shape[:2] != shape:
            window = window_of(*img.shape[:2])
    y, x, ch, cw = window
    return resize(img[y:y + ch, x:x + cw], size, size)


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
        return crop_resize(data, name, lambda h, w: center_window(h, w, size, eval_resize), size)
    if augment == "scale":  # [256, 480] for a 224 crop, in proportion for other sizes
        lo, hi = round(256 * size / 224), round(480 * size / 224)
        window_of = lambda h, w: scale_window(h, w, rng, size, lo, hi)  # noqa: E731
    elif augment == "inception":
        window_of = lambda h, w: inception_window(h, w, rng)  # noqa: E731
    else:
        raise ValueError(f"data.train_augment={augment!r}; allowed: {', '.join(TRAIN_AUGMENTS)}")
    out = crop_resize(data, name, window_of, size)
    return flip(out) if rng.random() < 0.5 else out

"""Test views of one image, made with a model's recorded `Preprocessing` (numpy + Pillow):
the streaming pipeline's evaluation and `resnet-jax eval --data` use the same views.

    views = Views(loaded.preprocessing, "10crop")
    stacks = views(image_uint8)        # tuple of uint8 (V, H, W, 3) stacks, one per scale
    stacks = views.of(name, encoded)   # the same of JPEG/PNG bytes, a file path or an array
    means_stds = views.normalization() # ((mean, std), ...): input = (stack - mean) / std

Modes (the paper's test views, with the resize and crop offsets of the model's style):
  center:     the recorded eval transform: resize the shorter side to `resize`, centre
              `crop` x `crop` (exactly `preprocess.apply`, before normalization). V = 1.
  10crop:     the same resize, then the 4 corners (top-left, top-right, bottom-left,
              bottom-right) and the centre, and the same 5 flipped left-right (`ten_crop`).
              V = 10.
  multiscale: per scale s, the image resized to shorter side s and its centre s x s square,
              and that square flipped (fully convolutional: the model's global average pool
              takes any size). One stack of V = 2 per scale; the caller averages the softmax
              over all views of all scales.
A per-pixel mean (CIFAR runs) is resized (bilinear) to a scale other than the crop size.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import numpy as np

from resnet_jax.data.preprocess import Preprocessing, _center_crop, _resize_crop

MODES = ("center", "10crop", "multiscale")
PAPER_SCALES = (224, 256, 384, 480, 640)  # Sec. 3.4, for 224 crops


def default_scales(crop: int) -> tuple[int, ...]:
    """The paper's scales for a model of centre crop `crop` (224 -> 224, 256, 384, 480, 640;
    32 -> 32, 37, 55, 69, 91)."""
    out = []
    for s in PAPER_SCALES:
        v = max(1, int(round(s * crop / 224)))
        if v not in out:
            out.append(v)
    return tuple(out)


def decode(name: str, image: Any) -> np.ndarray:
    """uint8 (H, W, 3) RGB of encoded bytes, an image file, or an array (Pillow decodes)."""
    from resnet_jax.data.decode import decode_rgb, read_image
    if isinstance(image, (bytes, bytearray, np.bytes_)):
        return decode_rgb(bytes(image), name)
    if isinstance(image, str):
        return read_image(image)
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
        raise ValueError(f"{name}: image of dtype {arr.dtype} and shape {arr.shape}; expected "
                         "uint8 (H, W, 3)")
    arr = arr[..., None] if arr.ndim == 2 else arr
    return np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr


def _geometry(prep: Preprocessing, resize: Optional[int], crop: Optional[int]) -> Preprocessing:
    """The resize + crop of `prep`'s style at other sizes (mean/std unused)."""
    return Preprocessing(np.zeros(3), 1.0, resize=resize, crop=crop, style=prep.style,
                         interpolation=prep.interpolation)


def ten_crop(prep: Preprocessing, img: np.ndarray) -> np.ndarray:
    """uint8 (10, crop, crop, 3): corners, centre, then the same flipped."""
    c = prep.crop
    resized = _resize_crop(_geometry(prep, prep.resize, None), img)
    h, w = resized.shape[:2]
    centre = _center_crop(prep, resized, c)  # also refuses an image smaller than the crop
    crops = np.stack([resized[:c, :c], resized[:c, w - c:], resized[h - c:, :c],
                      resized[h - c:, w - c:], centre])
    return np.concatenate([crops, crops[:, :, ::-1]])


def scale_views(prep: Preprocessing, img: np.ndarray, scale: int) -> np.ndarray:
    """uint8 (2, scale, scale, 3): the centre square at shorter side `scale`, and its flip."""
    square = _resize_crop(_geometry(prep, scale, scale), img)
    return np.stack([square, square[:, ::-1]])


@dataclasses.dataclass(frozen=True)
class Views:
    prep: Preprocessing
    mode: str = "center"
    scales: Sequence[int] = ()

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"--crops {self.mode!r}; allowed: {', '.join(MODES)}")
        if self.prep.crop is None:
            raise ValueError("the model's preprocessing has no centre crop, so its test images "
                             "have no common size to batch")
        scales = tuple(int(s) for s in self.scales) if self.mode == "multiscale" else ()
        if self.mode == "multiscale" and (not scales or min(scales) < 1):
            raise ValueError(f"multiscale needs positive scales, got {self.scales}")
        object.__setattr__(self, "scales", scales)

    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """(V, H, W, 3) of each stack."""
        c = self.prep.crop
        if self.mode == "multiscale":
            return tuple((2, s, s, 3) for s in self.scales)
        return ((1 if self.mode == "center" else 10, c, c, 3),)

    def __call__(self, img: np.ndarray) -> tuple[np.ndarray, ...]:
        if self.mode == "center":
            return (_resize_crop(self.prep, img)[None],)
        if self.mode == "10crop":
            return (ten_crop(self.prep, img),)
        return tuple(scale_views(self.prep, img, s) for s in self.scales)

    def of(self, name: str, image: Any) -> tuple[np.ndarray, ...]:
        """The views of an undecoded image (`decode`); errors name the image."""
        img = decode(name, image)
        try:
            return self(img)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None

    def normalization(self) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        """(mean, std) float32 of each stack (a per-pixel mean resized to the stack's size)."""
        mean, std = self.prep.mean, self.prep.std
        out = []
        for _, h, w, _ in self.shapes():
            m = mean
            if mean.ndim == 3 and mean.shape[:2] != (h, w):
                import jax
                m = np.asarray(jax.image.resize(mean, (h, w, 3), "linear"), np.float32)
            out.append((m, std))
        return tuple(out)

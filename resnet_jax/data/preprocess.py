"""What turns a raw image into a model input: the eval resize + centre crop and normalization.

`Preprocessing` describes it; `apply(prep, images)` runs it (numpy + Pillow, no TensorFlow).
The streaming pipeline's evaluation views (`data.views`) and `resnet-jax eval --data` /
`predict` / exported models (`resnet_jax.interop.preprocess`: `preprocessing.json`, a run's
preprocessing) all use it.

Pixel values are on the 0-255 scale throughout: input = (pixel - mean) / std with `mean` (3,)
or a per-pixel (H, W, 3) image and `std` a scalar or (3,). torchvision's ImageNet transform
(ToTensor to [0, 1], then Normalize(mean, std)) is the same map with mean x 255, std x 255.

Resize styles ('resize' = the shorter side, then a centre `crop` x `crop` window):
  'torchvision': Pillow resize (antialiased; `interpolation` bilinear or bicubic), long side
      int(resize * long / short), crop offset round((h - crop) / 2) (half to even): exactly
      torchvision's Resize + CenterCrop on PIL images.
  'tf': this project's streaming eval (data/views.py): bilinear without antialiasing, half-
      pixel centres, long side max(round(long * resize / short), resize), pixels rounded to
      uint8, crop offset (h - crop) // 2 (tf.image.resize's float32 arithmetic: bitwise
      equal to it on the images checked).
An image already `resize` on its shorter side is not resampled in either style.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

VERSION = 1  # of the JSON form (`to_json`), which preprocessing.json files hold
STYLES = ("torchvision", "tf")
INTERPOLATIONS = ("bilinear", "bicubic")
TORCHVISION_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)  # 123.675, 116.28, 103.53
TORCHVISION_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)   # 58.395, 57.12, 57.375


@dataclasses.dataclass(frozen=True, eq=False)
class Preprocessing:
    """mean: (3,) or (H, W, 3); std: () or (3,), both on the 0-255 scale. resize: shorter side
    before the crop (None: no resize); crop: centre crop size (None: the image as it is)."""
    mean: np.ndarray
    std: np.ndarray
    resize: Optional[int] = None
    crop: Optional[int] = None
    style: str = "torchvision"
    interpolation: str = "bilinear"

    def __post_init__(self):
        object.__setattr__(self, "mean", np.asarray(self.mean, np.float32))
        object.__setattr__(self, "std", np.asarray(self.std, np.float32))
        if self.style not in STYLES:
            raise ValueError(f"preprocessing style={self.style!r}; allowed: {list(STYLES)}")
        if self.interpolation not in INTERPOLATIONS or (self.style == "tf"
                                                        and self.interpolation != "bilinear"):
            raise ValueError(f"interpolation={self.interpolation!r} with style {self.style!r}; "
                             f"allowed: {list(INTERPOLATIONS)} (tf: bilinear)")
        if self.mean.shape != (3,) and (self.mean.ndim != 3 or self.mean.shape[-1] != 3):
            raise ValueError(f"mean must be (3,) or (H, W, 3), got {self.mean.shape}")
        if self.std.shape not in ((), (3,)) or np.any(self.std <= 0):
            raise ValueError(f"std must be a positive scalar or (3,), got {self.std}")
        for name in ("resize", "crop"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"{name}={v!r} must be a positive integer or None")
        if self.mean.ndim == 3 and (self.crop is None or self.mean.shape[:2] != (self.crop,) * 2):
            raise ValueError(f"a per-pixel mean {self.mean.shape} needs crop = its size")

    @property
    def output_size(self) -> Optional[int]:
        return self.crop

    def to_json(self) -> dict:
        return {"version": VERSION, "mean": self.mean.tolist(),
                "std": self.std.tolist(), "resize": self.resize, "crop": self.crop,
                "style": self.style, "interpolation": self.interpolation}

    @classmethod
    def from_json(cls, d: dict) -> "Preprocessing":
        if int(d.get("version", 0)) > VERSION:
            raise ValueError(f"preprocessing version {d['version']} is newer than this "
                             f"resnet-jax reads ({VERSION}); upgrade resnet-jax")
        return cls(mean=d["mean"], std=d["std"], resize=d.get("resize"), crop=d.get("crop"),
                   style=d.get("style", "torchvision"),
                   interpolation=d.get("interpolation", "bilinear"))

    def __call__(self, images: Any) -> np.ndarray:
        return apply(self, images)


def torchvision_preprocessing(resize: int = 256, crop: int = 224,
                              interpolation: str = "bilinear") -> Preprocessing:
    """torchvision's ImageNet eval transform (V1 weights; V2 weights use resize=232)."""
    return Preprocessing(TORCHVISION_MEAN, TORCHVISION_STD, resize, crop, "torchvision",
                         interpolation)


# ---- running it ---------------------------------------------------------------------------

def as_image_list(images: Any) -> list[np.ndarray]:
    """uint8 (H, W, 3), uint8 (N, H, W, 3), or a list of (H, W, 3) arrays / PIL images ->
    list of uint8 (H, W, 3) arrays (PIL images are converted to RGB)."""
    if hasattr(images, "convert"):  # one PIL image
        items = [images]
    elif isinstance(images, (list, tuple)):
        items = list(images)
    else:
        arr = np.asarray(images)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4:
            raise ValueError(f"images must be (H, W, 3) or (N, H, W, 3), got {arr.shape}")
        items = list(arr)
    out = []
    for i, img in enumerate(items):
        if hasattr(img, "convert"):
            from resnet_jax.data.decode import to_rgb
            img = to_rgb(img)
        img = np.asarray(img)
        if img.dtype != np.uint8:
            raise ValueError(f"image {i}: dtype {img.dtype}; preprocess takes uint8 pixels "
                             "(0-255); a float batch that is already normalized goes straight "
                             "to model.apply")
        if img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError(f"image {i}: shape {img.shape}; expected (H, W, 3) RGB")
        out.append(img)
    return out


def apply(prep: Preprocessing, images: Any) -> np.ndarray:
    """Raw uint8 images (see `as_image_list`) -> float32 (N, crop, crop, 3) model inputs."""
    items = [_resize_crop(prep, img) for img in as_image_list(images)]
    if not items:
        raise ValueError("no images")
    shapes = {x.shape for x in items}
    if len(shapes) > 1:
        raise ValueError(f"images of different sizes {sorted(shapes)} and no crop to unify "
                         "them")
    batch = np.stack(items).astype(np.float32)
    if prep.mean.ndim == 3 and batch.shape[1:3] != prep.mean.shape[:2]:
        raise ValueError(f"images are {batch.shape[1:3]}; the per-pixel mean is "
                         f"{prep.mean.shape[:2]}")
    return (batch - prep.mean) / prep.std


def _resize_crop(prep: Preprocessing, img: np.ndarray) -> np.ndarray:
    if prep.resize is not None:
        h, w = img.shape[:2]
        new_h, new_w = _resized_shape(prep, h, w)
        if (new_h, new_w) != (h, w):
            img = (_pil_resize(img, new_h, new_w, prep.interpolation)
                   if prep.style == "torchvision" else tf_bilinear(img, new_h, new_w))
    if prep.crop is not None:
        img = _center_crop(prep, img, prep.crop)
    return img


def _resized_shape(prep: Preprocessing, h: int, w: int) -> tuple[int, int]:
    side = prep.resize
    if prep.style == "torchvision":
        short, long = min(h, w), max(h, w)
        new_long = int(side * long / short)
        return (side, new_long) if h <= w else (new_long, side)
    scale = np.float32(side) / np.float32(min(h, w))
    return (max(int(np.round(np.float32(h) * scale)), side),
            max(int(np.round(np.float32(w) * scale)), side))


def _pil_resize(img: np.ndarray, h: int, w: int, interpolation: str) -> np.ndarray:
    from PIL import Image
    method = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[interpolation]
    return np.asarray(Image.fromarray(img).resize((w, h), method))


def tf_bilinear(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """tf.image.resize(method='bilinear', antialias=False) (half-pixel centres) in float32,
    rounded half to even and clipped to uint8: the 'tf' style's resize (`_resize_crop`)."""
    def axis(n_in: int, n_out: int):
        scale = np.float32(n_in) / np.float32(n_out)
        src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
        lo_f = np.floor(src)
        lo = np.maximum(lo_f, 0).astype(np.int64)
        hi = np.minimum(np.ceil(src), n_in - 1).astype(np.int64)
        return lo, hi, (src - lo_f).astype(np.float32)

    y0, y1, fy = axis(img.shape[0], h)
    x0, x1, fx = axis(img.shape[1], w)
    x = img.astype(np.float32)
    fx = fx[None, :, None]
    top = x[y0][:, x0] + (x[y0][:, x1] - x[y0][:, x0]) * fx
    bottom = x[y1][:, x0] + (x[y1][:, x1] - x[y1][:, x0]) * fx
    out = top + (bottom - top) * fy[:, None, None]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _center_crop(prep: Preprocessing, img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    if h < size or w < size:
        raise ValueError(f"image of {h}x{w} after resizing is smaller than the {size}x{size} "
                         "crop")
    if prep.style == "torchvision":
        y, x = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    else:
        y, x = (h - size) // 2, (w - size) // 2
    return img[y:y + size, x:x + size]

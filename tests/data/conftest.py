"""Data-test helpers: small generated image folders and tars (a few KB, in tmp dirs)."""
from __future__ import annotations

import io
import os
import tarfile

import numpy as np
from PIL import Image


def write_folder(root: str, classes=("cat", "dog"), per_class: int = 3, size=(8, 8),
                 seed: int = 0) -> dict:
    """root/<class>/<i>.jpg with random RGB JPEGs; returns {path: class_index}."""
    rng = np.random.default_rng(seed)
    out = {}
    for ci, cls in enumerate(classes):
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            path = os.path.join(root, cls, f"{i:04d}.jpg")
            Image.fromarray(arr).save(path, quality=95)
            out[path] = ci
    return out


def odd_images(size=(8, 8)) -> dict:
    """name -> bytes of real-world oddities: grayscale, CMYK, PNG named .jpg, RGBA PNG."""
    def enc(img, fmt):
        buf = io.BytesIO()
        img.save(buf, fmt)
        return buf.getvalue()
    gray = Image.fromarray(np.full(size[::-1], 100, np.uint8), "L")
    cmyk = Image.new("CMYK", size, (0, 255, 255, 0))  # pure red in CMYK
    rgb = Image.fromarray(np.full((*size[::-1], 3), 50, np.uint8))
    rgba = Image.new("RGBA", size, (10, 20, 30, 128))
    return {"gray.jpg": enc(gray, "JPEG"), "cmyk.jpg": enc(cmyk, "JPEG"),
            "png_in.jpg": enc(rgb, "PNG"), "rgba.png": enc(rgba, "PNG")}


def photo(h: int, w: int, seed: int = 0, grain: float = 12, block: int = 12) -> np.ndarray:
    """uint8 (h, w, 3) photo-like image: smooth random colours (a value per block x block
    pixels, bicubic) plus Gaussian grain of sd `grain`, so every 8 x 8 block has real
    entropy-coded data and a pixel differs from its neighbours (an off-by-one-pixel sample
    shows); grain=0: smooth, where decoders and scales agree closely."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // block + 1, w // block + 1, 3), np.uint8)
    img = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.float32)
    return np.clip(img + rng.normal(0, grain, img.shape), 0, 255).astype(np.uint8)


def encode(img: np.ndarray, fmt: str = "JPEG", **options) -> bytes:
    """The bytes of `img` saved by Pillow (JPEG quality 85 unless `options` say)."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, fmt, **{**({"quality": 85} if fmt == "JPEG" else {}),
                                            **options})
    return buf.getvalue()


def write_tar(path: str, folder_root: str, split: str = "train") -> None:
    """Pack folder_root/<class>/<img> as split/<class>/<img> into a .tar.gz."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder_root, arcname=split)


def stream_config(**over):
    """A streaming `data` section over a small image folder (32-pixel crops), in-process."""
    import ml_collections
    cfg = ml_collections.ConfigDict(dict(
        pipeline="streaming", source="folder", name="", path="", data_dir="",
        num_val_examples=0, train_augment="scale", image_size=32, eval_resize=40,
        lighting_std=0.1, normalize="per_channel", eval_crops="center",
        multiscale_sizes=(32, 48), on_corrupt="error",
        synthetic_examples=1, num_classes=0, prefetch=2, workers=0))
    cfg.update(over)
    return cfg


def make(cfg, batch=8, eval_batch=4, seed=0, pi=0, pc=1):
    from resnet_jax import data
    return data.make_pipeline(cfg, global_batch_size=batch, eval_batch_size=eval_batch,
                              seed=seed, process_index=pi, process_count=pc)


def take(it, n):
    return [next(it) for _ in range(n)]


class CountingRecords:
    """Records that note every index read (in-process pipelines only); example `bad` fails to
    read (EIO) its first `failures` times."""

    def __init__(self, records, bad: int = -1, failures: int = 0):
        self.records, self.reads = records, []
        self.bad, self.failures = bad, failures

    def __len__(self):
        return len(self.records)

    def name(self, i):
        return self.records.name(i)

    def read(self, i):
        self.reads.append(int(i))
        if int(i) == self.bad and self.failures > 0:
            import errno
            self.failures -= 1
            raise OSError(errno.EIO, "Input/output error", self.name(i))
        return self.records.read(i)


import sys  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def helpers():
    """This module's helpers (tests use --import-mode=importlib, so they cannot import it)."""
    return sys.modules[__name__]

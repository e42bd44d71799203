"""Pillow decoding of real-world image files to RGB uint8 (no TensorFlow needed).

Grayscale, CMYK, palette and RGBA files become RGB; a PNG saved as `.jpg` decodes too (Pillow
reads the content, not the name). An unreadable file raises `CorruptImageError` naming it.
"""
from __future__ import annotations

import io

import numpy as np

from resnet_jax import schema

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".jfif")
ON_CORRUPT_CHOICES = schema.ENUMS["data.on_corrupt"]


class CorruptImageError(ValueError):
    """An image file that cannot be decoded; the message names its path."""


def decode_rgb(data: bytes, path: str = "<bytes>") -> np.ndarray:
    """Decode image bytes to uint8 (H, W, 3) RGB, or raise CorruptImageError naming `path`."""
    from PIL import Image  # Pillow is a hard dependency; imported here to keep import light

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode != "RGB":
                img = img.convert("RGB")  # L, CMYK, P, RGBA, I;16 ... -> RGB
            return np.asarray(img, dtype=np.uint8)
    except Exception as e:  # Pillow raises several types (UnidentifiedImageError, OSError, ...)
        raise CorruptImageError(f"cannot decode image {path!r}: {type(e).__name__}: {e}") from e


def check_on_corrupt(on_corrupt: str) -> str:
    """Validate the data.on_corrupt option."""
    schema.check_choice("data.on_corrupt", on_corrupt)
    return on_corrupt


def is_image_name(name: str) -> bool:
    """True for file names with a known image extension (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)

"""Pillow decoding of real-world image files to RGB uint8 (no TensorFlow needed): the one
decode every path uses (training, `eval --data`, `predict`, fine-tuning).

Grayscale, CMYK, palette and RGBA files become RGB; a PNG saved as `.jpg` decodes too (Pillow
reads the content, not the name). 16-bit images are scaled to 8 bits (Pillow's own
conversion clips a 16-bit grayscale PNG to 255: all white). An unreadable file raises
`CorruptImageError` naming it.
"""
from __future__ import annotations

import io
import time
from typing import Callable, TypeVar

import numpy as np

from resnet_jax import schema

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".jfif")
ON_CORRUPT_CHOICES = schema.ENUMS["data.on_corrupt"]


class CorruptImageError(ValueError):
    """An image file that cannot be decoded; the message names its path."""


class ReadError(OSError):
    """An image file that could not be read, after retries: the storage failed, not the image
    (data.on_corrupt does not apply: skipping it would change the batch of a step)."""


# A transient EIO on a network filesystem or a 5xx of an object store passes in seconds: read
# again after 0.5, 1, 2 and 4 s (7.5 s in all) before the run stops.
READ_TRIES, READ_BACKOFF_S = 5, 0.5
T = TypeVar("T")


def read_retrying(read: Callable[[], T], name: str) -> T:
    """`read()`, again after a growing pause while it raises OSError; then `ReadError` naming
    `name`, the last error and the tries."""
    waited = 0.0
    for attempt in range(READ_TRIES - 1):
        try:
            return read()
        except OSError:
            pause = READ_BACKOFF_S * 2 ** attempt
            time.sleep(pause)
            waited += pause
    try:
        return read()
    except OSError as err:
        raise ReadError(f"cannot read image {name!r}: {type(err).__name__}: {err} "
                        f"({READ_TRIES} tries over {waited:.1f} s)") from None


def decode_rgb(data: bytes, path: str = "<bytes>") -> np.ndarray:
    """Decode image bytes to uint8 (H, W, 3) RGB, or raise CorruptImageError naming `path`."""
    from PIL import Image  # Pillow is a hard dependency; imported here to keep import light

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return to_rgb(img)
    except Exception as e:  # Pillow raises several types (UnidentifiedImageError, OSError, ...)
        raise CorruptImageError(f"cannot decode image {path!r}: {type(e).__name__}: {e}") from e


def to_rgb(img) -> np.ndarray:
    """uint8 (H, W, 3) RGB of a loaded PIL image of any mode.

    16-bit grayscale ('I;16*', and 'I' as Pillow opens 16-bit PNGs) keeps its top 8 bits, as
    Pillow already does for 16-bit RGB files; 'F' (float) is clipped to 0..255; every other
    mode (L, LA, P, RGBA, CMYK, 1, ...) goes through Pillow's own RGB conversion.
    """
    if img.mode.startswith("I"):
        wide = np.clip(np.asarray(img, dtype=np.int64), 0, 65535) >> 8
        return np.repeat(wide.astype(np.uint8)[..., None], 3, axis=-1)
    if img.mode == "F":
        flat = np.clip(np.rint(np.asarray(img, dtype=np.float32)), 0, 255)
        return np.repeat(flat.astype(np.uint8)[..., None], 3, axis=-1)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def check_on_corrupt(on_corrupt: str) -> str:
    """Validate the data.on_corrupt option."""
    schema.check_choice("data.on_corrupt", on_corrupt)
    return on_corrupt


def is_image_name(name: str) -> bool:
    """True for file names with a known image extension (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


class ImageReadError(ValueError):
    """An image file that does not exist or does not decode."""


def read_image(path: str) -> np.ndarray:
    """uint8 (H, W, 3) RGB of an image file (`data.decode.decode_rgb`: grayscale, palette,
    RGBA, CMYK -> RGB, 16-bit scaled to 8 bits; no EXIF rotation, as torchvision's and this
    project's pipelines). Raises ImageReadError."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageReadError(f"{path}: is a directory") from None
    except OSError as err:
        raise ImageReadError(f"{path}: cannot read it ({err.strerror or err})") from None
    try:
        return decode_rgb(data, path)
    except CorruptImageError as err:
        cause = err.__cause__
        if type(cause).__name__ == "UnidentifiedImageError":
            raise ImageReadError(f"{path}: not an image Pillow can read") from None
        raise ImageReadError(f"{path}: corrupt or truncated image ({cause})") from None

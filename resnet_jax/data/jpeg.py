"""The fast path of a colour (YCbCr) JPEG: decode only what a view of it needs.

A training view is a window of the image resized to size x size (`augment`), and the window
is drawn before anything is decoded, so:
- region decoding: only the rows and columns that the view reads (`augment.region_of`) go
  through the IDCT, upsampling and colour conversion, and nothing below them is decoded (libjpeg-turbo's
  `jpeg_crop_scanline` / `jpeg_skip_scanlines`, what tf.data's `decode_and_crop_jpeg` does),
  through the CPU decoder of `nvidia-nvimgcodec-cu12` (a wheel that bundles libjpeg-turbo and
  needs no GPU, no compiler and no system library). Its pixels are bitwise those of the full
  decode cut to the region, which is what simplejpeg gives (fast integer IDCT, fancy chroma
  upsampling, EXIF orientation not applied), so a view does not depend on which of the two
  decoded it (tests/data/test_jpeg.py);
- reduced-scale decoding: a window at least 4 (8) times the output size each way is decoded
  at 1/4 (1/8) scale by simplejpeg (libjpeg-turbo's SIMD scaled IDCT). Not at 1/2: the
  entropy decoding of the whole file, which no scale saves, dominates there, and the region
  decode at full scale was faster (benchmarks/README.md, "Input pipeline");
- where nvimgcodec is not installed (its wheels are Linux x86-64 / aarch64 only): simplejpeg's
  full decode cut to the region: the same pixels, slower.

Everything else returns None and goes through `decode.decode_rgb` (`augment.crop_resize`):
grayscale and CMYK JPEGs, other formats under any name, and a JPEG that does not end with
its end-of-image marker (a file cut short: a region above the cut would decode without an
error, so such a file takes the full decode, which names it), or that the fast decoders
refuse. Damage inside the entropy-coded data of a complete file is not seen where the region
decoder skips it (as with tf.data's `decode_and_crop_jpeg`).
"""
from __future__ import annotations

import os
import threading
from typing import Optional, Tuple

import numpy as np

Region = Tuple[int, int, int, int]  # y, x, height, width in pixels of the image
REDUCED_FACTORS = (8, 4)  # the scales 1/f that simplejpeg decodes at, largest first
_EOI = b"\xff\xd9"
_local = threading.local()  # one nvimgcodec decoder per thread: it is not thread-safe
_nvimgcodec: list = []      # [module or None], once per process
_importing = threading.Lock()  # two threads must not swap file descriptor 2 at once


def header(data: bytes) -> Optional[Tuple[int, int]]:
    """(height, width) of a colour JPEG that the fast path decodes, else None."""
    import simplejpeg
    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except (ValueError, TypeError):
        return None
    return (h, w) if colorspace == "YCbCr" else None


def decode_factor(window, size: int) -> int:
    """1, or the largest f of `REDUCED_FACTORS` that keeps the window at least `size`
    pixels each way at 1/f scale."""
    return next((f for f in REDUCED_FACTORS if min(window[2], window[3]) >= f * size), 1)


def is_whole(data: bytes) -> bool:
    """True when the file ends with the end-of-image marker (trailing zero bytes allowed)."""
    return data[-2:] == _EOI or data.rstrip(b"\0")[-2:] == _EOI


def _module():
    """nvidia.nvimgcodec, imported once per process, or None where it is not installed. Its
    import prints a line per GPU codec it cannot load (no CUDA here; none is used): kept off
    the console, as its log (PYNVIMGCODEC_VERBOSITY=0, unless the user set it)."""
    with _importing:
        if not _nvimgcodec:
            os.environ.setdefault("PYNVIMGCODEC_VERBOSITY", "0")
            saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 2)
            try:
                from nvidia import nvimgcodec
            except ImportError:
                nvimgcodec = None
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                os.close(null)
            _nvimgcodec.append(nvimgcodec)
    return _nvimgcodec[0]


def region_decoder():
    """(module, decoder, params) of this thread's nvimgcodec CPU decoder, or None."""
    state = getattr(_local, "state", None)
    if state is None:
        nv = _module()
        state = () if nv is None else (nv, nv.Decoder(
            device_id=nv.NVIMGCODEC_DEVICE_CPU_ONLY, max_num_cpu_threads=1,
            backends=[nv.Backend(nv.BackendKind.CPU_ONLY)], options=":fast_idct=1"),
            nv.DecodeParams(apply_exif_orientation=False))
        _local.state = state
    return state or None


def region_pixels(data: bytes, region: Region) -> Optional[np.ndarray]:
    """uint8 (height, width, 3) RGB of a region of a colour JPEG (nvimgcodec), or None."""
    state = region_decoder()
    if state is None:
        return None
    nv, decoder, params = state
    y, x, h, w = region
    try:
        stream = nv.CodeStream(data).get_sub_code_stream(region=nv.Region(y, x, y + h, x + w))
        image = decoder.decode(stream, params=params)
    except Exception:  # noqa: BLE001 - whatever it refuses goes the general way
        return None
    return None if image is None else np.asarray(image.cpu())


def decode_region(data: bytes, shape: Tuple[int, int], region: Region, factor: int):
    """(pixels, origin, scale) of a region of a colour JPEG of `shape` (`header`): the
    region's pixels (at 1/factor scale, or more of the image where a region decoder is not
    installed), the original coordinates (y, x) of their first pixel and their scale
    (sy, sx); None when the fast path cannot decode the file."""
    import simplejpeg
    if not is_whole(data):
        return None
    if factor == 1:
        img = region_pixels(data, region)
        if img is not None:
            return img, region[:2], (1.0, 1.0)
    try:
        # min_factor acts only with min_height / min_width: asking for the image's size at
        # 1/f makes 1/f the one scale that satisfies both.
        img = simplejpeg.decode_jpeg(data, fastdct=True, min_factor=factor,
                                     min_height=-(-shape[0] // factor),
                                     min_width=-(-shape[1] // factor))
    except ValueError:
        return None  # a damaged JPEG: decode_rgb names it (or reads what it can)
    if img.shape[:2] != (-(-shape[0] // factor), -(-shape[1] // factor)):
        return None  # not the scale asked for: the general way
    y, x, h, w = region  # pixel k at 1/f is the average of pixels [k f, (k + 1) f)
    y0, x0 = y // factor, x // factor
    y1, x1 = -(-(y + h) // factor), -(-(x + w) // factor)
    return img[y0:y1, x0:x1], (y0 * factor, x0 * factor), (1 / factor, 1 / factor)

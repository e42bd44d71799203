"""The fast path of a colour (YCbCr) JPEG: decode only what a view of it needs.

A training view is a window of the image resized to size x size (`augment`), and the window
is drawn before anything is decoded, so:
- region decoding: only the rows and columns that the view reads (`augment.region_of`) go
  through the IDCT, upsampling and colour conversion, and nothing below them is decoded
  (libjpeg-turbo's `jpeg_crop_scanline` / `jpeg_skip_scanlines`, what tf.data's
  `decode_and_crop_jpeg` does),
  through the CPU decoder of `nvidia-nvimgcodec-cu12` (a wheel that bundles libjpeg-turbo and
  needs no GPU, no compiler and no system library). Its pixels are bitwise those of the full
  decode cut to the region, which is what simplejpeg gives (fast integer IDCT, fancy chroma
  upsampling, EXIF orientation not applied), so a view does not depend on which of the two
  decoded it (tests/data/test_jpeg.py);
- reduced-scale decoding: a window at least 4 (8) times the output size each way is decoded
  at 1/4 (1/8) scale by simplejpeg (libjpeg-turbo's SIMD scaled IDCT). Not at 1/2: the
  entropy decoding of the whole file, which no scale saves, dominates there, and the region
  decode at full scale was faster (benchmarks/README.md, "Input pipeline");
- where nvimgcodec is not installed (its wheels are Linux x86-64 / aarch64 only) or fails to
  load (said once in the log): simplejpeg's full decode cut to the region: the same pixels,
  slower.

Everything else returns None and goes through `decode.decode_rgb` (`augment.crop_resize`):
grayscale and CMYK JPEGs, other formats under any name, and a JPEG that does not end with
its end-of-image marker (a file cut short: a region above the cut would decode without an
error, so such a file takes the full decode, which names it), or that the fast decoders
refuse. Damage inside the entropy-coded data of a complete file (libjpeg's "Corrupt JPEG
data" warnings) is decoded through as libjpeg-turbo does, on every path (simplejpeg with
strict=False, as nvimgcodec): the same pixels with or without nvimgcodec, and at 1/4 scale
not Pillow's instead; as with tf.data's `decode_and_crop_jpeg`, damage below a window is not
read. nvimgcodec's libjpeg-turbo prints such a warning on stderr (from C, with no switch to
turn it off); tf.data prints the same.
"""
from __future__ import annotations

import glob
import logging
import os
import tempfile
import threading
from typing import Optional, Tuple

import numpy as np

log = logging.getLogger(__name__)

Region = Tuple[int, int, int, int]  # y, x, height, width in pixels of the image
REDUCED_FACTORS = (8, 4)  # the scales 1/f that simplejpeg decodes at, largest first
_EOI = b"\xff\xd9"
_local = threading.local()  # one nvimgcodec decoder per thread: it is not thread-safe
_nvimgcodec: list = []      # [module or None], once per process
_loading = threading.Lock()  # the first threads to decode: one loads, the others wait


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


def _import_nvimgcodec():
    """nvidia.nvimgcodec with its CPU JPEG decoder (libjpeg-turbo extension) alone. It loads
    every extension of its directory at import, and those of the GPU codecs (nvJPEG,
    nvJPEG2000, nvTIFF: CUDA libraries, absent here, none used) each print lines on stderr
    when they fail to load: the import reads a directory holding a link to the one it needs
    (NVIMGCODEC_EXTENSIONS_PATH, set for the import only, unless the user set it). Nothing
    else of the process changes (no file descriptor is redirected: other threads' output
    stays), and no other decoder can answer for libjpeg-turbo (its OpenCV extension would
    give other pixels)."""
    import importlib.util
    os.environ.setdefault("PYNVIMGCODEC_VERBOSITY", "0")  # its own log, as quiet
    spec = importlib.util.find_spec("nvidia.nvimgcodec")
    if spec is None:
        raise ModuleNotFoundError("no nvidia.nvimgcodec", name="nvidia.nvimgcodec")
    found = [path for d in spec.submodule_search_locations or ()
             for path in glob.glob(os.path.join(d, "extensions", "libjpeg_turbo_ext.so*"))]
    if "NVIMGCODEC_EXTENSIONS_PATH" in os.environ or not found:
        from nvidia import nvimgcodec
        return nvimgcodec
    with tempfile.TemporaryDirectory(prefix="nvimgcodec-jpeg-") as only:
        os.symlink(found[0], os.path.join(only, os.path.basename(found[0])))
        os.environ["NVIMGCODEC_EXTENSIONS_PATH"] = only
        try:
            from nvidia import nvimgcodec
        finally:
            del os.environ["NVIMGCODEC_EXTENSIONS_PATH"]
    return nvimgcodec


def _unavailable(error: BaseException) -> None:
    """Says once in this process that nvimgcodec cannot be used; None."""
    log.warning("no JPEG region decoder (nvimgcodec: %s: %s): decoding whole JPEGs with "
                "simplejpeg instead (the same pixels, slower)", type(error).__name__, error)


def _module():
    """nvidia.nvimgcodec, loaded once per process, or None: not installed, or failing to load
    (an OSError of a library it links, ...: said once; a run must not stop for it)."""
    with _loading:
        if not _nvimgcodec:
            try:
                nv = _import_nvimgcodec()
            except ModuleNotFoundError as e:
                nv = None if e.name in ("nvidia", "nvidia.nvimgcodec") else _unavailable(e)
            except Exception as e:  # noqa: BLE001
                nv = _unavailable(e)
            _nvimgcodec.append(nv)
    return _nvimgcodec[0]


def region_decoder():
    """(module, decoder, params) of this thread's nvimgcodec CPU decoder, or None."""
    state = getattr(_local, "state", None)
    if state is None:
        state, nv = (), _module()
        if nv is not None:
            try:
                state = (nv, nv.Decoder(
                    device_id=nv.NVIMGCODEC_DEVICE_CPU_ONLY, max_num_cpu_threads=1,
                    backends=[nv.Backend(nv.BackendKind.CPU_ONLY)], options=":fast_idct=1"),
                    nv.DecodeParams(apply_exif_orientation=False))
            except Exception as e:  # noqa: BLE001 - as a failed import: said once, for all
                with _loading:
                    if _nvimgcodec[0] is not None:
                        _nvimgcodec[0] = _unavailable(e)
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
    img = None if image is None else np.asarray(image.cpu())
    # Not the region (a decoder that ignored it would give the whole image): the general way.
    return img if img is not None and img.shape == (h, w, 3) else None


def decode_scaled(data: bytes, shape: Tuple[int, int], factor: int) -> Optional[np.ndarray]:
    """uint8 RGB of a whole colour JPEG of `shape` at 1/factor scale (simplejpeg), or None
    where it cannot. Not strict: through damaged entropy-coded data as nvimgcodec decodes."""
    import simplejpeg
    scaled = -(-shape[0] // factor), -(-shape[1] // factor)
    try:
        # min_factor acts only with min_height / min_width: asking for the image's size at
        # 1/f makes 1/f the one scale that satisfies both.
        img = simplejpeg.decode_jpeg(data, fastdct=True, strict=False, min_factor=factor,
                                     min_height=scaled[0], min_width=scaled[1])
    except ValueError:
        return None  # not decodable: decode_rgb names it (or reads what it can)
    return img if img.shape[:2] == scaled else None  # not the scale asked for: general way


def cut(img: np.ndarray, region: Region, factor: int):
    """(pixels, origin, scale) of a region of an image decoded at 1/factor scale: the pixels
    covering it, the original coordinates (y, x) of their first and their scale (sy, sx)."""
    y, x, h, w = region  # pixel k at 1/f is the average of pixels [k f, (k + 1) f)
    y0, x0 = y // factor, x // factor
    y1, x1 = -(-(y + h) // factor), -(-(x + w) // factor)
    return img[y0:y1, x0:x1], (y0 * factor, x0 * factor), (1 / factor, 1 / factor)


def decode_region(data: bytes, shape: Tuple[int, int], region: Region, factor: int):
    """(pixels, origin, scale) of a region of a colour JPEG of `shape` (`header`): the
    region's pixels (at 1/factor scale, or more of the image where a region decoder is not
    installed), the original coordinates (y, x) of their first pixel and their scale
    (sy, sx); None when the fast path cannot decode the file."""
    if not is_whole(data):
        return None
    if factor == 1:
        img = region_pixels(data, region)
        if img is not None:
            return img, region[:2], (1.0, 1.0)
    img = decode_scaled(data, shape, factor)
    return None if img is None else cut(img, region, factor)

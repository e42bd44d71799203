"""The fast JPEG path (resnet_jax/data/jpeg.py): region decoding is bitwise the full decode cut
to the region (the pixels simplejpeg gave before it), whatever the chroma subsampling, scan
mode, restart markers or EXIF orientation; reduced-scale decoding really decodes at 1/4 and
1/8; a file cut short is never decoded in part; without nvimgcodec the views are the same,
and so are those of a damaged but complete file on every path; an nvimgcodec that fails to
load is said once, one that ignores the region is not used, and loading it prints nothing."""
import os
import platform
import sys

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from resnet_jax.data import augment, jpeg
from resnet_jax.data.decode import CorruptImageError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

KINDS = ("4:2:0", "4:2:2", "4:4:4", "progressive", "restart markers", "exif rotated", "4:4:0",
         "4:1:1")


def variants(helpers):
    """kind -> a colour JPEG of 203 x 261 (not a multiple of any block size)."""
    img, encode = helpers.photo(203, 261), helpers.encode
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90": decoders that apply it give another shape
    return dict(zip(KINDS, (
        encode(img, subsampling=2), encode(img, subsampling=1), encode(img, subsampling=0),
        encode(img, progressive=True), encode(img, restart_marker_blocks=3),
        encode(img, exif=exif.tobytes()), simplejpeg.encode_jpeg(img, 85, colorsubsampling="440"),
        simplejpeg.encode_jpeg(img, 85, colorsubsampling="411")), strict=True))


def regions(h, w, n, seed=0):
    """n random regions of an h x w image, the four corners' edges among them."""
    rng = np.random.default_rng(seed)
    out = [(0, 0, h, w), (0, 0, 1, 1), (h - 1, w - 1, 1, 1), (0, w - 17, h, 17)]
    while len(out) < n:
        ch, cw = int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1))
        out.append((int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw))
    return out


def test_the_region_decoder_is_installed_where_its_wheels_exist():
    """setup.cfg installs nvidia-nvimgcodec-cu12 on Linux x86-64 / aarch64: there the fast
    path must really be the region decoder, not the slower fallback."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "aarch64"):
        pytest.skip("no nvimgcodec wheel for this platform")
    assert jpeg.region_decoder() is not None


@pytest.mark.parametrize("kind", KINDS)
def test_region_decoding_is_bitwise_the_full_decode_cut_to_the_region(kind, helpers):
    """Measured, not assumed: libjpeg-turbo decodes a cropped region with one extra column
    each side and the upsampling context rows, so its edges are those of the full decode."""
    if jpeg.region_decoder() is None:
        pytest.skip("nvimgcodec is not installed")
    data = variants(helpers)[kind]
    full = simplejpeg.decode_jpeg(data, fastdct=True)  # the pixels before region decoding
    assert full.shape == (203, 261, 3) and jpeg.header(data) == (203, 261)
    for y, x, h, w in regions(203, 261, 60):
        np.testing.assert_array_equal(jpeg.region_pixels(data, (y, x, h, w)),
                                      full[y:y + h, x:x + w], f"{kind} {(y, x, h, w)}")


def test_reduced_scale_decoding_happens_where_the_window_is_4_or_8_times_the_output(helpers):
    """The decoded pixels' size is checked, not the factor's arithmetic (simplejpeg ignores
    min_factor unless min_height / min_width are given: it decoded at full size before)."""
    data = helpers.encode(helpers.photo(1000, 1800, grain=0), quality=70)
    assert jpeg.decode_factor((0, 0, 895, 4000), 224) == 1  # 1/2 is never used (measured)
    assert jpeg.decode_factor((0, 0, 896, 1000), 224) == 4
    assert jpeg.decode_factor((0.5, 0, 1792, 1792), 224) == 8
    for factor in (4, 8):
        img, origin, scale = jpeg.decode_region(data, (1000, 1800), (0, 0, 1000, 1800), factor)
        assert img.shape == (-(-1000 // factor), 1800 // factor, 3)
        assert origin == (0, 0) and scale == (1 / factor, 1 / factor)
        img, origin, _ = jpeg.decode_region(data, (1000, 1800), (101, 37, 899, 901), factor)
        assert origin == (101 // factor * factor, 37 // factor * factor)  # pixels covering it
        assert img.shape[:2] == (-(-1000 // factor) - 101 // factor,
                                 -(-938 // factor) - 37 // factor)
    img, origin, scale = jpeg.decode_region(data, (1000, 1800), (3, 5, 895, 900), 1)
    if jpeg.region_decoder() is not None:
        assert img.shape[:2] == (895, 900) and origin == (3, 5) and scale == (1.0, 1.0)


def test_a_file_cut_short_is_never_decoded_in_part(helpers):
    """The window lies above the cut, where a region decoder would not notice it: the file
    takes the full decode, which names it."""
    data = helpers.encode(helpers.photo(400, 300))
    cut = data[:len(data) * 3 // 4]
    assert jpeg.header(cut) == (400, 300)
    assert jpeg.decode_region(cut, (400, 300), (0, 0, 50, 50), 1) is None
    with pytest.raises(CorruptImageError, match="cut.jpg"):
        augment.crop_resize(cut, "cut.jpg", lambda h, w: (0, 0, 50, 50), 32, crop=True)
    assert jpeg.is_whole(data + b"\0\0") and not jpeg.is_whole(data[:-1])


def without_region_decoder(monkeypatch):
    """This test's decodes as where nvimgcodec is not installed."""
    monkeypatch.setattr(jpeg, "region_decoder", lambda: None)


def scale_views(data, draws=30, crop=False):
    """The views of `draws` scale-augmentation windows of `data` (generators 0, 1, ...)."""
    return [augment.crop_resize(data, "x", lambda h, w, i=i: augment.scale_window(
        h, w, np.random.default_rng(i)), 224, crop) for i in range(draws)]


def test_views_are_the_same_without_the_region_decoder(monkeypatch, helpers):
    """Where nvimgcodec has no wheel, simplejpeg's full decode cut to the window gives the
    same pixels: a batch does not depend on the platform. (Where nvimgcodec is absent both
    sides are that path: nothing to compare.)"""
    if jpeg.region_decoder() is None:
        pytest.skip("nvimgcodec is not installed")
    data = helpers.encode(helpers.photo(375, 500, seed=4))
    fast = scale_views(data)
    without_region_decoder(monkeypatch)
    for i, (ours, want) in enumerate(zip(scale_views(data), fast, strict=True)):
        np.testing.assert_array_equal(ours, want, f"draw {i}")


def damaged(helpers, h, w):
    """A complete colour JPEG with 40 bytes of its entropy-coded data overwritten halfway
    (it still ends with its end-of-image marker): libjpeg warns of corrupt data."""
    data = helpers.encode(helpers.photo(h, w))
    at = (data.index(b"\xff\xda") + len(data)) // 2
    return data[:at] + bytes(range(7, 47)) + data[at + 40:]


def test_a_damaged_complete_jpeg_gives_the_same_pixels_on_every_path(monkeypatch, helpers):
    """Region decoding (nvimgcodec decodes through the damage), the full decode of a platform
    without nvimgcodec and the 1/4-scale decode all decode such a file as libjpeg-turbo does
    (not strict), bitwise alike at full scale, where a strict simplejpeg sent it to Pillow
    on the last two (other pixels: Pillow's IDCT) and the view depended on the platform."""
    bad = damaged(helpers, 400, 300)
    with pytest.raises(ValueError, match="Corrupt JPEG data"):
        simplejpeg.decode_jpeg(bad, strict=True)
    views = scale_views(bad, draws=8)  # windows above, across and below the damage
    big = damaged(helpers, 1000, 1000)
    quarter = jpeg.decode_region(big, (1000, 1000), (0, 0, 1000, 1000), 4)
    assert quarter is not None and quarter[0].shape == (250, 250, 3)
    if jpeg.region_decoder() is None:  # `views` came from the full decode: nothing to compare
        pytest.skip("nvimgcodec is not installed (the 1/4 decode above was checked)")
    without_region_decoder(monkeypatch)
    for i, (ours, want) in enumerate(zip(scale_views(bad, draws=8), views, strict=True)):
        np.testing.assert_array_equal(ours, want, f"draw {i}")


class FakeNvimgcodec:
    """What `region_decoder` uses of nvidia.nvimgcodec, with a Decoder of our own."""
    NVIMGCODEC_DEVICE_CPU_ONLY = -99999
    BackendKind = type("BackendKind", (), {"CPU_ONLY": 1})

    def __init__(self, decoder):
        self.Decoder = decoder

    Backend = DecodeParams = staticmethod(lambda *args, **kwargs: None)


@pytest.fixture
def fresh_loader(monkeypatch):
    """jpeg's per-process and per-thread caches of nvimgcodec emptied for this test."""
    import threading
    monkeypatch.setattr(jpeg, "_local", threading.local())
    monkeypatch.setattr(jpeg, "_nvimgcodec", [])


@pytest.mark.parametrize("failure", ["import", "decoder"])
def test_a_region_decoder_that_fails_to_load_is_said_once_and_changes_no_pixel(
        failure, monkeypatch, caplog, fresh_loader, helpers):
    """An nvimgcodec that raises at import (OSError: a library it links is missing) or whose
    CPU decoder cannot be made (RuntimeError) is said in one log line, then every thread
    decodes without it: the same pixels, no error."""
    import builtins
    import importlib.util
    import threading
    if importlib.util.find_spec("nvidia.nvimgcodec") is None:
        pytest.skip("nvimgcodec is not installed")
    data = helpers.encode(helpers.photo(240, 320))
    with monkeypatch.context() as m:  # (nvimgcodec not loaded: the caches stay empty)
        without_region_decoder(m)
        without = scale_views(data, draws=3)
    real_import = builtins.__import__

    def failing_decoder(**options):
        raise RuntimeError("Internal error - Could not create decoder. Code: 2")

    def fake_import(name, *args, **kwargs):
        if not name.startswith("nvidia"):
            return real_import(name, *args, **kwargs)
        if failure == "import":
            raise OSError("libnvimgcodec.so.0: cannot open shared object file")
        return type("nvidia", (), {"nvimgcodec": FakeNvimgcodec(failing_decoder)})

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with caplog.at_level("WARNING", logger=jpeg.__name__):
        for i, view in enumerate(scale_views(data, draws=3)):
            np.testing.assert_array_equal(view, without[i])
        in_thread = []  # another thread: its own decoder would be made, but is not tried again
        other = threading.Thread(target=lambda: in_thread.extend(scale_views(data, 1)))
        other.start()
        other.join()
        np.testing.assert_array_equal(in_thread[0], without[0])
    lines = [r for r in caplog.records if r.name == jpeg.__name__]
    assert len(lines) == 1 and "region decoder" in lines[0].getMessage(), lines
    assert jpeg.region_decoder() is None


def test_a_region_decoder_that_ignores_the_region_is_not_used(monkeypatch, helpers):
    """Its output must have the region's shape; the whole image instead (a decoder that ignored
    the region) would be used as the region: the general way instead."""
    data = helpers.encode(helpers.photo(240, 320))
    whole = simplejpeg.decode_jpeg(data, fastdct=True)
    image = type("Image", (), {"cpu": lambda self: whole})()
    decoder = type("Decoder", (), {"decode": lambda self, stream, params: image})()
    stream = type("CodeStream", (), {"get_sub_code_stream": lambda self, region: self})
    nv = type("nv", (), {"CodeStream": lambda data: stream(), "Region": lambda *a: a})
    monkeypatch.setattr(jpeg, "region_decoder", lambda: (nv, decoder, None))
    assert jpeg.region_pixels(data, (10, 20, 30, 40)) is None
    views = scale_views(data, draws=5)
    without_region_decoder(monkeypatch)
    for i, (ours, want) in enumerate(zip(scale_views(data, draws=5), views, strict=True)):
        np.testing.assert_array_equal(ours, want, f"draw {i}")


def test_loading_the_region_decoder_prints_nothing_and_leaves_stderr_alone():
    """nvimgcodec's import printed a line per GPU codec it could not load (no CUDA here),
    which was kept off the console by pointing file descriptor 2 at /dev/null meanwhile, for
    every thread of the process. Now only its CPU JPEG extension is loaded: nothing to hide,
    and fd 2 is never redirected (a new process: the import happens once per process)."""
    import subprocess
    if jpeg.region_decoder() is None:
        pytest.skip("nvimgcodec is not installed")
    code = ("import os\n"
            "calls = []\n"
            "os.dup2 = lambda *a, **k: calls.append(a)\n"
            "from resnet_jax.data import jpeg\n"
            "assert jpeg.region_decoder() is not None\n"
            "print(calls)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": ROOT})
    assert (out.stdout, out.stderr) == ("[]\n", "")

"""The fast JPEG path (resnet_jax/data/jpeg.py): region decoding is bitwise the full decode cut
to the region (the pixels simplejpeg gave before it), whatever the chroma subsampling, scan
mode, restart markers or EXIF orientation; reduced-scale decoding really decodes at 1/4 and
1/8; a file cut short is never decoded in part; without nvimgcodec the views are the same."""
import platform
import sys

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from resnet_jax.data import augment, jpeg
from resnet_jax.data.decode import CorruptImageError


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


def test_views_are_the_same_without_the_region_decoder(monkeypatch, helpers):
    """Where nvimgcodec has no wheel, simplejpeg's full decode cut to the window gives the
    same pixels: a batch does not depend on the platform."""
    data = helpers.encode(helpers.photo(375, 500, seed=4))
    draws = [lambda h, w, i=i: augment.scale_window(h, w, np.random.default_rng(i))
             for i in range(30)]
    fast = [augment.crop_resize(data, "x", window_of, 224, False) for window_of in draws]
    monkeypatch.setattr(jpeg, "region_decoder", lambda: None)
    for i, window_of in enumerate(draws):
        np.testing.assert_array_equal(augment.crop_resize(data, "x", window_of, 224, False),
                                      fast[i], f"draw {i}")

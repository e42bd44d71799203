"""TF augmentation ops: scale-aug ranges, Inception crop, 10-crop windows, odd JPEGs."""
import io

import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")
augment = pytest.importorskip("resnet_jax.data.augment")


def jpeg_bytes(arr, fmt="JPEG"):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, quality=95)
    return tf.constant(buf.getvalue())


def test_scale_window_shorter_side_in_256_480_and_crop_224():
    shape = tf.constant([375, 500])
    sides = []
    for i in range(200):
        s, win = augment.scale_crop_window(shape, tf.constant([3, i], tf.int64))
        s, (y, x, h, w) = int(s), win.numpy()
        sides.append(s)
        assert 256 <= s <= 480
        # The window is what a 224 crop of the resized image covers in original pixels.
        assert abs(h - 224 * 375 / s) <= 1.0 and abs(w - 224 * 375 / s) <= 1.0
        assert y >= 0 and x >= 0 and y + h <= 375 and x + w <= 500
    assert min(sides) < 280 and max(sides) > 456  # the whole range is used


def test_scale_augment_output_and_flip_rate():
    # Left half dark, right half bright: a flip swaps the bright side.
    arr = np.zeros((300, 400, 3), np.uint8)
    arr[:, 200:] = 255
    data = jpeg_bytes(arr)
    flips = 0
    for i in range(100):
        out = augment.scale_augment(data, tf.constant([1, i], tf.int64)).numpy()
        assert out.shape == (224, 224, 3) and out.dtype == np.uint8
        flips += out[:, :20].mean() > out[:, -20:].mean()
    assert 30 < flips < 70  # about half the crops are flipped


def test_inception_crop_shape_and_determinism():
    arr = np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    data = jpeg_bytes(arr)
    a = augment.inception_crop(data, tf.constant([0, 5], tf.int64)).numpy()
    b = augment.inception_crop(data, tf.constant([0, 5], tf.int64)).numpy()
    c = augment.inception_crop(data, tf.constant([0, 6], tf.int64)).numpy()
    assert a.shape == (224, 224, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_ten_crop_returns_exact_windows():
    img = tf.constant(np.arange(6 * 8 * 3, dtype=np.int32).reshape(6, 8, 3))
    crops = augment.ten_crop(img, 4).numpy()
    x = img.numpy()
    want = [x[:4, :4], x[:4, 4:], x[2:, :4], x[2:, 4:], x[1:5, 2:6]]
    assert crops.shape == (10, 4, 4, 3)
    for i, w in enumerate(want):
        np.testing.assert_array_equal(crops[i], w)
        np.testing.assert_array_equal(crops[5 + i], w[:, ::-1])


def test_eval_views_center_and_multiscale_shapes():
    data = jpeg_bytes(np.full((300, 400, 3), 90, np.uint8))
    assert augment.eval_views(data, "center", 224, 256).shape == (1, 224, 224, 3)
    assert augment.eval_views(data, "10crop", 224, 256).shape == (10, 224, 224, 3)
    ms = augment.eval_views(data, "multiscale", scale=384).numpy()
    assert ms.shape == (2, 384, 384, 3)
    np.testing.assert_array_equal(ms[1], ms[0][:, ::-1])
    with pytest.raises(ValueError, match="eval_crops"):
        augment.eval_views(data, "5crop")


def test_odd_files_decode_to_rgb(helpers):
    for name, blob in helpers.odd_images(size=(300, 260)).items():
        data = tf.constant(blob)
        full = augment.decode_full(data).numpy()
        assert full.shape == (260, 300, 3), name
        out = augment.scale_augment(data, tf.constant([0, 1], tf.int64)).numpy()
        assert out.shape == (224, 224, 3), name
        if name == "cmyk.jpg":
            assert full[..., 0].mean() > 200 and full[..., 1:].mean() < 60

"""The one image-folder rule (hidden and empty folders are never classes) and labels by class
name; the one decode (16-bit images scaled, not clipped white)."""
import io
import logging
import os

import numpy as np
import pytest
from PIL import Image

from resnet_jax.data import folders
from resnet_jax.data.decode import decode_rgb
from resnet_jax.interop.predict import read_image


def test_hidden_and_empty_folders_are_not_classes(tmp_path, helpers, caplog):
    helpers.write_folder(str(tmp_path), classes=("cat", "dog"), per_class=2)
    helpers.write_folder(str(tmp_path / ".ipynb_checkpoints"), classes=("x",), per_class=1)
    os.makedirs(tmp_path / ".ipynb_checkpoints" / "cat", exist_ok=True)
    (tmp_path / "empty").mkdir()
    (tmp_path / "cat" / ".hidden.jpg").write_bytes(b"not an image")
    with caplog.at_level(logging.WARNING):
        paths, labels, names = folders.list_image_folder(str(tmp_path))
    assert names == ["cat", "dog"]
    assert labels.tolist() == [0, 0, 1, 1]
    assert all(".hidden" not in p for p in paths)
    assert "empty" in caplog.text and "left out" in caplog.text


def test_eval_labels_follow_the_training_class_names(tmp_path, helpers, caplog):
    # 'bird' missing from the eval split: 'cat' and 'dog' keep their training labels 1 and 2.
    helpers.write_folder(str(tmp_path), classes=("cat", "dog"), per_class=1)
    with caplog.at_level(logging.WARNING):
        _, labels, names = folders.list_image_folder(str(tmp_path), ["bird", "cat", "dog"])
    assert labels.tolist() == [1, 2] and names == ["bird", "cat", "dog"]
    assert "1 of the 3 training classes" in caplog.text and "bird" in caplog.text


def test_an_unknown_eval_class_is_refused_by_name(tmp_path, helpers):
    helpers.write_folder(str(tmp_path), classes=("cat", "zebra"), per_class=1)
    with pytest.raises(ValueError, match="'zebra' are not among the 2 training classes"):
        folders.list_image_folder(str(tmp_path), ["cat", "dog"])


def test_tar_member_parts_skip_hidden_entries():
    assert folders.path_parts("train/cat/1.jpg") == ["train", "cat", "1.jpg"]
    assert folders.path_parts("./train/cat/1.JPEG") == ["train", "cat", "1.JPEG"]
    assert folders.path_parts("train/.ipynb_checkpoints/1.jpg") is None
    assert folders.path_parts("__MACOSX/train/cat/._1.jpg") is None
    assert folders.path_parts("train/cat/notes.txt") is None


def _png(arr, mode=None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "PNG") if mode else Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def test_16bit_grayscale_png_is_scaled_not_white(tmp_path):
    ramp = (np.arange(16 * 16, dtype=np.uint32).reshape(16, 16) * 256).astype(np.uint16)
    data = _png(ramp)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # what makes it a 16-bit file
    out = decode_rgb(data, "ramp.png")
    assert out.dtype == np.uint8 and out.shape == (16, 16, 3)
    np.testing.assert_array_equal(out[..., 0], (ramp >> 8).astype(np.uint8))
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    # predict's reader is the same decode
    (tmp_path / "ramp.png").write_bytes(data)
    np.testing.assert_array_equal(read_image(str(tmp_path / "ramp.png")), out)


def test_8bit_modes_are_unchanged():
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    np.testing.assert_array_equal(decode_rgb(_png(gray), "g.png")[..., 1], gray)

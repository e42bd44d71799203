"""The streaming pipeline's bad files: an image that does not decode is named, or skipped and
replaced."""
import importlib.util
import os

import numpy as np
import pytest

from resnet_jax.data.decode import CorruptImageError

_spec = importlib.util.spec_from_file_location(
    "data_helpers", os.path.join(os.path.dirname(__file__), "conftest.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)
stream_config, make, take = helpers.stream_config, helpers.make, helpers.take
SIZE = 32


def test_corrupt_file_is_named_or_skipped_and_counted(tmp_path, helpers):
    helpers.write_folder(str(tmp_path / "train"), ("a", "b"), per_class=4, size=(40, 40))
    helpers.write_folder(str(tmp_path / "val"), ("a", "b"), per_class=1, size=(40, 40))
    (tmp_path / "train" / "b" / "zz_bad.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage" * 10)
    cfg = stream_config(path=str(tmp_path), train_augment="none")
    with pytest.raises(CorruptImageError, match="zz_bad.jpg"):
        take(make(cfg, batch=9).train_batches(0), 1)
    p = make(stream_config(path=str(tmp_path), train_augment="none", on_corrupt="skip"),
             batch=1)
    batches = take(p.train_batches(0), 8)  # the 8 readable files of epoch 0
    assert p.num_skipped == 1 and all(b["image"].shape == (1, SIZE, SIZE, 3) for b in batches)
    assert sorted(int(b["label"][0]) for b in batches) == [0] * 4 + [1] * 4


def test_corrupt_eval_image_is_named_or_skipped_and_masked(tmp_path, helpers):
    helpers.write_folder(str(tmp_path / "train"), ("a", "b"), per_class=4, size=(40, 40))
    helpers.write_folder(str(tmp_path / "val"), ("a", "b"), per_class=2, size=(40, 40))
    bad = tmp_path / "val" / "b" / "0001.jpg"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated
    with pytest.raises(CorruptImageError, match=r"0001.jpg' \(evaluation; set data.on_corrupt"):
        list(make(stream_config(path=str(tmp_path))).eval_batches())
    p = make(stream_config(path=str(tmp_path), on_corrupt="skip"))
    assert sum(int(b["mask"].sum()) for b in p.eval_batches()) == 3 and p.num_skipped == 1


def test_skip_replaces_a_corrupt_training_image_by_the_next_of_its_epoch(tmp_path, helpers):
    """With on_corrupt='skip' the batch of a step is still a function of the step: a resumed
    pipeline gives the same batches as one that read on."""
    helpers.write_folder(str(tmp_path / "train"), ("a", "b"), per_class=4, size=(40, 40))
    helpers.write_folder(str(tmp_path / "val"), ("a",), per_class=1, size=(40, 40))
    (tmp_path / "train" / "b" / "0002.jpg").write_bytes(b"not an image at all")
    cfg = stream_config(path=str(tmp_path), on_corrupt="skip")
    p = make(cfg, batch=4)
    run = take(p.train_batches(0), 4)
    assert p.num_skipped == 2  # the file once per epoch
    resumed = take(make(cfg, batch=4).train_batches(3), 1)
    np.testing.assert_array_equal(resumed[0]["image"], run[3]["image"])
    assert all(len(b["label"]) == 4 for b in run)

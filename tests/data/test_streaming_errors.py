"""The streaming pipeline's bad files: an image that does not decode is corrupt (named, or
skipped and replaced by a stated example); a file that cannot be read is a read error (retried,
then one line, whatever on_corrupt says), never skipped."""
import numpy as np
import pytest

from resnet_jax.data import decode
from resnet_jax.data.decode import CorruptImageError, ReadError


@pytest.fixture
def bad_tree(tmp_path, helpers):
    """train: a/0000-0003, b/0000-0003 and b/zz_bad.jpg (index 8, does not decode); val: 2."""
    helpers.write_folder(str(tmp_path / "train"), ("a", "b"), per_class=4, size=(40, 40))
    helpers.write_folder(str(tmp_path / "val"), ("a", "b"), per_class=1, size=(40, 40))
    (tmp_path / "train" / "b" / "zz_bad.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage" * 10)
    return str(tmp_path)


def test_corrupt_file_is_named_or_replaced_by_row_r_of_the_next_step(bad_tree, helpers):
    """'error': one line naming the file and the step. 'skip': the example at the same row of
    the next step of the epoch takes its place, with a view of its own (not the one it has in
    that step): every other file is read once, the batch holds no duplicate, the replacement
    carries its own label, and a pipeline opened at that step gives the same batch."""
    with pytest.raises(CorruptImageError, match=r"zz_bad.jpg' \(training step 0; set data"):
        cfg = helpers.stream_config(path=bad_tree, train_augment="none")
        helpers.take(helpers.make(cfg, batch=9).train_batches(0), 1)
    cfg = helpers.stream_config(path=bad_tree, on_corrupt="skip")
    p = helpers.make(cfg, batch=3)  # 9 files: 3 steps per epoch, nothing left over
    p.splits.train = counting = helpers.CountingRecords(p.splits.train)
    batches = helpers.take(p.train_batches(0), 3)
    perm = p.plan.permutation(0)
    at = int(np.flatnonzero(perm == 8)[0])
    step, row = divmod(at, 3)
    after = (step + 1) % 3
    replacement = int(perm[after * 3 + row])
    assert sorted(counting.reads) == sorted([*range(9), replacement])
    assert p.num_skipped == 1
    bad_batch = batches[step]["image"]
    assert len({bad_batch[i].tobytes() for i in range(3)}) == 3  # no duplicate in the batch
    labels = counting.records.labels
    assert batches[step]["label"][row] == labels[replacement]
    assert not np.array_equal(bad_batch[row], batches[after]["image"][row])
    resumed = helpers.take(helpers.make(cfg, batch=3).train_batches(step), 1)[0]
    np.testing.assert_array_equal(resumed["image"], bad_batch)


def test_skip_keeps_every_batch_full_across_epochs_and_a_resume(tmp_path, helpers):
    helpers.write_folder(str(tmp_path / "train"), ("a", "b"), per_class=4, size=(40, 40))
    helpers.write_folder(str(tmp_path / "val"), ("a",), per_class=1, size=(40, 40))
    (tmp_path / "train" / "b" / "0002.jpg").write_bytes(b"not an image at all")
    cfg = helpers.stream_config(path=str(tmp_path), on_corrupt="skip")
    p = helpers.make(cfg, batch=4)
    run = helpers.take(p.train_batches(0), 4)
    assert p.num_skipped == 2  # the file once per epoch
    resumed = helpers.take(helpers.make(cfg, batch=4).train_batches(3), 1)
    np.testing.assert_array_equal(resumed[0]["image"], run[3]["image"])
    assert all(len(b["label"]) == 4 for b in run)


def test_corrupt_eval_image_is_named_or_skipped_and_masked(tmp_path, helpers):
    helpers.write_folder(str(tmp_path / "train"), ("a", "b"), per_class=4, size=(40, 40))
    helpers.write_folder(str(tmp_path / "val"), ("a", "b"), per_class=2, size=(40, 40))
    bad = tmp_path / "val" / "b" / "0001.jpg"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated
    with pytest.raises(CorruptImageError, match=r"0001.jpg' \(evaluation; set data.on_corrupt"):
        list(helpers.make(helpers.stream_config(path=str(tmp_path))).eval_batches())
    p = helpers.make(helpers.stream_config(path=str(tmp_path), on_corrupt="skip"))
    assert sum(int(b["mask"].sum()) for b in p.eval_batches()) == 3 and p.num_skipped == 1


@pytest.fixture
def no_backoff(monkeypatch):
    monkeypatch.setattr(decode, "READ_BACKOFF_S", 0.0)


def test_a_transient_read_error_is_retried_and_changes_nothing(bad_tree, no_backoff, helpers):
    """Two failed reads, then the file reads: the batches are those of a clean read and
    nothing more is skipped (with on_corrupt='skip' too) than the corrupt file."""
    cfg = helpers.stream_config(path=bad_tree, on_corrupt="skip")
    clean = helpers.make(cfg, batch=3)
    clean.splits.train = counting = helpers.CountingRecords(clean.splits.train)
    ref = helpers.take(clean.train_batches(0), 3)
    p = helpers.make(cfg, batch=3)
    p.splits.train = flaky = helpers.CountingRecords(p.splits.train, bad=3, failures=2)
    got = helpers.take(p.train_batches(0), 3)
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
    assert flaky.reads.count(3) == counting.reads.count(3) + 2
    assert p.num_skipped == clean.num_skipped == 1  # the corrupt file only


@pytest.mark.parametrize("where", ["train", "eval"])
def test_a_lasting_read_error_is_one_line_saying_so_and_never_skipped(bad_tree, no_backoff,
                                                                      where, helpers):
    p = helpers.make(helpers.stream_config(path=bad_tree, on_corrupt="skip"), batch=3)
    records = p.splits.train if where == "train" else p.splits.eval
    flaky = helpers.CountingRecords(records, bad=1, failures=10 ** 6)
    if where == "train":
        p.splits.train = flaky
        step = int(np.flatnonzero(p.plan.permutation(0) == 1)[0]) // 3
        what, read = f"training step {step}", lambda: helpers.take(p.train_batches(0), 3)
    else:
        p.splits.eval = flaky
        what, read = "evaluation", lambda: list(p.eval_batches())
    with pytest.raises(ReadError) as caught:
        read()
    line = str(caught.value)
    assert "\n" not in line and isinstance(caught.value, OSError)
    assert line.startswith(f"cannot read image {flaky.name(1)!r} ({what}): ")
    assert "Input/output error" in line and f"{decode.READ_TRIES} tries" in line
    assert "a read error, not a corrupt image" in line
    assert flaky.reads.count(1) == decode.READ_TRIES and p.num_skipped == 0

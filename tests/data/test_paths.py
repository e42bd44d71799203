"""Remote and odd paths of the data commands: `prepare convert` into gs://, `prepare folder`
of a tree with two evaluation folders, file names that are not UTF-8."""
import importlib.util
import os

import pytest

from resnet_jax.data import prepare, sources

_sweeps = importlib.util.spec_from_file_location(
    "sweeps_helpers", os.path.join(os.path.dirname(__file__), "..", "sweeps", "conftest.py"))
sweeps_helpers = importlib.util.module_from_spec(_sweeps)
_sweeps.loader.exec_module(sweeps_helpers)
fake_gcs = sweeps_helpers.fake_gcs_fixture  # gs:// of etils epath served from memory


def test_prepare_convert_writes_array_record_files_into_gs(fake_gcs, tmp_path):
    """`prepare convert --data-dir gs://...` (the README's ImageNet command): the ArrayRecord
    writer opens local files only, so each file is written in a local temporary folder, then
    copied to its place in the bucket under a temporary name and renamed whole."""
    from array_record.python.array_record_module import ArrayRecordReader
    records = [b"first", b"second record", b"3"]
    n = prepare._write_array_record(iter(records), "gs://bucket/tfds/x/1.0.0/x-train"
                                                   ".array_record-00000-of-00001")
    assert n == 3
    assert sorted(fake_gcs) == ["/bucket/tfds/x/1.0.0/x-train.array_record-00000-of-00001"]
    local = tmp_path / "copy.array_record"
    local.write_bytes(fake_gcs[sorted(fake_gcs)[0]].getvalue())
    reader = ArrayRecordReader(str(local))
    assert reader.read(list(range(reader.num_records()))) == records
    reader.close()


@pytest.mark.parametrize("kind", ["folder", "tar"])
def test_prepare_folder_refuses_both_val_and_validation(tmp_path, kind, helpers):
    """Both are the tfds split 'validation': prepare kept one of them, training on the folder
    reads `val` (`folders.eval_split`): refused in one line, nothing written."""
    for split in ("train", "val", "validation"):
        helpers.write_folder(str(tmp_path / "tree" / split), ("a", "b"), per_class=1)
    path = str(tmp_path / "tree")
    if kind == "tar":
        path = str(tmp_path / "tree.tar")
        import tarfile
        with tarfile.open(path, "w") as tar:
            tar.add(str(tmp_path / "tree"), arcname="data")
    with pytest.raises(ValueError, match=r"both 'val' and 'validation'.*rename or remove one"):
        prepare.prepare_folder(path, "two_vals", str(tmp_path / "tfds"))
    assert not (tmp_path / "tfds").exists()


def test_a_file_name_that_is_not_utf8_is_read_on_every_path(tmp_path, helpers):
    """A name such as Latin-1 'caf\\xe9.jpg' on a UTF-8 system (os.fsencode, as the in-memory
    loader already read it): listed, read, named in messages; it stopped the whole folder
    with a UnicodeEncodeError naming no file."""
    helpers.write_folder(str(tmp_path / "train"), ("a", "b"), per_class=2, size=(40, 40))
    helpers.write_folder(str(tmp_path / "val"), ("a",), per_class=1, size=(40, 40))
    src = os.path.join(str(tmp_path / "train"), "a", "0000.jpg")
    odd = os.path.join(os.fsencode(str(tmp_path / "train")), b"a", b"caf\xe9.jpg")
    with open(src, "rb") as f, open(odd, "wb") as g:
        g.write(f.read())
    p = helpers.make(helpers.stream_config(path=str(tmp_path), train_augment="none"), batch=5)
    names = [p.splits.train.name(i) for i in range(len(p.splits.train))]
    assert os.fsdecode(odd) in names
    i = names.index(os.fsdecode(odd))
    assert p.splits.train.read(i)[0] == open(src, "rb").read()
    assert helpers.take(p.train_batches(0), 1)[0]["image"].shape == (5, 32, 32, 3)
    splits, _ = prepare.folder_splits(str(tmp_path))
    assert len(splits["train"]) == 5
    tar = str(tmp_path / "odd.tar")
    import tarfile
    with tarfile.open(tar, "w") as t:
        t.add(str(tmp_path / "train"), arcname="train")
    records = sources.open_splits(helpers.stream_config(source="tar", path=tar,
                                                        num_val_examples=1)).train
    # the copy under its non-UTF-8 name is listed and read (its source, a/0000.jpg, too)
    named = [i for i in range(len(records))
             if records.name(i).endswith(os.fsdecode(b"/a/caf\xe9.jpg"))]
    assert len(named) == 1, [records.name(i) for i in range(len(records))]
    assert records.read(named[0])[0] == open(src, "rb").read()

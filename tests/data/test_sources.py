"""Streaming sources: image tars read by offset, folders, tfds ArrayRecord; the held-out
split; every bad input as one line naming the file or split."""
import io
import os
import tarfile

import ml_collections
import numpy as np
import pytest
from PIL import Image

from resnet_jax.data import prepare, sources

SHARED_TAR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                          "shared", "data", "imagenette-224-train.tar")


def data_cfg(**over):
    cfg = ml_collections.ConfigDict(dict(
        pipeline="streaming", source="tar", name="", path="", data_dir="",
        num_val_examples=0, train_augment="scale", image_size=32, eval_resize=36,
        lighting_std=0.0, normalize="per_channel", eval_crops="center",
        multiscale_sizes=(32,), on_corrupt="error", synthetic_examples=1,
        num_classes=0, prefetch=2, workers=0))
    cfg.update(over)
    return cfg


def write_tar(path, members: dict, mode="w"):
    """members: {name: bytes, or None for a directory}."""
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def jpeg(seed, size=(24, 20)):
    buf = io.BytesIO()
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)
    Image.fromarray(arr).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def tar_path(tmp_path):
    members = {f"train/{c}/{i}.jpg": jpeg(10 * k + i)
               for k, c in enumerate(("cat", "dog", "eel")) for i in range(3)}
    members.update({"train/.ipynb_checkpoints/x.jpg": jpeg(99), "train/empty": None,
                    "val/cat/0.jpg": jpeg(50), "val/eel/0.jpg": jpeg(51),
                    "__MACOSX/train/cat/._0.jpg": b"junk"})
    path = str(tmp_path / "data.tar")
    write_tar(path, members)
    return path, members


def test_tar_records_read_by_offset_with_the_folder_rules(tar_path):
    path, members = tar_path
    s = sources.open_splits(data_cfg(path=path))
    assert s.class_names == ["cat", "dog", "eel"]  # hidden and empty folders are not classes
    assert len(s.train) == 9 and len(s.eval) == 2 and s.eval_split == "val"
    for i in range(len(s.train)):
        data, label = s.train.read(i)
        name = s.train.name(i).split(":", 1)[1]
        assert data == members[name] and s.class_names[label] == name.split("/")[1]
    # The eval split lacks 'dog': labels follow the training class names.
    assert sorted(s.eval.read(i)[1] for i in range(2)) == [0, 2]


def test_held_out_part_is_disjoint_the_same_every_time_and_by_name(tar_path):
    """By name: the held-out examples are those whose class/file hashes lowest (blake2b),
    checked here against that definition (tests/data/test_identity.py: deleting a file)."""
    import hashlib
    path, _ = tar_path
    s = sources.open_splits(data_cfg(path=path, num_val_examples=3))
    again = sources.open_splits(data_cfg(path=path, num_val_examples=3))
    train = {s.train.name(i) for i in range(len(s.train))}
    val = {s.eval.name(i) for i in range(len(s.eval))}
    assert len(train) == 6 and len(val) == 3 and not train & val
    assert val == {again.eval.name(i) for i in range(3)}
    names = [n.split(":", 1)[1].split("/", 1)[1] for n in sorted(train | val)]
    lowest = sorted(names, key=lambda n: hashlib.blake2b(n.encode(), digest_size=8).digest())
    assert {n.split(":", 1)[1].split("/", 1)[1] for n in val} == set(lowest[:3])
    with pytest.raises(ValueError, match="data.num_val_examples=9 must be in"):
        sources.open_splits(data_cfg(path=path, num_val_examples=9))


def test_bad_tars_and_folders_are_one_line_naming_them(tmp_path, tar_path):
    path, members = tar_path
    gz = str(tmp_path / "data.tar.gz")
    write_tar(gz, members, mode="w:gz")
    with pytest.raises(ValueError, match="is not an uncompressed tar"):
        sources.open_splits(data_cfg(path=gz))
    only_train = str(tmp_path / "train_only.tar")
    write_tar(only_train, {"train/a/0.jpg": jpeg(0)})
    with pytest.raises(ValueError, match="no evaluation split.*num_val_examples"):
        sources.open_splits(data_cfg(path=only_train))
    no_train = str(tmp_path / "no_train.tar")
    write_tar(no_train, {"test/a/0.jpg": jpeg(0)})
    with pytest.raises(ValueError, match="has no 'train' split.*splits there: test"):
        sources.open_splits(data_cfg(path=no_train))
    unknown = str(tmp_path / "unknown.tar")
    write_tar(unknown, {"train/a/0.jpg": jpeg(0), "val/zebra/0.jpg": jpeg(1)})
    with pytest.raises(ValueError, match="'zebra' are not among the 1 training classes"):
        sources.open_splits(data_cfg(path=unknown))
    os.makedirs(tmp_path / "folder" / "train" / "a")
    with pytest.raises(ValueError, match="no evaluation folder"):
        sources.open_splits(data_cfg(source="folder", path=str(tmp_path / "folder")))
    for err in (ValueError,):
        with pytest.raises(err, match="is not a file"):
            sources.open_splits(data_cfg(path=str(tmp_path / "missing.tar")))


@pytest.fixture
def array_record(tmp_path, tar_path):
    """The tar as a tfds ArrayRecord dataset (`resnet-jax prepare folder`)."""
    path, _ = tar_path
    prepare.prepare_folder(path, "tiny_photos", str(tmp_path / "tfds"))
    return str(tmp_path / "tfds")


def test_prepare_folder_round_trip_through_tfds_data_source(array_record, tar_path):
    path, members = tar_path
    s = sources.open_splits(data_cfg(source="tfds", name="tiny_photos", data_dir=array_record))
    assert s.class_names == ["cat", "dog", "eel"] and s.eval_split == "validation"
    got = sorted((s.train.read(i)[0], s.train.read(i)[1]) for i in range(len(s.train)))
    want = sorted((data, ["cat", "dog", "eel"].index(name.split("/")[1]))
                  for name, data in members.items() if name.startswith("train/") and data
                  and "ipynb" not in name)
    assert got == want  # the files' bytes as they are, labelled by class name
    with pytest.raises(ValueError, match="already prepared"):
        prepare.prepare_folder(path, "tiny_photos", array_record)


def test_tfds_bad_input_is_one_line_naming_the_split_or_file(array_record):
    with pytest.raises(ValueError, match="data.name='nope'"):
        sources.open_splits(data_cfg(source="tfds", name="nope", data_dir=array_record))
    shard = os.path.join(array_record, "tiny_photos", "1.0.0",
                         "tiny_photos-validation.array_record-00000-of-00001")
    os.remove(shard)
    with pytest.raises(ValueError, match=r"split 'validation': ArrayRecord file .*validation"
                                         r"\.array_record-00000-of-00001 is missing"):
        sources.open_splits(data_cfg(source="tfds", name="tiny_photos", data_dir=array_record))
    # Held out of train instead, the missing validation files are not needed.
    s = sources.open_splits(data_cfg(source="tfds", name="tiny_photos", data_dir=array_record,
                                     num_val_examples=2))
    assert (len(s.train), len(s.eval)) == (7, 2)


def test_a_tfrecord_only_dataset_is_refused_then_converted_without_tensorflow(tmp_path):
    """TFRecord (what imagenet2012 on GCS usually is): one line saying how to convert; then
    `prepare convert` (no TensorFlow: TFRecord files read directly) and it trains."""
    tf = pytest.importorskip("tensorflow")  # only to write the TFRecord fixture
    from resnet_jax.data.tf_import import tensorflow_datasets
    tfds = tensorflow_datasets()
    del tf

    class TinyTfrecord(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(), "label": tfds.features.ClassLabel(
                    names=["a", "b"])}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(6), "validation": self._generate_examples(3)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"image": jpeg(i), "label": i % 2}

    data_dir = str(tmp_path / "tfds")
    TinyTfrecord(data_dir=data_dir, file_format="tfrecord").download_and_prepare()
    cfg = data_cfg(source="tfds", name="tiny_tfrecord", data_dir=data_dir)
    with pytest.raises(ValueError, match=r"stored as tfrecord only.*resnet-jax prepare convert "
                                         r"--name tiny_tfrecord"):
        sources.open_splits(cfg)
    prepare.convert_tfrecord("tiny_tfrecord", data_dir)
    s = sources.open_splits(cfg)
    assert (len(s.train), len(s.eval)) == (6, 3)
    assert sorted(s.train.read(i)[0] for i in range(6)) == sorted(jpeg(i) for i in range(6))


def test_real_photographs_from_the_shared_tar(tmp_path):
    """A small subset of imagenette-224 (real ImageNet photographs) through the streaming
    pipeline: decode, the scale augmentation, held-out evaluation."""
    if not os.path.exists(SHARED_TAR):
        pytest.skip("../shared/data/imagenette-224-train.tar is not there")
    from resnet_jax import data
    members = {}
    with tarfile.open(SHARED_TAR) as tar:
        for m in tar:
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 3 and sum(k.startswith(f"train/{parts[1]}/")
                                                      for k in members) < 4:
                members[m.name] = tar.extractfile(m).read()
            if len(members) == 40:
                break
    path = str(tmp_path / "photos.tar")
    write_tar(path, members)
    cfg = data_cfg(path=path, num_val_examples=8, image_size=64, eval_resize=73,
                   eval_crops="10crop", lighting_std=0.1)
    p = data.make_pipeline(cfg, global_batch_size=8, eval_batch_size=4, seed=0)
    assert p.num_classes == 10 and (p.num_train_examples, p.num_eval_examples) == (32, 8)
    chunk = p.train_chunk(0, 2)
    assert chunk["image"].shape == (2, 8, 64, 64, 3) and chunk["image"].std() > 20
    ev = list(p.eval_batches())
    assert [b["image"].shape for b in ev] == [(4, 10, 64, 64, 3)] * 2
    assert sum(int(b["mask"].sum()) for b in ev) == 8
    p.close()


def test_imagenette_recipe_is_the_papers_imagenet_pipeline(tmp_path):
    from resnet_jax.config import load_config
    c = load_config(f"configs/imagenette.py:data={tmp_path}")  # any path: nothing is read
    d = c.data
    assert (d.pipeline, d.source, d.train_augment, d.lighting_std, d.num_val_examples) == (
        "streaming", "folder", "scale", 0.1, 947)
    assert (d.image_size, d.eval_resize, c.model.depth, c.optim.boundaries) == (
        224, 256, 18, (1500, 2250))
    small = load_config("configs/imagenette.py:size=112,steps=100,crops=multiscale").data
    assert (small.source, small.eval_resize, small.multiscale_sizes) == (
        "tar", 128, (112, 128, 192, 240, 320))
    with pytest.raises(ValueError, match="data.workers=-2 must be an integer >= -1"):
        load_config("configs/imagenette.py", ["--config.data.workers=-2"])


def test_a_bad_source_stops_train_with_one_line_and_writes_nothing(array_record, tmp_path,
                                                                   capsys):
    from resnet_jax.cli import main
    shard = os.path.join(array_record, "tiny_photos", "1.0.0",
                         "tiny_photos-train.array_record-00000-of-00001")
    os.remove(shard)
    workdir = tmp_path / "run"
    rc = main(["train", "--config", "configs/smoke.py", "--workdir", str(workdir),
               "--config.data.pipeline=streaming", "--config.data.source=tfds",
               "--config.data.name=tiny_photos", f"--config.data.data_dir={array_record}",
               "--config.data.num_val_examples=0", "--config.data.train_augment=scale",
               "--config.data.normalize=per_channel", "--config.data.eval_resize=20"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("resnet-jax train: error: tfds dataset 'tiny_photos' split "
                             "'train': ArrayRecord file ") and shard in err[0]
    assert not workdir.exists()

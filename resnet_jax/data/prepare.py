"""`resnet-jax prepare`: datasets the streaming pipeline reads by index (tfds ArrayRecord),
with no TensorFlow.

    resnet-jax prepare folder DATA --name my_photos --data-dir ~/tensorflow_datasets
    resnet-jax prepare convert --name imagenet2012 --data-dir gs://BUCKET/tfds

`folder`: an image folder or an uncompressed image tar (`split/<class>/<image>`: `train` and
any of val (named validation there)/validation/test; the rules of `data.folders`) -> a tfds dataset NAME 1.0.0
stored as ArrayRecord (features `image`: the file's bytes as they are, `label`: ClassLabel of
the training split's class names). Train on it with data.source=tfds, data.name=NAME,
data.data_dir=DIR.

`convert`: a tfds dataset prepared as TFRecord (the common case for imagenet2012 on GCS) gets
an ArrayRecord copy of every split beside its TFRecord files (same shards, same examples, the
serialized records copied as they are), and dataset_info.json names array_record as its file
format (TFRecord as an alternative: tfds' dataset classes, such as imagenet2012's, ignore
alternative formats), so `tfds.data_source` reads it; a tf.data reader of the same directory
passes `file_format='tfrecord'`. TFRecord files are read here directly
(the format is length-prefixed records), so this needs neither TensorFlow nor Beam (`tfds
convert_format` needs apache_beam at import). Each file is written under a temporary name
and renamed when whole; dataset_info.json is updated last, so an interrupted conversion is
run again from the start.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import shlex
import struct
from typing import Iterator, Optional

from resnet_jax.data import folders, sources

TFDS_SPLIT = {"val": "validation"}  # the tfds name of a folder's split


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", required=True, metavar="WHAT")
    folder = sub.add_parser("folder", help="an image folder or tar -> a tfds ArrayRecord "
                            "dataset")
    folder.add_argument("data", help="a folder or an uncompressed .tar of split/<class>/<image>")
    convert = sub.add_parser("convert", help="a tfds dataset stored as TFRecord -> add an "
                             "ArrayRecord copy")
    for p in (folder, convert):
        p.add_argument("--name", required=True, help="the tfds dataset name (snake_case)")
        p.add_argument("--data-dir", required=True, help="the tfds data directory")
    convert.add_argument("--version", default=None, help="dataset version (default: newest)")


def run(args: argparse.Namespace) -> int:
    if args.what == "folder":
        builder = prepare_folder(args.data, args.name, args.data_dir)
    else:
        builder = convert_tfrecord(args.name, args.data_dir, args.version)
    splits = ", ".join(f"{s} {v.num_examples:,}" for s, v in sorted(builder.info.splits.items()))
    names = [str(n) for n in builder.info.features["label"].names]
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    print(f"tfds dataset {args.name} in {builder.data_dir}: {splits} examples of "
          f"{len(names):,} classes ({shown}), ArrayRecord; train on it with\n"
          f"  {train_command(builder, args.name, args.data_dir, args.what == 'folder')}")
    return 0


def train_command(builder, name: str, data_dir: str, photos: bool) -> str:
    """The command that trains on the prepared dataset, as a user can paste it: photographs
    (`prepare folder`) with configs/imagenette.py (the paper's ImageNet pipeline for a small
    set), validating on the data's own evaluation split, else on a tenth of train held out;
    a converted tfds dataset (imagenet2012) with configs/imagenet_paper.py."""
    where = shlex.quote(data_dir if "://" in data_dir else os.path.abspath(data_dir))
    workdir = shlex.quote(os.path.join("runs", name))
    if not photos:
        return (f"resnet-jax train --config {_recipe('imagenet_paper.py')}:depth=50 "
                f"--config.data.name={name} --config.data.data_dir={where} --workdir {workdir}")
    splits = builder.info.splits
    n = splits["train"].num_examples
    val = 0 if folders.eval_split(splits.keys()) else max(1, n // 10)
    # The recipe's batch of 128, or a power of two that the training images fill.
    batch = "" if n - val >= 128 else f",batch={2 ** ((n - val).bit_length() - 1)}"
    return (f"resnet-jax train --config {_recipe('imagenette.py')}:tfds={name},val={val}"
            f"{batch} --config.data.data_dir={where} --workdir {workdir}")


def _recipe(name: str) -> str:
    """configs/NAME as this checkout's recipe is reached from here: relative below the current
    folder (the checkout's root: `configs/NAME`), else absolute."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "configs", name)
    if not os.path.exists(path):  # an install without the checkout's configs/
        return f"configs/{name}"
    rel = os.path.relpath(path)
    return shlex.quote(path if rel.startswith("..") else rel)


@contextlib.contextmanager
def _quiet_tfds(tfds):
    """Keeps tfds' own console output off while it writes a dataset: its 'Downloading and
    preparing dataset' banner with terminal codes (stdout), progress bars, absl warnings
    about the folders it is about to create. The command says what it did, once."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    tfds.display_progress_bar(False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tfds.display_progress_bar(True)
        absl.setLevel(level)


# ---- an image folder or tar -> ArrayRecord ---------------------------------------------------

def folder_splits(path: str) -> tuple[dict, list]:
    """({split: Records}, training class names) of an image folder or uncompressed tar."""
    if os.path.isdir(path):
        _one_validation_split(path, folders.visible_dirs(path))
        train_dir = os.path.join(path, folders.TRAIN_SPLIT)
        if not os.path.isdir(train_dir):
            raise ValueError(f"{path!r} has no 'train' folder (layout: split/<class>/<image>)")
        paths, labels, names = folders.list_image_folder(train_dir)
        out = {"train": sources.FolderRecords(train_dir, paths, labels)}
        for split in folders.EVAL_SPLIT_NAMES:
            if os.path.isdir(os.path.join(path, split)):
                d = os.path.join(path, split)
                e_paths, e_labels, _ = folders.list_image_folder(d, names)
                out[TFDS_SPLIT.get(split, split)] = sources.FolderRecords(d, e_paths, e_labels)
        return out, list(names)
    index = sources.index_tar(path)
    _one_validation_split(path, index)
    if "train" not in index:
        raise ValueError(f"{path!r} has no 'train' split (layout: train/<class>/<image>)")
    train, names = sources.tar_split(path, index["train"], None, "train")
    out = {"train": train}
    for split in folders.EVAL_SPLIT_NAMES:
        if split in index:
            out[TFDS_SPLIT.get(split, split)] = sources.tar_split(path, index[split], names,
                                                                   split)[0]
    return out, names


def _one_validation_split(path: str, splits) -> None:
    """Refuses `val` beside `validation`: both become the tfds split 'validation', and
    training on the folder itself evaluates on `val` (`folders.eval_split`)."""
    if {"val", "validation"} <= set(splits):
        raise ValueError(f"{path!r} has both 'val' and 'validation' folders, which would both "
                         "be the tfds split 'validation' (training on the folder evaluates on "
                         "'val'): rename or remove one")


def _builder_class(tfds):

    class ImageFolderDataset(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """Images as stored (bytes) with ClassLabel labels; the name is given per instance."""
        VERSION = tfds.core.Version("1.0.0")

        def __init__(self, *, name: str, splits: dict, class_names: list, **kwargs):
            self.name, self._splits, self._class_names = name, splits, class_names
            super().__init__(**kwargs)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, description="An image folder, by `resnet-jax prepare folder`.",
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(),
                    "label": tfds.features.ClassLabel(names=self._class_names)}),
                supervised_keys=("image", "label"))

        def _split_generators(self, dl_manager):
            return {s: self._generate_examples(r) for s, r in self._splits.items()}

        def _generate_examples(self, records):
            for i in range(len(records)):
                data, label = records.read(i)
                yield i, {"image": data, "label": label}

    return ImageFolderDataset


def prepare_folder(path: str, name: str, data_dir: str):
    """Write the tfds ArrayRecord dataset `name` (1.0.0) of an image folder or tar into
    `data_dir`; returns its builder. Refuses a dataset already there."""
    from resnet_jax.data.tf_import import tensorflow_datasets
    tfds = tensorflow_datasets()
    splits, class_names = folder_splits(path)
    with _quiet_tfds(tfds):
        try:
            builder = _builder_class(tfds)(name=name, splits=splits, class_names=class_names,
                                           data_dir=data_dir, file_format="array_record")
        except (ValueError, AssertionError) as err:
            raise ValueError(f"--name {name!r}: {str(err).splitlines()[0]}") from None
        if builder.is_prepared():
            raise ValueError(f"--name {name}: a dataset is already prepared in "
                             f"{builder.data_dir}; delete that folder to prepare it again")
        builder.download_and_prepare()
    return builder


# ---- TFRecord -> ArrayRecord -------------------------------------------------------------------

def read_tfrecord(path) -> Iterator[bytes]:
    """The records of a TFRecord file (uint64 length, uint32 CRC, data, uint32 CRC each; the
    CRCs are not checked: a damaged record fails when its example is parsed)."""
    from etils import epath
    with epath.Path(path).open("rb") as f:
        while True:
            header = f.read(12)
            if not header:
                return
            (length,) = struct.unpack("<Q", header[:8]) if len(header) == 12 else (None,)
            data = f.read(length) if length is not None else b""
            if length is None or len(data) != length or len(f.read(4)) != 4:
                raise ValueError(f"{path}: truncated TFRecord file")
            yield data


def _write_array_record(records, path) -> int:
    """Writes `records` as the ArrayRecord file `path` under a temporary name renamed when
    whole; returns their number. ArrayRecord's writer opens local files only: a remote file
    (gs://) is written in a local temporary folder first (one file at a time: a shard's size
    of local disk), then copied."""
    import shutil
    import tempfile

    from array_record.python.array_record_module import ArrayRecordWriter
    from etils import epath
    tmp, remote = epath.Path(f"{path}.incomplete"), "://" in os.fspath(path)
    with tempfile.TemporaryDirectory(prefix="resnet-jax-prepare-") as scratch:
        local = os.path.join(scratch, "file.array_record") if remote else os.fspath(tmp)
        writer = ArrayRecordWriter(local, "group_size:1")  # random access, as tfds writes
        n = 0
        try:
            for record in records:
                writer.write(record)
                n += 1
        finally:
            writer.close()
        if remote:
            with open(local, "rb") as src, tmp.open("wb") as dst:
                shutil.copyfileobj(src, dst, 16 << 20)
    tmp.rename(path)
    return n


def convert_tfrecord(name: str, data_dir: str, version: Optional[str] = None):
    """Add an ArrayRecord copy to the TFRecord tfds dataset `name` in `data_dir`; returns its
    (reloaded) builder."""
    from etils import epath

    from resnet_jax.data.tf_import import tensorflow_datasets
    tfds = tensorflow_datasets()
    spec = f"{name}:{version}" if version else name
    try:
        builder = tfds.builder(spec, data_dir=data_dir)
    except Exception as err:  # noqa: BLE001 - DatasetNotFoundError, bad versions, ...
        raise ValueError(f"--name {spec}: tfds does not know it in {data_dir} "
                         f"({str(err).splitlines()[0]})") from None
    if not builder.is_prepared():
        raise ValueError(f"--name {spec}: not prepared in {builder.data_dir}")
    formats = {f.value for f in builder.info.available_file_formats()}
    if "array_record" in formats:
        print(f"{spec} in {builder.data_dir} already has ArrayRecord files")
        return builder
    if "tfrecord" not in formats:
        raise ValueError(f"--name {spec}: stored as {', '.join(sorted(formats))}; convert reads "
                         "TFRecord")
    for split, info in sorted(builder.info.splits.items()):
        tf_template = info.filename_template.replace(filetype_suffix="tfrecord")
        ar_template = info.filename_template.replace(filetype_suffix="array_record")
        lengths = list(info.shard_lengths)
        for i, (src, dst) in enumerate(zip(tf_template.sharded_filepaths(info.num_shards),
                                           ar_template.sharded_filepaths(info.num_shards))):
            if not src.exists():
                raise ValueError(f"--name {spec} split {split!r}: TFRecord file {src} is "
                                 "missing")
            n = _write_array_record(read_tfrecord(src), dst)
            if lengths and n != lengths[i]:
                raise ValueError(f"{src}: {n} records, dataset_info.json says {lengths[i]}")
    info_path = epath.Path(builder.data_dir) / "dataset_info.json"
    meta = json.loads(info_path.read_text())
    # ArrayRecord becomes the primary format: tfds' code builders (imagenet2012, ...) ignore
    # the alternative formats of dataset_info.json; the TFRecord files stay listed there.
    meta["fileFormat"] = "array_record"
    meta["alternativeFileFormats"] = sorted(
        (set(meta.get("alternativeFileFormats", [])) | {"tfrecord"}) - {"array_record"})
    tmp = epath.Path(f"{info_path}.incomplete")
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(info_path)  # last: the dataset lists ArrayRecord only once every file is there
    return tfds.builder(spec, data_dir=data_dir)

"""Where the streaming pipeline's encoded images come from: random-access records.

A `Records` is a sequence of (encoded image bytes, int label), read by index, so the batch of
any step reads exactly its own examples: an image folder (`FolderRecords`), an uncompressed
image tar read by member offset (`TarRecords`), a tfds dataset stored as ArrayRecord through
`tfds.data_source` (`TfdsRecords`, no TensorFlow), or a part of one (`Subset`, the seeded
held-out split). Records pickle small and open their files lazily in each process, so grain's
worker processes read on their own.

`open_splits(cfg)` checks a data config's source before anything is read: a missing folder,
split, class or file, a compressed tar, a tfds dataset prepared as TFRecord only, ArrayRecord
files missing: each one `ValueError` line naming the file or split.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import tarfile
from typing import Optional, Sequence

import numpy as np

from resnet_jax.data import folders, identity

TFDS_FORMATS = ("array_record",)  # what tfds.data_source reads by index


class Records:
    """Encoded images by index: `len(r)`, `r.read(i) -> (bytes, label)`, `r.name(i)` (for
    error messages), `r.keys()` (each example's identity: what the held-out part is chosen
    by) and `r.fingerprint()` (of the keys and labels in order: `data.identity`)."""
    labels: np.ndarray

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, i: int) -> tuple[bytes, int]:
        raise NotImplementedError

    def name(self, i: int) -> str:
        raise NotImplementedError

    def keys(self) -> np.ndarray:
        raise NotImplementedError

    def fingerprint(self) -> str:
        return identity.fingerprint(b"\n".join(self.keys()), self.labels.astype("<i4"))


class FolderRecords(Records):
    """Image files by path; labels given."""

    def __init__(self, root: str, paths: Sequence[str], labels: np.ndarray):
        self.root = root
        # Relative, as bytes: ImageNet's 1.28M paths pickle to each worker in ~60 MB, not 300.
        # os.fsencode: a name that is not UTF-8 (Latin-1 'caf\xe9.jpg') is a str with
        # surrogates here, which str.encode refuses.
        self.paths = np.asarray([os.fsencode(os.path.relpath(p, root)) for p in paths])
        self.labels = np.asarray(labels, np.int32)

    def __len__(self) -> int:
        return len(self.labels)

    def name(self, i: int) -> str:
        return os.path.join(self.root, os.fsdecode(self.paths[i]))

    def keys(self) -> np.ndarray:
        return self.paths  # class/file: the same wherever the tree is, and in its tar

    def read(self, i: int) -> tuple[bytes, int]:
        with open(self.name(i), "rb") as f:
            return f.read(), int(self.labels[i])


class TarRecords(Records):
    """Members of an uncompressed tar, read with one `pread` each by offset."""

    def __init__(self, path: str, names: Sequence[str], offsets, sizes, labels):
        self.path, self.names = path, np.asarray([os.fsencode(n) for n in names])
        self.offsets = np.asarray(offsets, np.int64)
        self.sizes = np.asarray(sizes, np.int64)
        self.labels = np.asarray(labels, np.int32)
        self._fd: Optional[int] = None

    def __getstate__(self):
        return {**self.__dict__, "_fd": None}  # each process opens its own descriptor

    def __len__(self) -> int:
        return len(self.labels)

    def name(self, i: int) -> str:
        return f"{self.path}:{os.fsdecode(self.names[i])}"

    def keys(self) -> np.ndarray:
        """class/file of each member (what is above the split, such as a top folder, is not
        the image's identity: a tree and its tar hold out the same images)."""
        return np.asarray([b"/".join(n.split(b"/")[-2:]) for n in self.names])

    def read(self, i: int) -> tuple[bytes, int]:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return os.pread(self._fd, int(self.sizes[i]), int(self.offsets[i])), int(self.labels[i])

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class TfdsRecords(Records):
    """A split of a tfds dataset stored as ArrayRecord (`tfds.data_source`, images left
    encoded)."""

    def __init__(self, name: str, split: str, data_dir: Optional[str], length: int,
                 version: str = ""):
        self.dataset, self.split, self.data_dir, self.length = name, split, data_dir, length
        self.version = version
        self._source = None

    def __getstate__(self):
        return {**self.__dict__, "_source": None}

    def __len__(self) -> int:
        return self.length

    def name(self, i: int) -> str:
        return f"tfds {self.dataset} {self.split} example {i}"

    def keys(self) -> np.ndarray:
        """The example's index: a prepared tfds split of a version does not change."""
        return np.char.encode(np.arange(self.length).astype(str))

    def fingerprint(self) -> str:  # its labels are in the records: the version stands for them
        return identity.fingerprint(self.dataset, self.version, self.split, str(self.length))

    def read(self, i: int) -> tuple[bytes, int]:
        if self._source is None:
            from resnet_jax.data.tf_import import tensorflow_datasets
            tfds = tensorflow_datasets()
            self._source = tfds.data_source(self.dataset, split=self.split,
                                            data_dir=self.data_dir, download=False,
                                            decoders={"image": tfds.decode.SkipDecoding()})
        try:
            example = self._source[int(i)]
        except RuntimeError as err:  # ArrayRecord's C++ reader: a failed read of its file
            raise OSError(f"{type(err).__name__}: {err}") from err
        return bytes(example["image"]), int(example["label"])


class Subset(Records):
    """The examples `indices` of `records`, in that order."""

    def __init__(self, records: Records, indices: np.ndarray):
        self.records, self.indices = records, np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def keys(self) -> np.ndarray:
        return self.records.keys()[self.indices]

    def fingerprint(self) -> str:
        return identity.fingerprint(self.records.fingerprint(), self.indices.astype("<i8"))

    def name(self, i: int) -> str:
        return self.records.name(int(self.indices[i]))

    def read(self, i: int) -> tuple[bytes, int]:
        return self.records.read(int(self.indices[i]))


@dataclasses.dataclass
class Splits:
    train: Optional[Records]  # None: not listed (`open_splits(train=False)`)
    eval: Records
    class_names: list
    where: str        # what the run's first line says, e.g. "tar x.tar"
    eval_split: str   # e.g. "val", or "1,000 held out of train (seed 0)"


def held_out(keys: np.ndarray, num_val: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices) of the examples of `keys` (each one's identity,
    `Records.keys`): the `num_val` whose keys hash lowest are held out, both parts in their
    order. An example's part depends on its own name, not its position: deleting a training
    image moves no other, deleting a held-out one moves one training image (the next lowest)
    into the held-out part, and every run holds out the same images of the same files.
    (The in-memory pipeline holds out by position, `in_memory.split_train_val`: CIFAR's 45k/5k
    split as it always was; a changed file list is refused on resume there too.)"""
    n = len(keys)
    if not 0 < num_val < n:
        raise ValueError(f"config field data.num_val_examples={num_val} must be in [0, {n}) "
                         f"(the training split has {n} examples)")
    ranks = np.asarray([int.from_bytes(hashlib.blake2b(k, digest_size=8).digest(), "big")
                        for k in keys], np.uint64)
    is_val = np.zeros(n, bool)
    is_val[np.argsort(ranks, kind="stable")[:num_val]] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _with_held_out(train: Records, num_val: int) -> tuple[Records, Records, str]:
    t, v = held_out(train.keys(), num_val)
    return Subset(train, t), Subset(train, v), f"{num_val:,} held out of train"


def open_splits(cfg, train: bool = True) -> Splits:
    """The training and evaluation records of `cfg` (a `data` config section). `train=False`
    (to evaluate): `Splits.train` is None unless the evaluation split is held out of it, and
    the training split is not listed (its class names come from its class folders)."""
    if cfg.source == "folder":
        return _folder(cfg.path, cfg.num_val_examples, train)
    if cfg.source == "tar":
        return _tar(cfg.path, cfg.num_val_examples, train)
    if cfg.source == "tfds":
        return _tfds(cfg.name, cfg.data_dir or None, cfg.num_val_examples, train)
    raise ValueError(f"config field data.source={cfg.source!r} is not supported by "
                     "data.pipeline='streaming'; allowed values: folder, tar, tfds")


# ---- image folders ----------------------------------------------------------------------------

def folder_split_dirs(path: str, need_eval: bool = True) -> tuple:
    """(train_dir, eval_dir or None) of `path/train` and `folders.eval_split`'s folder."""
    train = os.path.join(path, folders.TRAIN_SPLIT)
    if not os.path.isdir(train):
        raise ValueError(f"data.path={path!r} has no 'train' folder (layout: split/<class>/<img>)")
    name = folders.eval_split(folders.visible_dirs(path))
    if name is not None:
        return train, os.path.join(path, name)
    if need_eval:
        raise ValueError(f"data.path={path!r} has no evaluation folder (one of "
                         f"{', '.join(folders.EVAL_SPLIT_NAMES)}); set data.num_val_examples to "
                         "hold out a part of train instead")
    return train, None


def _folder(path: str, num_val: int, list_train: bool = True) -> Splits:
    train_dir, eval_dir = folder_split_dirs(path, need_eval=num_val == 0)
    if list_train or num_val:
        paths, labels, names = folders.list_image_folder(train_dir)
        train = FolderRecords(train_dir, paths, labels)
    else:
        train, names = None, folders.class_names(train_dir)
    if num_val:
        train, ev, eval_name = _with_held_out(train, num_val)
    else:
        e_paths, e_labels, _ = folders.list_image_folder(eval_dir, names)
        ev, eval_name = FolderRecords(eval_dir, e_paths, e_labels), os.path.basename(eval_dir)
    return Splits(train, ev, list(names), f"image folder {path}", eval_name)


# ---- image tars -------------------------------------------------------------------------------

def index_tar(path: str) -> dict:
    """{split: {class: [(member name, offset, size)]}} of `[top/]split/<class>/<image>`
    members (hidden entries skipped; folders without images kept empty, so `folders`
    can name them)."""
    if not os.path.isfile(path):
        raise ValueError(f"config field data.path={path!r} is not a file")
    try:
        tar = tarfile.open(path, "r:")
    except tarfile.ReadError:
        raise ValueError(f"data.path={path!r} is not an uncompressed tar: the streaming "
                         "pipeline reads images by offset (decompress it, e.g. gunzip, or "
                         "make an ArrayRecord dataset with `resnet-jax prepare`)") from None
    index: dict = {}
    with tar:
        for m in tar:
            parts = [p for p in m.name.split("/") if p not in ("", ".")]
            if m.isdir() and len(parts) >= 2 and not any(map(folders.is_hidden, parts)):
                index.setdefault(parts[-2], {}).setdefault(parts[-1], [])
            elif (m.isfile() and (parts := folders.path_parts(m.name))
                  and (split := folders.split_of(parts)) is not None):
                index.setdefault(split, {}).setdefault(parts[-2], []).append(
                    (m.name, m.offset_data, m.size))
    return index


def tar_split(path: str, members: dict, class_names: Optional[list], split: str):
    """(TarRecords, sorted class names) of one split of `index_tar`'s index; labels index
    `class_names` (the training split's; None: this split's own)."""
    where = f"{path}:{split}"
    files = {c: members[c] for c in folders.classes_of(members, where)}
    if not files:
        raise ValueError(f"data.path={path!r}: no images in split {split!r} "
                         "(expected split/<class>/<image>)")
    labels_of = folders.label_index(files, class_names, where)
    rows = [(name, off, size, labels_of[c]) for c in files for name, off, size in sorted(files[c])]
    names, offsets, sizes, labels = zip(*rows)
    return TarRecords(path, names, offsets, sizes, labels), sorted(files)


def _tar(path: str, num_val: int, list_train: bool = True) -> Splits:
    index = index_tar(path)
    splits = sorted(s for s in index if not folders.is_hidden(s))
    if folders.TRAIN_SPLIT not in index:
        raise ValueError(f"data.path={path!r} has no 'train' split (layout: train/<class>/"
                         f"<image>); splits there: {', '.join(splits) or 'none'}")
    if list_train or num_val:
        train, names = tar_split(path, index[folders.TRAIN_SPLIT], None, folders.TRAIN_SPLIT)
    else:  # the index is read whole anyway: only the training records are not built
        train, names = None, folders.classes_of(index[folders.TRAIN_SPLIT], path)
    if num_val:
        train, ev, eval_name = _with_held_out(train, num_val)
    else:
        eval_name = folders.eval_split(splits)
        if eval_name is None:
            raise ValueError(f"data.path={path!r} has no evaluation split (one of "
                             f"{', '.join(folders.EVAL_SPLIT_NAMES)}; splits there: "
                             f"{', '.join(splits)}); set data.num_val_examples to hold out a "
                             "part of train instead")
        ev, _ = tar_split(path, index[eval_name], names, eval_name)
    return Splits(train, ev, names, f"tar {path}", eval_name)


# ---- tfds (ArrayRecord) -----------------------------------------------------------------------

def tfds_builder(name: str, data_dir: Optional[str]):
    """The prepared tfds builder of `name`, checked: known, prepared, stored in a format that
    `tfds.data_source` reads by index."""
    from resnet_jax.data.tf_import import tensorflow_datasets
    tfds = tensorflow_datasets()
    if not name:
        raise ValueError("config field data.name is empty; name a tfds dataset "
                         "(data.source='tfds'), e.g. imagenet2012")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as err:  # noqa: BLE001 - DatasetNotFoundError, bad config names, ...
        raise ValueError(f"config field data.name={name!r}: tfds does not know it in "
                         f"data.data_dir={data_dir!r} ({str(err).splitlines()[0]})") from None
    if not builder.is_prepared():
        raise ValueError(f"tfds dataset {name!r} is not prepared in {builder.data_dir} "
                         "(set data.data_dir, or make one from an image folder or tar with "
                         "`resnet-jax prepare folder`)")
    formats = {f.value for f in builder.info.available_file_formats()}
    if not formats & set(TFDS_FORMATS):
        raise ValueError(f"tfds dataset {name!r} in {builder.data_dir} is stored as "
                         f"{', '.join(sorted(formats))} only; the streaming pipeline reads "
                         "ArrayRecord: convert it once with `resnet-jax prepare convert "
                         f"--name {name} --data-dir {data_dir or '~/tensorflow_datasets'}`")
    return builder


def tfds_split_files(builder, split: str) -> list:
    """The ArrayRecord files of `split` (ValueError naming the first missing one)."""
    info = builder.info.splits[split]
    template = info.filename_template.replace(filetype_suffix="array_record")
    paths = template.sharded_filepaths(info.num_shards)
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise ValueError(f"tfds dataset {builder.name!r} split {split!r}: ArrayRecord file "
                         f"{missing[0]} is missing ({len(missing)} of {len(paths)} files)")
    return paths


def _tfds(name: str, data_dir: Optional[str], num_val: int, list_train: bool = True) -> Splits:
    builder = tfds_builder(name, data_dir)
    have = sorted(builder.info.splits.keys())
    if "train" not in have:
        raise ValueError(f"tfds dataset {name!r} has no split 'train'; splits there: "
                         f"{', '.join(have)}")
    label = builder.info.features["label"]
    names = [str(n) for n in (label.names or range(label.num_classes))]

    def records(split: str) -> TfdsRecords:
        tfds_split_files(builder, split)
        return TfdsRecords(name, split, data_dir, int(builder.info.splits[split].num_examples),
                           str(builder.info.version))

    train = records("train") if list_train or num_val else None  # its files not checked
    if num_val:
        train, ev, eval_name = _with_held_out(train, num_val)
    else:
        eval_name = folders.eval_split(have)
        if eval_name is None:
            raise ValueError(f"tfds dataset {name!r} has no split "
                             f"{', '.join(folders.EVAL_SPLIT_NAMES)} "
                             f"(splits there: {', '.join(have)}); set data.num_val_examples "
                             "to hold out a part of train")
        ev = records(eval_name)
    return Splits(train, ev, names, f"tfds {name}", eval_name)

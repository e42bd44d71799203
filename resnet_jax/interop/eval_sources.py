"""Where `resnet-jax eval --data` reads a labelled split: tfds, an image-folder tar, a folder.

    source = open_source("tfds:cifar10", "test")      # or "test.tar.gz", "imagenet/" ...
    source, notes = fit_classes(loaded.class_names, source)  # ValueError on a mismatch
    for name, image, label in source.examples(): ...

`image` is encoded bytes (tar members; tfds images are read undecoded), a file path (folders)
or a uint8 array; the caller decodes it (Pillow). `label` is an int, or for ReaL
(`tfds:imagenet2012_real`) a tuple of ints: every label a rater accepted (may be empty).
Folders and tars (`resnet_jax.data.folders`: hidden and empty folders are never classes) are
labelled by the sorted class folder names, then `fit_classes` maps them to the model's labels
by name (a split may lack some of the model's classes); tfds labels are the dataset's own
(ImageNet's are the standard synset order torchvision uses).
"""
from __future__ import annotations

import dataclasses
import os
import re
import tarfile
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from resnet_jax.data import folders

SOURCES_HELP = ("tfds:NAME (e.g. tfds:cifar10), a .tar/.tar.gz of split/<class>/<image>, or "
                "a folder of <split>/<class>/<image> or <class>/<image>")


@dataclasses.dataclass
class Source:
    spec: str                         # what --data said
    kind: str                         # 'tfds' | 'tar' | 'folder'
    split: Optional[str]              # None: a tar / folder with no split level
    class_names: Optional[list[str]]  # in label order; None if the source has none
    num_classes: int
    examples: Callable[[], Iterator[tuple[str, Any, Any]]]
    num_examples: Optional[int] = None
    multilabel: bool = False          # labels are tuples (ReaL)

    @property
    def split_name(self) -> str:
        return self.split or "all"


def open_source(spec: str, split: Optional[str] = None, data_dir: Optional[str] = None,
                tfds_builder: Optional[Callable] = None) -> Source:
    """The split `split` (default: `folders.eval_split`, the training pipelines' evaluation
    split) of `spec`.
    `tfds_builder(name, data_dir)` replaces `tfds.builder` (tests)."""
    if spec.startswith("tfds:"):
        return _tfds(spec, split, data_dir, tfds_builder)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", spec) and not os.path.exists(spec):
        raise ValueError(f"--data {spec!r}: unknown source; expected {SOURCES_HELP}")
    if os.path.isdir(spec):
        return _folder(spec, split)
    if os.path.isfile(spec):
        if tarfile.is_tarfile(spec):
            return _tar(spec, split)
        raise ValueError(f"--data {spec}: not a tar file; expected {SOURCES_HELP}")
    raise ValueError(f"--data {spec}: no such file or folder; expected {SOURCES_HELP}")


def choose_split(split: Optional[str], available: Sequence[str], where: str) -> str:
    """`split` if `where` has it (tfds slices such as 'validation[:1000]' too), else the
    evaluation split of `folders.eval_split`; an error lists the splits there are."""
    have = sorted(set(available))
    listed = ", ".join(have) or "none"
    if split is None:
        split = folders.eval_split(have)
        if split is None:
            raise ValueError(f"{where}: none of the usual test splits "
                             f"{folders.EVAL_SPLIT_NAMES}; splits there: {listed}; pass --split")
        return split
    if re.split(r"[\[+]", split)[0] not in have:
        raise ValueError(f"{where} has no split {split!r}; splits there: {listed}")
    return split


def _tfds(spec: str, split: Optional[str], data_dir: Optional[str], builder_fn) -> Source:
    name = spec[len("tfds:"):]
    if not name:
        raise ValueError(f"--data {spec!r}: name a tfds dataset, e.g. tfds:cifar10")
    if builder_fn is None:
        from resnet_jax.data.tf_import import tensorflow_datasets
        tfds = tensorflow_datasets()
        builder_fn = lambda n, d: tfds.builder(n, data_dir=d)  # noqa: E731
    try:
        builder = builder_fn(name, data_dir or None)
    except Exception as err:  # noqa: BLE001 - DatasetNotFoundError, bad config names, ...
        raise ValueError(f"--data {spec}: tfds does not know it ({str(err).splitlines()[0]})"
                         ) from None
    if not builder.is_prepared():
        raise ValueError(
            f"--data {spec}: not prepared in {builder.data_dir}, and tfds cannot download it "
            f"here (offline). Prepare it where the data is reachable (tfds build {name} "
            "--data_dir DIR; ImageNet needs its manual download) and pass --data-dir DIR, or "
            "point --data at a local copy: --data path.tar.gz (split/<class>/<image>) or a "
            "folder")
    split = choose_split(split, list(builder.info.splits.keys()), f"--data {spec}")
    features = builder.info.features
    key = "real_label" if "real_label" in features else "label"
    if key not in features or "image" not in features:
        raise ValueError(f"--data {spec}: no 'image' and 'label' features (it has "
                         f"{', '.join(features.keys())})")
    labels = features[key].feature if key == "real_label" else features[key]
    try:
        count = int(builder.info.splits[split].num_examples) or None
    except (KeyError, ValueError, IndexError, TypeError, AttributeError):
        count = None

    def examples():
        for i, ex in enumerate(_tfds_rows(builder, spec, split)):
            label = ex[key]
            yield (f"{spec} {split} example {i}", ex["image"],
                   tuple(int(y) for y in label) if key == "real_label" else int(label))

    return Source(spec, "tfds", split, [str(n) for n in labels.names or []] or None,
                  int(labels.num_classes), examples, count, multilabel=key == "real_label")


def _tfds_rows(builder, spec: str, split: str) -> Iterator[dict]:
    """The examples of a tfds split, images left encoded: by index from ArrayRecord files
    (`as_data_source`, no TensorFlow), else through tf.data from TFRecord files (which needs
    TensorFlow: without it, one error saying how to convert the dataset)."""
    from resnet_jax.data.tf_import import tensorflow_datasets
    tfds = tensorflow_datasets()
    skip = {"image": tfds.decode.SkipDecoding()}
    formats = {getattr(f, "value", f) for f in builder.info.available_file_formats()}
    if "array_record" in formats:
        rows = builder.as_data_source(split=split, decoders=skip, file_format="array_record")
        for i in range(len(rows)):
            yield rows[i]
        return
    import importlib.util
    if importlib.util.find_spec("tensorflow") is None:
        raise ValueError(
            f"--data {spec}: stored as {', '.join(sorted(formats))} in {builder.data_dir}, which "
            "only TensorFlow reads, and TensorFlow is not installed; add an ArrayRecord copy "
            f"once (no TensorFlow needed): resnet-jax prepare convert --name {builder.name} "
            f"--data-dir {os.path.dirname(os.path.dirname(builder.data_dir))}, or pip install "
            "'resnet-jax[tf]'")
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders=skip)
    yield from (tfds.as_numpy(ds) if hasattr(ds, "element_spec") else ds)


def _folder(path: str, split: Optional[str]) -> Source:
    subdirs = folders.visible_dirs(path)
    if not subdirs:
        raise ValueError(f"--data {path}: no folders in it; expected {SOURCES_HELP}")
    flat = any(folders.is_image_file(f) and os.path.isfile(os.path.join(path, d, f))
               for d in subdirs for f in os.listdir(os.path.join(path, d)))
    if flat:  # <folder>/<class>/<image>
        if split is not None:
            raise ValueError(f"--data {path} holds <class>/<image> with no split folders; "
                             "leave out --split")
        root = path
    else:
        split = choose_split(split, subdirs, f"--data {path}")
        root = os.path.join(path, split)
    paths, labels, classes = folders.list_image_folder(root)

    def examples():
        for p, y in zip(paths, labels):
            yield str(p), str(p), int(y)

    return Source(path, "folder", split, list(classes), len(classes), examples, len(paths))


def _tar(path: str, split: Optional[str]) -> Source:
    with tarfile.open(path, "r:*") as tar:
        members = [(m.name, folders.path_parts(m.name)) for m in tar.getmembers() if m.isfile()]
    members = [(n, parts) for n, parts in members if parts is not None and len(parts) >= 2]
    splits = {folders.split_of(parts) for _, parts in members} - {None}
    if not splits:  # <class>/<image>
        if split is not None:
            raise ValueError(f"--data {path} holds <class>/<image> with no split folders; "
                             "leave out --split")
    else:
        split = choose_split(split, splits, f"--data {path}")
        members = [(n, parts) for n, parts in members if folders.split_of(parts) == split]
    classes = sorted({parts[-2] for _, parts in members})
    index = {c: i for i, c in enumerate(classes)}
    wanted = {n: index[parts[-2]] for n, parts in members}
    if not wanted:
        raise ValueError(f"--data {path}: no images (expected {SOURCES_HELP})")

    def examples():
        with tarfile.open(path, "r:*") as tar:
            for m in tar:  # in the archive's order: one pass, no seeking back
                if m.name in wanted and m.isfile():
                    yield f"{path}:{m.name}", tar.extractfile(m).read(), wanted[m.name]

    return Source(path, "tar", split, classes, len(classes), examples, len(wanted))


# ---- do the model's classes fit the data's labels? ---------------------------------------

def _numbered(names: Sequence[str]) -> bool:
    return all(re.fullmatch(r"\d+", n) for n in names)


def _synsets(names: Sequence[str]) -> bool:
    return bool(names) and all(re.fullmatch(r"n\d{8}", n) for n in names)


def _short(names: Sequence[str], n: int = 6) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > n else ""
    return "[" + ", ".join(repr(x) for x in names[:n]) + more + "]"


def class_difference(model: Sequence[str], data: Sequence[str], where: str) -> str:
    only_model = [n for n in model if n not in set(data)]
    only_data = [n for n in data if n not in set(model)]
    if not only_model and not only_data and len(model) == len(data):
        i = next(i for i, (a, b) in enumerate(zip(model, data)) if a != b)
        return (f"the model's class names and those of {where} are the same {len(model)} in "
                f"another order: label {i} is {model[i]!r} for the model, {data[i]!r} for the "
                "data")
    return (f"the model's {len(model)} class names do not match the {len(data)} of {where}: "
            f"only in the model: {_short(only_model)}; only in the data: {_short(only_data)}")


def _relabelled(source: Source, model_names: Sequence[str], labels: np.ndarray) -> Source:
    """`source` with label i of its own classes turned into `labels[i]` of the model's."""
    own = source.examples

    def examples():
        for name, image, label in own():
            yield name, image, int(labels[label])

    return dataclasses.replace(source, class_names=list(model_names),
                               num_classes=len(model_names), examples=examples)


def imagenet_synsets() -> list[str]:
    """The 1000 ImageNet-1k synsets (WordNet ids) in label order (sorted; tfds's and
    torchvision's order, the order of `bundle.imagenet_class_names`)."""
    import importlib.resources
    text = importlib.resources.files("resnet_jax.interop").joinpath(
        "imagenet_synsets.txt").read_text(encoding="utf-8")
    return text.split()


def fit_classes(model_names: Sequence[str], source: Source) -> tuple[Source, list[str]]:
    """(`source` labelled as the model labels, notes for what could not be checked); a
    ValueError when its classes do not mean the model's.

    tfds: the dataset's labels, checked by count (and by name where both have readable
    names). Folders and tars, by class name: a folder named like one of the model's classes
    gets that class's label (a split may lack classes: said in a note); a model without class
    names (0..N-1) takes the sorted folders as its classes when the counts agree; ImageNet
    synset folders (n01440764, ...) map to an ImageNet model's classes through the standard
    synset order, any subset of them (Imagenette's 10, say)."""
    model_names, where = list(model_names), f"--data {source.spec}"
    data_names = source.class_names
    if source.kind == "tfds":
        if len(model_names) != source.num_classes:
            raise ValueError(f"the model has {len(model_names)} classes, {where} has "
                             f"{source.num_classes}")
        readable = lambda ns: ns and not _numbered(ns) and not _synsets(ns)  # noqa: E731
        if readable(data_names) and readable(model_names) and data_names != model_names:
            raise ValueError(class_difference(model_names, data_names, where))
        return source, []
    if data_names == model_names:
        return source, []
    index = {n: i for i, n in enumerate(model_names)}
    notes = []
    if _numbered(model_names) and len(model_names) == len(data_names):
        return source, [f"the model has no class names (0..{len(model_names) - 1}); assuming "
                        f"they are the sorted class folders of {where}"]
    if _synsets(data_names) and len(model_names) == 1000:
        from resnet_jax.interop.bundle import imagenet_class_names
        if model_names == imagenet_class_names():
            if len(data_names) == 1000 and not set(data_names) <= set(imagenet_synsets()):
                return source, []  # sorted synsets of another list: the standard order
            index = {n: i for i, n in enumerate(imagenet_synsets())}
    if not set(data_names) <= set(index):
        raise ValueError(class_difference(model_names, data_names, where) +
                         " (folders are matched to the model's classes by name)")
    if len(data_names) < len(model_names):
        notes.append(f"{where} has images of {len(data_names)} of the model's "
                     f"{len(model_names)} classes; the others are scored but never correct")
    labels = np.asarray([index[n] for n in data_names], np.int64)
    return _relabelled(source, model_names, labels), notes

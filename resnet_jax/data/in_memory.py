"""In-memory datasets (CIFAR-size): a whole split as uint8 numpy arrays. No TensorFlow needed.

Loaders return `(images uint8 (N, H, W, 3), labels int32 (N,), class_names list[str])`.
Label i is the i-th class name in sorted order (CIFAR-10: airplane=0 ... truck=9); with
`class_names` (an evaluation split: the training split's names) labels index those names, by
name (`resnet_jax.data.folders`: hidden and empty folders are never classes).
The augmentation (pad-4 crop + flip) runs on the device: see `pad_crop_flip`.
"""
from __future__ import annotations

import json
import logging
import os
import tarfile
from typing import Optional

import numpy as np

from resnet_jax.data import folders
from resnet_jax.data.decode import (CorruptImageError, check_on_corrupt, decode_rgb,
                                    read_retrying)
from resnet_jax.data.device_ops import pad_crop_flip  # noqa: F401  (public here by contract)
from resnet_jax.data.tf_import import quiet_native_logs

log = logging.getLogger(__name__)
Arrays = tuple  # (images, labels, class_names)


def _stack(items: list, on_corrupt: str, where: str) -> Arrays:
    """items: sorted list of (path, class_name, bytes) -> decoded arrays labelled by the sorted
    classes of the decoded images; skipped count logged. `where` names the source in errors."""
    check_on_corrupt(on_corrupt)
    images, classes, skipped = [], [], []
    for path, cls, data in items:
        try:
            img = decode_rgb(data, path)
        except CorruptImageError as err:
            if on_corrupt == "error":  # the streaming pipeline's words
                cause = err.__cause__
                raise CorruptImageError(
                    f"cannot decode image {path!r} (set data.on_corrupt='skip' to skip it): "
                    f"{type(cause).__name__}: {cause}") from cause
            skipped.append(path)
            continue
        if images and img.shape != images[0].shape:
            raise ValueError(f"image {path!r} has shape {img.shape}, expected {images[0].shape}: "
                             "in-memory datasets need one image size")
        images.append(img)
        classes.append(cls)
    if skipped:
        log.warning("skipped %d unreadable images (data.on_corrupt='skip'), first: %s",
                    len(skipped), skipped[0])
    if not images:
        found = f"{len(skipped)} unreadable" if skipped else "none"
        raise ValueError(f"no readable images in {where} ({found}); expected "
                         "<class>/<image> (or <split>/<class>/<image>) with .jpg/.png/... files")
    class_names = sorted(set(classes))
    class_id = {c: i for i, c in enumerate(class_names)}
    return (np.stack(images), np.asarray([class_id[c] for c in classes], np.int32),
            class_names)


def relabel(arrays: Arrays, class_names: Optional[list], where: str) -> Arrays:
    """`arrays` labelled by `class_names` (the training split's), mapped by name; a class
    those names lack is refused naming it (`folders.label_index`). None: unchanged."""
    images, labels, own = arrays
    if class_names is None:
        return arrays
    index = folders.label_index(own, class_names, where)
    remap = np.asarray([index[c] for c in own], np.int32)
    return images, remap[labels], list(class_names)


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def load_image_folder(path: str, on_corrupt: str = "error",
                      class_names: Optional[list] = None) -> Arrays:
    """Load `path/<class>/<image>` (sorted) into memory with Pillow; labels index
    `class_names` when given (an evaluation split), else the folder's own sorted classes."""
    items = []
    for cls, paths in folders.scan_folder(path).items():
        for file in paths:
            items.append((file, cls, read_retrying(lambda: _read_file(file), file)))
    return relabel(_stack(items, on_corrupt, f"folder {path!r}"), class_names, path)


def _read_tar(path: str, split: Optional[str]) -> list:
    """(member path, class, bytes) for `[top/]split/<class>/<img>` (or `<class>/<img>`);
    hidden entries are left out (`folders.path_parts`)."""
    items = []
    with tarfile.open(path, "r:*") as tar:
        for m in tar:
            parts = folders.path_parts(m.name) if m.isfile() else None
            if parts is None or len(parts) < 2:
                continue
            if split is not None and folders.split_of(parts) not in (None, split):
                continue
            items.append((f"{path}:{m.name}", parts[-2], tar.extractfile(m).read()))
    items.sort(key=lambda it: it[0])
    return items


def tar_splits(path: str) -> set:
    """The split folder names in a tar (`train`, `test`, ...): the folder above the class
    folder of each visible image file (`[top/]split/<class>/<image>`)."""
    with tarfile.open(path, "r:*") as tar:
        parts = (folders.path_parts(m.name) for m in tar if m.isfile())
        return {folders.split_of(p) for p in parts if p is not None} - {None}


def default_cache_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "resnet_jax")


def tar_cache(path: str, split: Optional[str], cache_dir: Optional[str] = None,
              on_corrupt: str = "error") -> str:
    """The folder holding a tar split's decoded arrays: keyed by the tar's name, size and
    mtime, the split and `on_corrupt`."""
    st = os.stat(path)
    # v2: hidden entries (`.ipynb_checkpoints`, `__MACOSX`) are no longer classes; v3: an
    # image's split is the folder above its class (`folders.split_of`), not any ancestor.
    key = f"{os.path.basename(path)}-{st.st_size}-{st.st_mtime_ns}-{split}-{on_corrupt}-v3"
    return os.path.join(cache_dir or default_cache_dir(), key)


def load_tar(path: str, split: Optional[str] = "train", cache_dir: Optional[str] = None,
             on_corrupt: str = "error", class_names: Optional[list] = None) -> Arrays:
    """Load a tar(.gz) of an image folder; decoded arrays are cached as .npy in `cache_dir`.

    The cache key is the tar's name, size and mtime plus the split, so a changed file is
    decoded again; the second load reads only the .npy files (memory-mapped-free, fast).
    Labels index `class_names` when given (an evaluation split), else the split's own
    sorted classes (what the cache holds).
    """
    where = f"{path} (split {split!r})"
    if not os.path.isfile(path):
        raise ValueError(f"data.path={path!r} is not a file")
    cdir = tar_cache(path, split, cache_dir, on_corrupt)
    files = [os.path.join(cdir, f) for f in ("images.npy", "labels.npy", "classes.json")]
    if all(os.path.exists(f) for f in files):
        with open(files[2]) as f:
            return relabel((np.load(files[0]), np.load(files[1]), json.load(f)), class_names,
                           where)
    images, labels, classes = _stack(_read_tar(path, split), on_corrupt, f"tar {where}")
    os.makedirs(cdir, exist_ok=True)
    tmp = f".tmp{os.getpid()}"
    np.save(files[0] + tmp, images, allow_pickle=False)  # np.save adds .npy to the name
    np.save(files[1] + tmp, labels, allow_pickle=False)
    with open(files[2] + tmp, "w") as f:
        json.dump(classes, f)
    # Rename last so a concurrent reader never sees half a cache.
    os.replace(files[0] + tmp + ".npy", files[0])
    os.replace(files[1] + tmp + ".npy", files[1])
    os.replace(files[2] + tmp, files[2])
    return relabel((images, labels, classes), class_names, where)


def load_tfds(name: str, split: Optional[str], data_dir: Optional[str] = None) -> Arrays:
    """Load a whole tfds split (e.g. `cifar10`, 'train'; None: the evaluation split,
    `folders.eval_split`, FileNotFoundError when there is none) as numpy; needs
    tensorflow-datasets."""
    quiet_native_logs()
    import tensorflow_datasets as tfds  # lazy: only this source needs it

    builder = tfds.builder(name, data_dir=data_dir)
    try:
        builder.download_and_prepare()
    except Exception as err:  # noqa: BLE001 - offline, no such dataset, a broken download
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise ValueError(
            f"data.source='tfds': cannot download or prepare {name!r} ({type(err).__name__}: "
            f"{first}). Offline? Point at a local copy instead: configs/cifar10.py:data=PATH "
            "(an image-folder .tar.gz or folder), or --config.data.source=tar "
            "--config.data.path=PATH") from None
    if split is None:
        split = folders.eval_split(builder.info.splits.keys())
        if split is None:
            raise FileNotFoundError(name)
    ds = builder.as_dataset(split=split, batch_size=-1, as_supervised=True)
    images, labels = tfds.as_numpy(ds)
    names = builder.info.features["label"].names
    return np.asarray(images, np.uint8), np.asarray(labels, np.int32), list(names)


def load_synthetic(num_examples: int, image_size: int, num_classes: int = 10,
                   seed: int = 0, colour_seed: int = 0) -> Arrays:
    """Seeded random uint8 images with a learnable signal: each class has its own mean colour.

    Pixel = uniform noise in [0, 128) + the class colour in [0, 128): a small model can
    separate the classes from channel means, so short training runs show falling loss.
    `seed` draws the labels and the noise, `colour_seed` the class colours: another split of
    the same data is another `seed` with the same `colour_seed`.
    """
    colours = np.random.default_rng(colour_seed).integers(0, 128, (num_classes, 3))
    rng = np.random.default_rng(seed)
    # Skip the draw the colours once took from `seed`: the training set (seed = colour_seed)
    # keeps its labels and noise bit for bit, and every run on it its numbers.
    rng.integers(0, 128, (num_classes, 3))
    labels = rng.integers(0, num_classes, num_examples).astype(np.int32)
    noise = rng.integers(0, 128, (num_examples, image_size, image_size, 3))
    images = (noise + colours[labels][:, None, None, :]).astype(np.uint8)
    return images, labels, [f"class_{i}" for i in range(num_classes)]


def split_train_val(images: np.ndarray, labels: np.ndarray, num_val: int,
                    seed: int = 0) -> tuple:
    """Deterministic held-out split: ((train_images, train_labels), (val_images, val_labels)).

    The val rows are a seeded random choice of `num_val` examples (stratification is not
    needed for CIFAR's balanced classes); both parts keep the original order.
    """
    n = len(images)
    if not 0 <= num_val < n:
        raise ValueError(f"data.num_val_examples={num_val} must be in [0, {n})")
    perm = np.random.default_rng(np.random.SeedSequence([seed, 0xDA7A])).permutation(n)
    is_val = np.zeros(n, bool)
    is_val[perm[:num_val]] = True
    return (images[~is_val], labels[~is_val]), (images[is_val], labels[is_val])


def pixel_stats(images: np.ndarray, per_pixel: bool) -> tuple:
    """Training-split statistics on the 0-255 scale: (mean, std) as float32.

    per_pixel=True: mean (H, W, 3) image (the paper's per-pixel mean) and one scalar std over
    all pixels (the scale is a constant, which the first BN absorbs; it only keeps inputs O(1)).
    per_pixel=False: per-channel mean and std, shape (3,).
    """
    x = images.reshape(-1, *images.shape[-3:])
    acc = np.zeros(x.shape[1:], np.float64)
    sq = np.zeros(x.shape[1:], np.float64)
    for i in range(0, len(x), 4096):  # chunked: avoids a float copy of the whole split
        chunk = x[i:i + 4096].astype(np.float64)
        acc += chunk.sum(0)
        sq += (chunk ** 2).sum(0)
    mean_px, sq_px = acc / len(x), sq / len(x)
    if per_pixel:
        std = np.sqrt(sq_px.mean() - mean_px.mean() ** 2 + 0.0)
        return mean_px.astype(np.float32), np.float32(std)
    mean_c = mean_px.mean((0, 1))
    std_c = np.sqrt(sq_px.mean((0, 1)) - mean_c ** 2)
    return mean_c.astype(np.float32), std_c.astype(np.float32)

"""Image-folder layouts (`split/<class>/<image>`, on disk or inside a tar): the one rule for
what is a class, and labels by class name.

Every reader of a folder or a tar (in memory, streaming, `resnet-jax prepare`, `resnet-jax eval
--data`, fine-tuning) goes through here, so they agree:
- an image's split is the folder above its class folder (`[top/]split/<class>/<image>`:
  `split_of`); the training split is `train`, the evaluation split the first of
  `EVAL_SPLIT_NAMES` there is (`eval_split`; tfds datasets' splits too);
- a hidden entry (a name starting with '.', such as `.ipynb_checkpoints` or `.DS_Store`, or
  `__MACOSX`) is never a class, a split or an image, at any depth;
- a class is a folder holding at least one image file (`decode.is_image_name`); an empty one
  is left out, with one warning naming it;
- labels are indices into the *training* split's sorted class names, mapped by name: an
  evaluation split may lack classes (said once) but may not hold a class training does not
  know (`ValueError` naming it). Without training names, a split's own sorted classes are
  its labels (that is how the training split defines them).
"""
from __future__ import annotations

import logging
import os
from typing import Iterable, Optional, Sequence

import numpy as np

from resnet_jax.data.decode import is_image_name

log = logging.getLogger(__name__)

HIDDEN = ("__MACOSX",)  # folders that archivers add, not hidden by a leading dot
TRAIN_SPLIT = "train"
EVAL_SPLIT_NAMES = ("val", "validation", "test")  # a tree's evaluation split: the first there


def is_hidden(name: str) -> bool:
    """True for a file or folder name that is never data ('.x', `__MACOSX`)."""
    return name.startswith(".") or name in HIDDEN


def is_image_file(name: str) -> bool:
    """A visible file name with an image extension."""
    return not is_hidden(name) and is_image_name(name)


def path_parts(name: str) -> Optional[list[str]]:
    """The parts of a relative path (a tar member's name), or None when any part is hidden
    or the last is not an image file name."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or any(is_hidden(p) for p in parts) or not is_image_name(parts[-1]):
        return None
    return parts


def eval_split(available: Iterable[str]) -> Optional[str]:
    """The evaluation split among a tree's split folders (or a tfds dataset's splits): the
    first of EVAL_SPLIT_NAMES there, else None."""
    have = set(available)
    return next((name for name in EVAL_SPLIT_NAMES if name in have), None)


def split_of(parts: Sequence[str]) -> Optional[str]:
    """The split of an image at `parts` (`path_parts` of `[top/]split/<class>/<image>`): the
    folder above its class folder; None for `<class>/<image>` (no split level)."""
    return parts[-3] if len(parts) >= 3 else None


def visible_dirs(root: str) -> list[str]:
    """The sorted visible sub-folder names of `root`."""
    return sorted(d for d in os.listdir(root)
                  if not is_hidden(d) and os.path.isdir(os.path.join(root, d)))


def classes_of(files: dict, where: str) -> list[str]:
    """The sorted classes of {class: [files]} that hold files; warns once about the empty ones."""
    empty = sorted(c for c, fs in files.items() if not fs)
    if empty:
        log.warning("%s: %d empty class folder(s) left out (no image files): %s", where,
                    len(empty), ", ".join(empty[:10]) + (" ..." if len(empty) > 10 else ""))
    return sorted(c for c, fs in files.items() if fs)


def scan_folder(root: str) -> dict[str, list[str]]:
    """{class: sorted image paths} of `root/<class>/<image>` (visible, non-empty classes)."""
    if not os.path.isdir(root):
        raise ValueError(f"data.path: {root!r} is not a directory")
    files = {}
    for cls in visible_dirs(root):
        cdir = os.path.join(root, cls)
        files[cls] = [os.path.join(cdir, f) for f in sorted(os.listdir(cdir))
                      if is_image_file(f) and os.path.isfile(os.path.join(cdir, f))]
    return {c: files[c] for c in classes_of(files, root)}


def class_names(root: str) -> list[str]:
    """The sorted classes of `root/<class>/<image>`, as `scan_folder` finds them, without
    listing every image: a folder is a class once it holds one image file."""
    if not os.path.isdir(root):
        raise ValueError(f"data.path: {root!r} is not a directory")

    def holds_an_image(folder: str) -> bool:
        with os.scandir(folder) as entries:
            return any(is_image_file(e.name) and e.is_file() for e in entries)

    names = [c for c in visible_dirs(root) if holds_an_image(os.path.join(root, c))]
    if not names:
        raise ValueError(f"data.path: no images under {root!r} (expected <class>/<image>)")
    return names


def label_index(found: Iterable[str], class_names: Optional[Sequence[str]],
                where: str) -> dict[str, int]:
    """{class name: label} for the classes `found` in a split: the index of each name in the
    training split's `class_names` (None: the sorted `found` are the classes). A class the
    training split does not know is refused naming it; classes the split lacks are said once.
    """
    found = sorted(set(found))
    if class_names is None:
        return {c: i for i, c in enumerate(found)}
    index = {str(c): i for i, c in enumerate(class_names)}
    unknown = [c for c in found if c not in index]
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:6]) + (" ..." if len(unknown) > 6 else "")
        raise ValueError(f"{where}: class folder(s) {shown} are not among the "
                         f"{len(index)} training classes (labels follow the training split's "
                         "class names)")
    missing = [c for c in index if c not in set(found)]
    if missing:
        log.warning("%s has no images of %d of the %d training classes (%s); its labels still "
                    "follow the training classes", where, len(missing), len(index),
                    ", ".join(missing[:6]) + (" ..." if len(missing) > 6 else ""))
    return {c: index[c] for c in found}


def list_image_folder(root: str, class_names: Optional[Sequence[str]] = None) -> tuple:
    """`root/<class>/<image>` -> (paths np.str_ (N,), labels int32 (N,), class names), sorted
    by class then file name. Labels index `class_names` (the training split's; None: this
    folder's own sorted classes, which are then returned)."""
    files = scan_folder(root)
    if not files:
        raise ValueError(f"data.path: no images under {root!r} (expected <class>/<image>)")
    labels_of = label_index(files, class_names, root)
    paths = [p for c in files for p in files[c]]
    labels = [labels_of[c] for c in files for _ in files[c]]
    names = list(class_names) if class_names is not None else sorted(files)
    return np.asarray(paths), np.asarray(labels, np.int32), names

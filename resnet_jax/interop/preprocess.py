"""A model's preprocessing on disk and in a training run: `save(prep, directory)` /
`load(directory)` keep a `Preprocessing` (resnet_jax/data/preprocess.py, which applies it) as
`preprocessing.json` beside `class_names.txt`; `from_pipeline` builds it from a training run's
config and data pipeline; `save_run(workdir, config, pipeline)` writes both into a training
workdir.
"""
from __future__ import annotations

import json
from typing import Any, Optional, Sequence

from resnet_jax import files
# public here too: what model directories, ports and `predict` were written against
from resnet_jax.data.preprocess import Preprocessing, torchvision_preprocessing  # noqa: F401

FILE = "preprocessing.json"
CLASS_NAMES_FILE = "class_names.txt"


def apply(prep: Preprocessing, images: Any):
    """Deprecated: `resnet_jax.data.preprocess.apply` (moved there by issue 25; this module's
    docstring offered it here before)."""
    import warnings
    warnings.warn("resnet_jax.interop.preprocess.apply is deprecated: use "
                  "resnet_jax.data.preprocess.apply", DeprecationWarning, stacklevel=2)
    from resnet_jax.data.preprocess import apply as data_apply
    return data_apply(prep, images)


# ---- files and training runs --------------------------------------------------------------

def save(prep: Preprocessing, directory: str, class_names: Optional[Sequence[str]] = None,
         ) -> None:
    """Write `directory/preprocessing.json` (and `class_names.txt`, one name per line, when
    given). Local paths or any epath (gs://...)."""
    from etils import epath
    d = epath.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    files.write_json(d / FILE, prep.to_json())
    if class_names is not None:
        save_class_names(class_names, directory)


def load(directory: str) -> Preprocessing:
    from etils import epath
    path = epath.Path(directory) / FILE
    if not path.exists():
        raise ValueError(f"{directory}: no {FILE}")
    return Preprocessing.from_json(json.loads(path.read_text()))


def save_class_names(names: Sequence[str], directory: str) -> None:
    from etils import epath
    names = [str(n) for n in names]
    bad = [n for n in names if "\n" in n or "\r" in n]
    if bad:
        raise ValueError(f"class names may not contain line breaks: {bad[:3]}")
    (epath.Path(directory) / CLASS_NAMES_FILE).write_text("\n".join(names) + "\n")


def load_class_names(directory: str) -> Optional[list[str]]:
    from etils import epath
    path = epath.Path(directory) / CLASS_NAMES_FILE
    if not path.exists():
        return None
    return path.read_text(encoding="utf-8").rstrip("\n").split("\n")


def from_pipeline(config: Any, pipeline: Any) -> Preprocessing:
    """The eval preprocessing of a run: `config` (the run's ConfigDict) and the data pipeline
    it built (`resnet_jax.data.make_pipeline`). In memory: the training split's statistics
    (`pipeline.mean`, `.std`), images of `image_size` (others are resized, torchvision style,
    and centre-cropped to it). Streaming: ImageNet mean/std, resize `eval_resize`, crop
    `image_size`, the 'tf' style of its eval views."""
    d = config.data
    size = int(pipeline.image_shape[0])
    if d.pipeline == "in_memory":
        return Preprocessing(pipeline.mean, pipeline.std, resize=size, crop=size,
                             style="torchvision")
    return Preprocessing(pipeline.mean, pipeline.std, resize=int(d.eval_resize), crop=size,
                         style="tf")


def pipeline_class_names(pipeline: Any) -> list[str]:
    """The class names a pipeline knows (folder names, tfds label names), else '0', '1', ..."""
    names = [str(n) for n in pipeline.class_names or []]
    if len(names) != pipeline.num_classes:
        names = [str(i) for i in range(pipeline.num_classes)]
    return names


def save_run(workdir: str, config: Any, pipeline: Any) -> Preprocessing:
    """For the training loop, at the start of a run (process 0): writes
    `workdir/preprocessing.json` and `workdir/class_names.txt`, so `resnet-jax export` needs
    no data later."""
    prep = from_pipeline(config, pipeline)
    save(prep, workdir, pipeline_class_names(pipeline))
    return prep

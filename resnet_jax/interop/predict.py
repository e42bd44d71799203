"""Classify image files with a model directory: decode (Pillow), preprocess, top-k.

    loaded = resnet_jax.load("r50")
    for result in predict_files(loaded, ["cat.jpg", "dog.png"]):
        print(format_line(result))          # cat.jpg: tabby 61.25%, tiger cat 20.10%, ...

A class that is an ImageNet synset is printed with its name: `n03417042 (garbage truck)`.

Every file gives one result: {'file', 'top': [{'index', 'class', 'prob'}, ...]} or
{'file', 'error'} for a missing, unreadable or corrupt file (the others are still scored).
"""
from __future__ import annotations

import functools
from typing import Any, Iterator, Sequence

import numpy as np


from resnet_jax.data.decode import ImageReadError, read_image  # noqa: F401  (public here)


@functools.lru_cache(maxsize=8)
def _probs_fn(model: Any):
    import jax

    @jax.jit
    def probs(variables, x):
        return jax.nn.softmax(model.apply(variables, x, train=False), axis=-1)
    return probs


def top_k(loaded: Any, images: Any, k: int = 5, batch_size: int = 32) -> list[list[dict]]:
    """Top-k classes of raw uint8 images (anything `loaded.preprocess` takes): per image a list
    of {'index', 'class', 'prob'}, most probable first."""
    x = loaded.preprocess(images)
    k = max(1, min(k, loaded.model.num_classes))
    probs_fn = _probs_fn(loaded.model)
    out = []
    for start in range(0, len(x), batch_size):
        chunk = x[start:start + batch_size]
        n = len(chunk)
        if n < batch_size and len(x) > batch_size:  # one compiled shape for every chunk
            chunk = np.concatenate([chunk, np.zeros((batch_size - n,) + chunk.shape[1:],
                                                    chunk.dtype)])
        probs = np.asarray(probs_fn(loaded.variables, chunk))[:n]
        for row in probs:
            order = np.argsort(-row, kind="stable")[:k]
            out.append([{"index": int(i), "class": loaded.class_names[i],
                         "prob": float(row[i])} for i in order])
    return out


def predict_files(loaded: Any, paths: Sequence[str], k: int = 5,
                  batch_size: int = 32) -> Iterator[dict]:
    """One result per path, in order (see the module docstring)."""
    for start in range(0, len(paths), batch_size):
        group = paths[start:start + batch_size]
        images, errors = {}, {}
        for path in group:
            try:
                images[path] = read_image(path)
            except ImageReadError as err:
                errors[path] = str(err)
        tops = {}
        if images:
            ok = [p for p in group if p in images]
            for path, top in zip(ok, top_k(loaded, [images[p] for p in ok], k, batch_size)):
                tops[path] = top
        for path in group:
            yield ({"file": path, "error": errors[path]} if path in errors
                   else {"file": path, "top": tops[path]})


@functools.lru_cache(maxsize=1)
def _imagenet_names() -> dict:
    """{ImageNet synset: its class name} ('n01440764': 'tench')."""
    from resnet_jax.interop.bundle import imagenet_class_names
    from resnet_jax.interop.eval_sources import imagenet_synsets
    return dict(zip(imagenet_synsets(), imagenet_class_names(), strict=True))


def readable(class_name: str) -> str:
    """A class as a person reads it: an ImageNet synset with its name beside it
    ('n03417042 (garbage truck)': models trained on ImageNet-style folders), else as it is."""
    name = _imagenet_names().get(class_name)
    return f"{class_name} ({name})" if name else class_name


def format_line(result: dict) -> str:
    """'file: class 61.25%, class 20.10%, ...' (or the file's error)."""
    if "error" in result:
        return f"error: {result['error']}"
    items = ", ".join(f"{readable(t['class'])} {100 * t['prob']:.2f}%" for t in result["top"])
    return f"{result['file']}: {items}"

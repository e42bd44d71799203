"""The in-memory Pipeline: whole split as uint8 arrays, augmentation on the device.

Built by `resnet_jax.data.make_pipeline` when `config.data.pipeline == 'in_memory'`.
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from resnet_jax.data import in_memory, order
from resnet_jax.data.device_ops import make_device_preprocess

SOURCES = ("synthetic", "tar", "folder", "tfds")
NORMALIZE_CHOICES = ("per_pixel_mean", "per_channel")
IN_MEMORY_AUGMENT = ("pad_crop_flip", "none")


def _get(cfg, name, default=None):
    """Read a config.data field, tolerating partial configs (tests build small dicts)."""
    return cfg.get(name, default) if hasattr(cfg, "get") else getattr(cfg, name, default)


def _load_split(cfg, split: str, seed: int) -> tuple:
    """Load `split` ('train' or 'test') of the configured source -> arrays tuple."""
    source, path = _get(cfg, "source"), _get(cfg, "path")
    on_corrupt = _get(cfg, "on_corrupt", "error")
    if source == "synthetic":
        n = int(_get(cfg, "synthetic_examples", 1024) or 1024)
        return in_memory.load_synthetic(n, int(_get(cfg, "image_size", 32)),
                                        int(_get(cfg, "num_classes", 10) or 10),
                                        seed=seed + (0 if split == "train" else 1))
    if source == "tar":
        if split != "train" and split not in in_memory.tar_splits(path):
            raise FileNotFoundError(split)
        return in_memory.load_tar(path, split, _get(cfg, "data_dir"), on_corrupt)
    if source == "folder":
        root = os.path.join(path, split)
        if not os.path.isdir(root):
            if split != "train":
                raise FileNotFoundError(split)
            root = path  # a folder of classes with no split level is the training split
        return in_memory.load_image_folder(root, on_corrupt)
    if source == "tfds":
        return in_memory.load_tfds(_get(cfg, "name"), split, _get(cfg, "data_dir"))
    raise ValueError(f"data.source={source!r}; allowed: {SOURCES}")


class InMemoryPipeline:
    """Contract: docs/ARCHITECTURE.md "Data". Attributes: num_classes, num_train_examples,
    num_eval_examples, image_shape, steps_per_epoch, train_arrays, eval_arrays, class_names.

    Eval set: the seeded held-out `num_val_examples` of the training split (45k/5k for
    CIFAR-10); with num_val_examples=0 the source's `test` split (synthetic: a fresh seeded set).
    """

    def __init__(self, cfg, *, global_batch_size: int, eval_batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1):
        augment = _get(cfg, "train_augment", "pad_crop_flip")
        if augment not in IN_MEMORY_AUGMENT:
            raise ValueError(f"data.train_augment={augment!r}; allowed for the in-memory "
                             f"pipeline: {IN_MEMORY_AUGMENT}")
        crops = _get(cfg, "eval_crops", "center")
        if crops != "center":
            raise ValueError(f"data.eval_crops={crops!r}; the in-memory pipeline tests on the "
                             "single original view: allowed ('center',)")
        norm = _get(cfg, "normalize", "per_pixel_mean")
        if norm not in NORMALIZE_CHOICES:
            raise ValueError(f"data.normalize={norm!r}; allowed: {NORMALIZE_CHOICES}")
        self.seed, self.process_index, self.process_count = seed, process_index, process_count
        self.global_batch_size, self.eval_batch_size = global_batch_size, eval_batch_size
        self.batch_size = order.per_process(global_batch_size, process_count, "global_batch_size")
        order.per_process(eval_batch_size, process_count, "eval_batch_size")

        images, labels, self.class_names = _load_split(cfg, "train", seed)
        num_val = int(_get(cfg, "num_val_examples", 0) or 0)
        if num_val > 0:
            # The split seed is fixed (not the run seed) so every run validates on the same 5k.
            train, val = in_memory.split_train_val(images, labels, num_val, seed=0)
        else:
            train = (images, labels)
            try:
                val = _load_split(cfg, "test", seed)[:2]
            except FileNotFoundError:
                raise ValueError(f"data.num_val_examples=0 but data.source={_get(cfg, 'source')!r} "
                                 "has no 'test' split; set num_val_examples > 0") from None
        size = _get(cfg, "image_size")
        if size and train[0].shape[1:3] != (size, size):
            raise ValueError(f"data.image_size={size} but the images are {train[0].shape[1:3]}")
        self.train_arrays, self.eval_arrays = train, val
        self.num_classes = max(len(self.class_names), int(labels.max()) + 1)
        self.num_train_examples, self.num_eval_examples = len(train[0]), len(val[0])
        self.image_shape = tuple(train[0].shape[1:])
        self.steps_per_epoch = self.num_train_examples // global_batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"train.batch_size={global_batch_size} exceeds the "
                             f"{self.num_train_examples} training examples")
        self.mean, self.std = in_memory.pixel_stats(train[0], norm == "per_pixel_mean")
        self.device_preprocess = make_device_preprocess(
            mean=self.mean, std=self.std, crop_flip_pad=4 if augment == "pad_crop_flip" else 0)

    def train_indices(self, start_step: int, num_steps: int) -> np.ndarray:
        """int32 (num_steps, b): this process's rows of each step's global batch."""
        return order.train_indices(
            seed=self.seed, n=self.num_train_examples, global_batch=self.global_batch_size,
            start_step=start_step, num_steps=num_steps, process_index=self.process_index,
            process_count=self.process_count)

    def train_batches(self, start_step: int = 0) -> Iterator[dict]:
        """Endless per-process batches {'image': uint8 (b, H, W, 3), 'label': int32 (b,)}."""
        images, labels = self.train_arrays
        step = start_step
        while True:
            for idx in self.train_indices(step, 64):  # 64 steps of indices at a time
                yield {"image": images[idx], "label": labels[idx]}
            step += 64

    def eval_batches(self) -> Iterator[dict]:
        """{'image': uint8 (b, 1, H, W, 3), 'label': int32 (b,), 'mask': bool (b,)}, padded."""
        images, labels = self.eval_arrays
        for idx, mask in order.eval_plan(self.num_eval_examples, self.eval_batch_size,
                                         self.process_index, self.process_count):
            yield {"image": images[idx][:, None], "label": labels[idx], "mask": mask}

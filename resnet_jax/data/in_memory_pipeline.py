"""The in-memory Pipeline: whole split as uint8 arrays, augmentation on the device.

Built by `resnet_jax.data.make_pipeline` when `config.data.pipeline == 'in_memory'`.
"""
from __future__ import annotations

import copy
import os
from typing import Iterator

import numpy as np

from resnet_jax.data import folders, in_memory, order
from resnet_jax.data.device_ops import make_device_preprocess

# The data is one for every run seed, as CIFAR's own images are: generated images are drawn
# from this fixed seed (train; test: other labels and noise from DATA_SEED + 1 on the same
# class colours) and the 45k/5k split from 0, so the run seed picks only the initialization,
# the order and the augmentation, and replica i of a packed run (seed + i) sees the data of
# the solo run with that seed.
DATA_SEED = 0


def _load_split(cfg, split: str, class_names: list | None = None) -> tuple:
    """Load the training split ('train') or the evaluation split ('eval': `folders.eval_split`
    of the tree's or the tfds dataset's splits) of the configured source -> arrays;
    evaluation labels follow the training `class_names`, by name. FileNotFoundError: the
    source has no evaluation split."""
    if cfg.source == "synthetic":
        return in_memory.load_synthetic(cfg.synthetic_examples, cfg.image_size,
                                        cfg.num_classes or 10,
                                        seed=DATA_SEED + (0 if split == "train" else 1),
                                        colour_seed=DATA_SEED)
    if cfg.source == "tar":
        if split != "train":
            split = folders.eval_split(in_memory.tar_splits(cfg.path))
            if split is None:
                raise FileNotFoundError(cfg.path)
        return in_memory.load_tar(cfg.path, split, cfg.data_dir, cfg.on_corrupt, class_names)
    if cfg.source == "folder":
        if split != "train":
            split = folders.eval_split(folders.visible_dirs(cfg.path))
            if split is None:
                raise FileNotFoundError(cfg.path)
            return in_memory.load_image_folder(os.path.join(cfg.path, split), cfg.on_corrupt,
                                               class_names)
        root = os.path.join(cfg.path, folders.TRAIN_SPLIT)
        # a folder of classes with no split level is the training split
        return in_memory.load_image_folder(root if os.path.isdir(root) else cfg.path,
                                           cfg.on_corrupt)
    return in_memory.load_tfds(cfg.name, split if split == "train" else None, cfg.data_dir)


def _describe_source(cfg) -> str:
    if cfg.source == "synthetic":
        return f"{cfg.synthetic_examples} generated images"
    if cfg.source == "tar":
        cache = in_memory.tar_cache(cfg.path, "train", cfg.data_dir, cfg.on_corrupt)
        return f"tar {cfg.path} (decoded once, cached in {cache})"
    if cfg.source == "folder":
        return f"image folder {cfg.path}"
    return f"tfds {cfg.name}" + (f" in {cfg.data_dir}" if cfg.data_dir else "")


class InMemoryPipeline:
    """A `resnet_jax.data.Pipeline` holding the split in memory (`resident`: the training
    arrays, which the loop keeps on the devices; chunks are row indices). Also:
    `train_arrays`, `eval_arrays`, `train_batches(step)` (host batches, for your own loop).

    Eval set: the seeded held-out `num_val_examples` of the training split (45k/5k for
    CIFAR-10); with num_val_examples=0 the source's evaluation split (tfds: `test`; a folder
    or tar: `val`, `validation` or `test`, labelled by the training class names; synthetic: a
    fresh seeded set). The run `seed` draws the training order only; the data itself does not
    depend on it (`DATA_SEED`).
    """

    def __init__(self, cfg, *, global_batch_size: int, eval_batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1):
        self.seed, self.process_index, self.process_count = seed, process_index, process_count
        self.global_batch_size, self.eval_batch_size = global_batch_size, eval_batch_size
        self.batch_size = order.per_process(global_batch_size, process_count, "global_batch_size")
        order.per_process(eval_batch_size, process_count, "eval_batch_size")

        images, labels, self.class_names = _load_split(cfg, "train")
        self._source = _describe_source(cfg)
        num_val = cfg.num_val_examples
        self._held_out = num_val > 0
        if num_val > 0:
            # The split seed is fixed (not the run seed) so every run validates on the same 5k.
            train, val = in_memory.split_train_val(images, labels, num_val, seed=0)
        else:
            train = (images, labels)
            try:
                val = _load_split(cfg, "eval", self.class_names)[:2]
            except FileNotFoundError:
                raise ValueError(f"data.num_val_examples=0 but data.source={cfg.source!r} "
                                 f"has no evaluation split (one of "
                                 f"{', '.join(folders.EVAL_SPLIT_NAMES)}); set "
                                 "num_val_examples > 0") from None
        size = cfg.image_size
        if train[0].shape[1:3] != (size, size):
            raise ValueError(f"data.image_size={size} but the images are {train[0].shape[1:3]}")
        self.train_arrays, self.eval_arrays = train, val
        self.resident = train
        self.num_classes = max(len(self.class_names), int(labels.max()) + 1)
        self.num_train_examples, self.num_eval_examples = len(train[0]), len(val[0])
        self.image_shape = tuple(train[0].shape[1:])
        self.steps_per_epoch = order.steps_per_epoch(self.num_train_examples, global_batch_size)
        self.mean, self.std = in_memory.pixel_stats(train[0],
                                                    cfg.normalize == "per_pixel_mean")
        self.device_preprocess = make_device_preprocess(
            mean=self.mean, std=self.std,
            crop_flip_pad=4 if cfg.train_augment == "pad_crop_flip" else 0)

    def with_seed(self, seed: int) -> "InMemoryPipeline":
        """This pipeline with the training order of run seed `seed` (the arrays shared,
        nothing loaded again): the order replica i of a packed run (seed + i) trains in."""
        other = copy.copy(self)
        other.seed = seed
        return other

    def train_indices(self, start_step: int, num_steps: int) -> np.ndarray:
        """int32 (num_steps, b): this process's rows of each step's global batch."""
        return order.train_indices(
            seed=self.seed, n=self.num_train_examples, global_batch=self.global_batch_size,
            start_step=start_step, num_steps=num_steps, process_index=self.process_index,
            process_count=self.process_count)

    def identity(self) -> dict:
        """What the data is (`data.identity`): class names, and each split's size and the
        fingerprint of its decoded images and labels."""
        from resnet_jax.data.identity import fingerprint, of_split
        (ti, tl), (ei, el) = self.train_arrays, self.eval_arrays
        split = "held out" if self._held_out else "eval"
        return {"class_names": [str(c) for c in self.class_names],
                "train": of_split(len(tl), fingerprint(ti, tl.astype("<i4"))),
                "eval": of_split(len(el), fingerprint(ei, el.astype("<i4")), split)}

    def describe(self) -> str:
        """Where the images come from, in a few words."""
        return self._source

    def train_chunk(self, step: int, k: int) -> dict:
        """{'index': int32 (k, b)}: rows of `resident` for steps [step, step + k)."""
        return {"index": self.train_indices(step, k)}

    def close(self) -> None:
        pass

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

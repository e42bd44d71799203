"""Streaming sources: where encoded images come from (tfds or an image-folder tree).

Each source yields tf.data datasets of (encoded bytes, int32 label) for this process only.
TensorFlow and tensorflow-datasets are imported lazily (inside the functions).
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from resnet_jax.data.folders import list_image_folder  # noqa: F401  (used by the pipelines)
from resnet_jax.data.tf_import import quiet_native_logs, tensorflow

EVAL_SPLIT_NAMES = ("val", "validation", "test")


def folder_split_dirs(path: str) -> tuple:
    """(train_dir, eval_dir) of an image-folder tree `path/train`, `path/{val,validation,test}`."""
    train = os.path.join(path, "train")
    if not os.path.isdir(train):
        raise ValueError(f"data.path={path!r} has no 'train' folder (layout: split/<class>/<img>)")
    for name in EVAL_SPLIT_NAMES:
        if os.path.isdir(os.path.join(path, name)):
            return train, os.path.join(path, name)
    raise ValueError(f"data.path={path!r} has no eval folder; expected one of {EVAL_SPLIT_NAMES}")


def files_dataset(paths: np.ndarray, labels: np.ndarray):
    """tf.data of (bytes, label) reading `paths` in the given order."""
    tf = tensorflow()
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    return ds.map(lambda p, y: (tf.io.read_file(p), y), num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=True)


class TfdsSource:
    """A tfds dataset by name; images stay encoded (SkipDecoding) until the augmentation."""

    def __init__(self, name: str, data_dir: Optional[str], process_index: int,
                 process_count: int):
        quiet_native_logs()
        import tensorflow_datasets as tfds

        self.tfds = tfds
        self.builder = tfds.builder(name, data_dir=data_dir or None)
        self.process_index, self.process_count = process_index, process_count
        splits = set(self.builder.info.splits.keys())
        # mock_data leaves info.splits empty: fall back to the common names.
        self.eval_split = next((s for s in ("validation", "test") if s in splits), "validation")
        label = self.builder.info.features["label"]
        self.num_classes = label.num_classes
        self.class_names = [str(n) for n in (label.names or [])]

    def shard(self, split: str, drop_remainder: bool) -> str:
        """This process's even part of `split` (train: equal sizes; eval: every example)."""
        return self.tfds.even_splits(split, n=self.process_count,
                                     drop_remainder=drop_remainder)[self.process_index]

    def dataset(self, split: str, shuffle_seed: Optional[int] = None):
        """tf.data of (bytes, label) for a (sub)split; files shuffled by `shuffle_seed`."""
        read_config = self.tfds.ReadConfig(shuffle_seed=shuffle_seed,
                                           try_autocache=False, add_tfds_id=False)
        ds = self.builder.as_dataset(
            split=split, shuffle_files=shuffle_seed is not None, read_config=read_config,
            decoders={"image": self.tfds.decode.SkipDecoding()})
        return ds.map(lambda ex: (ex["image"], ex["label"]))

    def num_examples(self, split: str) -> int:
        """Examples in a (sub)split: from the metadata, else counted (mock data)."""
        try:
            n = self.builder.info.splits[split].num_examples
            if n:
                return int(n)
        except (KeyError, ValueError, IndexError):
            pass
        return int(self.dataset(split).reduce(0, lambda c, _: c + 1))

"""The streaming Pipeline (ImageNet-size): tfds or an image folder -> tf.data -> numpy batches.

Order and resumption. Image folder: each epoch is a permutation drawn from (seed, epoch)
(the in-memory rule, `order.train_indices`), so any step's batch is known without reading
anything else. tfds: each process reads its even shard (`tfds.even_splits`), files and a
`shuffle_buffer` shuffled with seeds drawn from (seed, epoch); a resume at step s re-reads
(without decoding) at most the part of epoch s // steps_per_epoch before s.
Augmentation randomness is stateless, keyed by (seed, process, position in the stream), so
the batch of step s is the same whether or not the run restarted at s.

Errors: an undecodable image raises `CorruptImageError` naming its file (data.on_corrupt
'error'), or is dropped and counted in `num_skipped` ('skip'; later batches then shift;
the count covers the files read so far, not an epoch's dropped remainder).
"""
from __future__ import annotations

import logging
from typing import Iterator, Optional

import numpy as np

from resnet_jax.data import order, sources
from resnet_jax.data.decode import CorruptImageError, check_on_corrupt
from resnet_jax.data.device_ops import IMAGENET_MEAN, IMAGENET_STD, make_device_preprocess

log = logging.getLogger(__name__)
STREAM_SOURCES = ("tfds", "folder")
STREAM_AUGMENT = ("scale", "inception", "none")
EVAL_CROPS = ("center", "10crop", "multiscale")


def _get(cfg, name, default=None):
    value = cfg.get(name, default) if hasattr(cfg, "get") else getattr(cfg, name, default)
    return default if value is None else value


def _check(field: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"data.{field}={value!r}; allowed for the streaming pipeline: {allowed}")


class StreamingPipeline:
    """Contract: docs/ARCHITECTURE.md "Data". Multi-scale eval: `eval_batches(scale=s)` for
    each s in `eval_scales` yields (b, 2, s, s, 3) views (centre square + flip) of the same
    examples in the same order and with the same masks, so per-example scores can be averaged
    over scales batch by batch. Other eval modes ignore `scale` (`eval_scales == (None,)`).
    """

    def __init__(self, cfg, *, global_batch_size: int, eval_batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1):
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")  # keep TF off the accelerator JAX uses
        self.tf = tf
        self.source_name = _get(cfg, "source", "tfds")
        self.augment = _get(cfg, "train_augment", "scale")
        self.eval_crops = _get(cfg, "eval_crops", "center")
        self.on_corrupt = check_on_corrupt(_get(cfg, "on_corrupt", "error"))
        _check("source", self.source_name, STREAM_SOURCES)
        _check("train_augment", self.augment, STREAM_AUGMENT)
        _check("eval_crops", self.eval_crops, EVAL_CROPS)
        self.size = int(_get(cfg, "image_size", 224))
        self.eval_resize = int(_get(cfg, "eval_resize", 256) or 256)
        self.eval_scales = (tuple(int(s) for s in _get(cfg, "multiscale_sizes", ()))
                            if self.eval_crops == "multiscale" else (None,))
        self.shuffle_buffer = int(_get(cfg, "shuffle_buffer", 16384) or 1)
        self.seed, self.process_index, self.process_count = seed, process_index, process_count
        self.global_batch_size = global_batch_size
        self.batch_size = order.per_process(global_batch_size, process_count, "global_batch_size")
        self.eval_batch_size = order.per_process(eval_batch_size, process_count,
                                                 "eval_batch_size")
        self.num_skipped = 0
        self._init_source(cfg)
        self.image_shape = (self.size, self.size, 3)
        norm = _get(cfg, "normalize", "per_channel")
        _check("normalize", norm, ("per_channel", "per_pixel_mean"))
        # ImageNet constants; per_pixel_mean subtracts the mean colour (a random crop's mean
        # image is flat) and divides by one scalar, the mean channel std.
        std = IMAGENET_STD if norm == "per_channel" else np.float32(IMAGENET_STD.mean())
        self.device_preprocess = make_device_preprocess(
            mean=IMAGENET_MEAN, std=std, lighting_std=float(_get(cfg, "lighting_std", 0.0)))

    def _init_source(self, cfg) -> None:
        if self.source_name == "folder":
            train_dir, eval_dir = sources.folder_split_dirs(_get(cfg, "path"))
            self.train_files = sources.list_image_folder(train_dir)
            self.eval_files = sources.list_image_folder(eval_dir)
            self.class_names = self.train_files[2]
            self.num_classes = len(self.class_names)
            self.num_train_examples = len(self.train_files[0])
            self.num_eval_examples = len(self.eval_files[0])
            self.steps_per_epoch = self.num_train_examples // self.global_batch_size
        else:
            src = sources.TfdsSource(_get(cfg, "name"), _get(cfg, "data_dir"),
                                     self.process_index, self.process_count)
            self.src, self.num_classes = src, src.num_classes
            self.train_shard = src.shard("train", drop_remainder=True)
            self.eval_shard = src.shard(src.eval_split, drop_remainder=False)
            self.num_train_examples = src.num_examples("train")
            self.num_eval_examples = src.num_examples(src.eval_split)
            all_eval = self.tfds_eval_shard_sizes()
            self.eval_num_batches = -(-max(all_eval) // self.eval_batch_size)
            self.steps_per_epoch = (src.num_examples(self.train_shard) // self.batch_size)
        if self.steps_per_epoch == 0:
            raise ValueError(f"train.batch_size={self.global_batch_size} exceeds the "
                             f"{self.num_train_examples} training examples")

    def tfds_eval_shard_sizes(self) -> list:
        """Eval examples of every process's shard (each process pads to the largest)."""
        splits = self.src.tfds.even_splits(self.src.eval_split, n=self.process_count)
        return [self.src.num_examples(s) for s in splits]

    # ---- training -------------------------------------------------------------------------
    def _augment_fn(self):
        from resnet_jax.data import augment

        tf, size = self.tf, self.size
        base = (self.seed * 1_000_003 + self.process_index) & 0x7FFFFFFF

        def fn(image_bytes, label, position):
            seed = tf.stack([tf.constant(base, tf.int64), position])
            if self.augment == "scale":
                img = augment.scale_augment(image_bytes, seed, size)
            elif self.augment == "inception":
                img = augment.inception_crop(image_bytes, seed, size)
            else:
                img = augment.eval_views(image_bytes, "center", size, self.eval_resize)[0]
            img.set_shape([size, size, 3])
            return {"image": img, "label": tf.cast(label, tf.int32), "position": position}

        return fn

    def _epoch_records(self, epoch: int):
        """(bytes, label) of this process's part of epoch `epoch`, in training order."""
        if self.source_name == "folder":
            idx = order.train_indices(
                seed=self.seed, n=self.num_train_examples, global_batch=self.global_batch_size,
                start_step=epoch * self.steps_per_epoch, num_steps=self.steps_per_epoch,
                process_index=self.process_index, process_count=self.process_count).ravel()
            paths, labels, _ = self.train_files
            return sources.files_dataset(paths[idx], labels[idx]), idx
        epoch_seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0] >> 1)
        ds = self.src.dataset(self.train_shard, shuffle_seed=epoch_seed)
        return ds.shuffle(self.shuffle_buffer, seed=epoch_seed), None

    def _epoch_batches(self, epoch: int, first_step: int):
        tf, b = self.tf, self.batch_size
        ds, idx = self._epoch_records(epoch)
        skip = (first_step - epoch * self.steps_per_epoch) * b
        count = self.steps_per_epoch * b - skip
        positions = tf.data.Dataset.range(first_step * b, first_step * b + count)
        ds = tf.data.Dataset.zip((ds.skip(skip).take(count), positions))
        fn = self._augment_fn()
        ds = ds.map(lambda rec, pos: fn(rec[0], rec[1], pos),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if self.on_corrupt == "skip":
            ds = ds.ignore_errors()
        return ds.batch(b, drop_remainder=True).prefetch(tf.data.AUTOTUNE), idx

    def train_batches(self, start_step: int = 0) -> Iterator[dict]:
        """Endless per-process batches {'image': uint8 (b, S, S, 3), 'label': int32 (b,)}."""
        step, b = start_step, self.batch_size
        while True:
            epoch = step // self.steps_per_epoch
            ds, idx = self._epoch_batches(epoch, step)
            it = ds.as_numpy_iterator()
            expected = step * b
            while True:
                try:
                    batch = next(it)
                except StopIteration:
                    break
                except self.tf.errors.OpError as e:
                    self._raise_corrupt(e, step, epoch, idx)
                pos = batch.pop("position")
                skipped = int(pos[-1] - expected + 1 - len(pos))
                if skipped:
                    self.num_skipped += skipped
                    log.warning("skipped %d unreadable images at step %d (data.on_corrupt="
                                "'skip'); %d so far", skipped, step, self.num_skipped)
                expected = int(pos[-1]) + 1
                step += 1
                yield batch
            step = max(step, (epoch + 1) * self.steps_per_epoch)

    def _raise_corrupt(self, err, step: int, epoch: int, idx: Optional[np.ndarray]):
        """Name the file of the failing batch that TensorFlow cannot decode."""
        where = f"{self.src.builder.name} {self.train_shard}" if idx is None else None
        if idx is not None:
            b = self.batch_size
            rows = idx[(step - epoch * self.steps_per_epoch) * b:][:b]
            for path in self.train_files[0][rows]:
                try:
                    from resnet_jax.data.augment import decode_full
                    decode_full(self.tf.io.read_file(path))
                except self.tf.errors.OpError:
                    where = path
                    break
        raise CorruptImageError(f"cannot decode image {where!r} (training step {step}; "
                                f"set data.on_corrupt='skip' to skip it): {err.message}") from err

    # ---- evaluation -----------------------------------------------------------------------
    def eval_batches(self, scale: Optional[int] = None) -> Iterator[dict]:
        """{'image': uint8 (b, V, H, W, 3), 'label': int32 (b,), 'mask': bool (b,)}.

        V = 1 ('center'), 10 ('10crop') or 2 at H = W = `scale` ('multiscale'; `scale` must
        be one of `eval_scales`). Every process yields the same number of batches.
        """
        from resnet_jax.data import augment

        tf = self.tf
        if self.eval_crops == "multiscale" and scale not in self.eval_scales:
            raise ValueError(f"eval_batches(scale={scale}) with data.eval_crops='multiscale': "
                             f"scale must be one of data.multiscale_sizes={self.eval_scales}")
        mode, size, resize = self.eval_crops, self.size, self.eval_resize
        view_shape = {"center": [1, size, size, 3], "10crop": [10, size, size, 3],
                      "multiscale": [2, scale, scale, 3]}[mode]

        def views(image_bytes, label, mask):
            v = augment.eval_views(image_bytes, mode, size, resize, scale or 0)
            v.set_shape(view_shape)
            return {"image": v, "label": tf.cast(label, tf.int32), "mask": mask}

        if self.source_name == "folder":
            plan = order.eval_plan(self.num_eval_examples,
                                   self.eval_batch_size * self.process_count,
                                   self.process_index, self.process_count)
            idx = np.concatenate([i for i, _ in plan])
            mask = np.concatenate([m for _, m in plan])
            paths, labels, _ = self.eval_files
            ds = tf.data.Dataset.zip((sources.files_dataset(paths[idx], labels[idx]),
                                      tf.data.Dataset.from_tensor_slices(mask)))
            ds = ds.map(lambda rec, m: views(rec[0], rec[1], m),
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        else:
            ds = self.src.dataset(self.eval_shard).map(
                lambda x, y: views(x, y, True), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
            pad = {"image": tf.zeros(view_shape, tf.uint8), "label": tf.constant(0, tf.int32),
                   "mask": tf.constant(False)}
            total = self.eval_num_batches * self.eval_batch_size
            ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat()).take(total)
        ds = ds.batch(self.eval_batch_size).prefetch(tf.data.AUTOTUNE)
        yield from ds.as_numpy_iterator()

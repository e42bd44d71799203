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
import re
from typing import Iterator, Optional

import numpy as np

from resnet_jax.data import order, sources
from resnet_jax.data.tf_import import tensorflow
from resnet_jax.data.decode import CorruptImageError, decode_rgb
from resnet_jax.data.device_ops import IMAGENET_MEAN, IMAGENET_STD, make_device_preprocess

log = logging.getLogger(__name__)

class StreamingPipeline:
    """A `resnet_jax.data.Pipeline` streaming from tfds or an image folder. Multi-scale eval:
    `eval_batches_at(s)` for each s in `eval_scales` yields (b, 2, s, s, 3) views (centre
    square + flip) of the same examples in the same order and with the same masks, and
    `eval_batches()` zips them. Also `train_batches(step)`: host batches, for your own loop.
    """

    def __init__(self, cfg, *, global_batch_size: int, eval_batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1):
        tf = tensorflow()
        tf.config.set_visible_devices([], "GPU")  # keep TF off the accelerator JAX uses
        self.tf = tf
        self.source_name, self.augment = cfg.source, cfg.train_augment
        self.eval_crops, self.on_corrupt = cfg.eval_crops, cfg.on_corrupt
        self.size, self.eval_resize = cfg.image_size, cfg.eval_resize
        self.eval_scales = (tuple(int(s) for s in cfg.multiscale_sizes)
                            if self.eval_crops == "multiscale" else (None,))
        self.shuffle_buffer = max(cfg.shuffle_buffer, 1)
        self.seed, self.process_index, self.process_count = seed, process_index, process_count
        self.global_batch_size = global_batch_size
        self.batch_size = order.per_process(global_batch_size, process_count, "global_batch_size")
        self.eval_batch_size = order.per_process(eval_batch_size, process_count,
                                                 "eval_batch_size")
        self.num_skipped = 0
        self.resident = None
        self._where = cfg.path if cfg.source == "folder" else cfg.name
        self._stream, self._next_step = None, None
        self._init_source(cfg)
        self.image_shape = (self.size, self.size, 3)
        # ImageNet constants; per_pixel_mean subtracts the mean colour (a random crop's mean
        # image is flat) and divides by one scalar, the mean channel std.
        self.mean = IMAGENET_MEAN
        self.std = IMAGENET_STD if cfg.normalize == "per_channel" else \
            np.float32(IMAGENET_STD.mean())
        self.device_preprocess = make_device_preprocess(
            mean=self.mean, std=self.std, lighting_std=float(cfg.lighting_std))

    def _init_source(self, cfg) -> None:
        if self.source_name == "folder":
            train_dir, eval_dir = sources.folder_split_dirs(cfg.path)
            self.train_files = sources.list_image_folder(train_dir)
            self.class_names = self.train_files[2]
            # Evaluation labels follow the training classes, by name.
            self.eval_files = sources.list_image_folder(eval_dir, self.class_names)
            self.num_classes = len(self.class_names)
            self.num_train_examples = len(self.train_files[0])
            self.num_eval_examples = len(self.eval_files[0])
            self.steps_per_epoch = self.num_train_examples // self.global_batch_size
        else:
            src = sources.TfdsSource(cfg.name, cfg.data_dir,
                                     self.process_index, self.process_count)
            self.src, self.num_classes, self.class_names = src, src.num_classes, src.class_names
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

    def describe(self) -> str:
        """Where the images come from, in a few words."""
        kind = "image folder" if self.source_name == "folder" else "tfds"
        return f"{kind} {self._where} (streaming)"

    def train_chunk(self, step: int, k: int) -> dict:
        """{'image': uint8 (k, b, S, S, 3), 'label': int32 (k, b)}: steps [step, step + k),
        read on from the previous chunk (a stream is opened at `step` when it does not
        follow on)."""
        if self._stream is None or step != self._next_step:
            self.close()
            self._stream = self.train_batches(step)
        batches = [next(self._stream) for _ in range(k)]
        self._next_step = step + k
        if k == 1:  # a view, not a copy
            return {key: value[None] for key, value in batches[0].items()}
        return {key: np.stack([b[key] for b in batches]) for key in batches[0]}

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

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
        """Name the file of the failing batch that cannot be decoded (tfds: the shard)."""
        if idx is None:
            raise CorruptImageError(
                f"cannot decode an image of {self.src.builder.name} {self.train_shard} "
                f"(training step {step}; set data.on_corrupt='skip' to skip it): "
                f"{_tf_reason(err)}") from None
        b = self.batch_size
        rows = idx[(step - epoch * self.steps_per_epoch) * b:][:b]
        raise _corrupt(err, self.train_files[0][rows], f"training step {step}; set "
                       "data.on_corrupt='skip' to skip it") from None

    # ---- evaluation -----------------------------------------------------------------------
    def eval_batches(self) -> Iterator[dict]:
        """{'image': uint8 (b, V, H, W, 3), 'label': int32 (b,), 'mask': bool (b,)}: V = 1
        ('center') or 10 ('10crop'); multi-scale: 'image' is a tuple with the (b, 2, s, s, 3)
        views of each scale s of the same examples (`eval_step` averages them all). Every
        process yields the same number of batches."""
        if self.eval_scales == (None,):
            yield from self.eval_batches_at()
            return
        for group in zip(*(self.eval_batches_at(s) for s in self.eval_scales), strict=True):
            yield {"image": tuple(b["image"] for b in group), "label": group[0]["label"],
                   "mask": group[0]["mask"]}

    def eval_batches_at(self, scale: Optional[int] = None) -> Iterator[dict]:
        """The eval batches of one scale: views (b, V, H, W, 3), V = 1 ('center'), 10
        ('10crop') or 2 at H = W = `scale` ('multiscale'; `scale` one of `eval_scales`)."""
        from resnet_jax.data import augment

        tf = self.tf
        if self.eval_crops == "multiscale" and scale not in self.eval_scales:
            raise ValueError(f"eval_batches_at({scale}) with data.eval_crops='multiscale': "
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
        it, k = ds.as_numpy_iterator(), 0
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except tf.errors.OpError as err:
                if self.source_name != "folder":
                    raise CorruptImageError(f"cannot decode an image of "
                                            f"{self.src.builder.name} {self.eval_shard}: "
                                            f"{_tf_reason(err)}") from None
                rows = idx[k * self.eval_batch_size:(k + 1) * self.eval_batch_size]
                raise _corrupt(err, paths[rows], "evaluation") from None
            k += 1
            yield batch


def _tf_reason(err) -> str:
    """TensorFlow's own reason, without its graph and op decoration."""
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", getattr(err, "message", str(err)))
    return re.sub(r"\s*\[Op:.*", "", text.strip().splitlines()[0] if text.strip() else "")


def _corrupt(err, paths, what: str) -> CorruptImageError:
    """The error for a batch of `paths` that TensorFlow failed to decode: it names the first
    file Pillow cannot decode either (else the batch's first file)."""
    for path in paths:
        try:
            with open(path, "rb") as f:
                decode_rgb(f.read(), str(path))
        except (CorruptImageError, OSError):
            return CorruptImageError(f"cannot decode image {str(path)!r} ({what}): "
                                     f"{_tf_reason(err)}")
    return CorruptImageError(f"cannot decode an image of the batch starting at "
                             f"{str(paths[0])!r} ({what}): {_tf_reason(err)}")

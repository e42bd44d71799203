"""One element of the streaming pipeline, as grain's workers make it: picklable callables that
need no JAX (workers import only numpy, the decoders and the records).

Training: position p of a process's stream is row p % b of step p // b (b = per-process
batch). `TrainPlan` says which example that is (the epoch permutation of `order`, drawn from
(seed, epoch); process i owns rows [i*b, (i+1)*b) of every global batch) and `TrainElement`
reads, decodes and augments it with the generator of (seed, epoch, example index). So an
element depends on the seed, its step and row, and the data alone: not on the number of
processes, workers or threads, nor on where the run started.

Unreadable images: with on_corrupt='error' the element carries the message (the pipeline
raises it in the main process with the step, whatever grain does with worker exceptions);
with 'skip' the next readable example of the same epoch order takes its place (the batch of
a step stays a function of the step) and the element counts what it skipped.
"""
from __future__ import annotations

import numpy as np

from resnet_jax.data import augment, order
from resnet_jax.data.decode import CorruptImageError


class TrainPlan:
    """Which training example is row `row` of this process's part of step `step`."""

    def __init__(self, seed: int, n: int, global_batch: int, process_index: int = 0,
                 process_count: int = 1):
        self.seed, self.n, self.global_batch = seed, n, global_batch
        self.batch = order.per_process(global_batch, process_count, "global_batch_size")
        self.process_index, self.process_count = process_index, process_count
        self.steps_per_epoch = order.steps_per_epoch(n, global_batch)
        self._perm: tuple = (-1, None)

    def __getstate__(self):
        return {**self.__dict__, "_perm": (-1, None)}

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of epoch `epoch` (the last one is kept: a worker reads on in it)."""
        cached_epoch, perm = self._perm
        if cached_epoch != epoch:
            perm = order.epoch_permutation(self.seed, epoch, self.n)
            self._perm = (epoch, perm)  # one assignment: safe for grain's reader threads
        return perm

    def locate(self, step: int, row: int) -> tuple[int, int]:
        """(epoch, position in that epoch's permutation) of a row of this process."""
        epoch, first = order.locate(step, self.n, self.global_batch, self.process_index,
                                    self.process_count)
        return epoch, first + row

    def index(self, step: int, row: int) -> int:
        """The example (index into the training records) of that row."""
        epoch, at = self.locate(step, row)
        return int(self.permutation(epoch)[at])


def _read(records, i: int) -> bytes:
    try:
        return records.read(i)
    except OSError as err:  # a file gone or unreadable: the same one line as a corrupt one
        raise CorruptImageError(f"cannot decode image {records.name(i)!r}: "
                                f"{type(err).__name__}: {err}") from None


def _reason(err: Exception, name: str) -> str:
    """The reason of a `CorruptImageError` about `name`, without the name."""
    return str(err).removeprefix(f"cannot decode image {name!r}: ")


class TrainElement:
    """position -> {'image': uint8 (S, S, 3), 'label': int32, 'skipped': int32, 'error': str}."""

    def __init__(self, records, plan: TrainPlan, augment_name: str, size: int,
                 eval_resize: int, on_corrupt: str):
        self.records, self.plan = records, plan
        self.augment, self.size, self.eval_resize = augment_name, size, eval_resize
        self.on_corrupt = on_corrupt

    def view(self, epoch: int, i: int) -> tuple[np.ndarray, int]:
        data, label = _read(self.records, i)
        rng = None if self.augment == "none" else augment.example_rng(self.plan.seed, epoch, i)
        return augment.train_view(data, self.records.name(i), self.augment, rng, self.size,
                                  self.eval_resize), label

    def __call__(self, position: int) -> dict:
        step, row = divmod(int(position), self.plan.batch)
        epoch, at = self.plan.locate(step, row)
        perm = self.plan.permutation(epoch)
        for skipped in range(self.plan.n):
            i = int(perm[(at + skipped) % self.plan.n])
            try:
                image, label = self.view(epoch, i)
                return _element(image, label, skipped=skipped)
            except CorruptImageError as err:
                if self.on_corrupt != "skip":
                    name = self.records.name(i)
                    return _element(np.zeros((self.size, self.size, 3), np.uint8), 0,
                                    error=(name, _reason(err, name)))
        raise CorruptImageError(f"data.on_corrupt='skip': none of the {self.plan.n} training "
                                "images can be decoded")


def _element(image, label: int, skipped: int = 0, error: tuple = ("", "")) -> dict:
    """'error': (file, reason) of an image that could not be decoded, else empty strings."""
    return {"image": image, "label": np.int32(label), "skipped": np.int32(skipped),
            "error": np.asarray(error)}


class EvalElement:
    """(index, mask) -> {'image': tuple of uint8 (V, H, W, 3) stacks, 'label', 'mask',
    'error'}: the views of `views` (`data.views.Views`, what `eval --data` uses), all
    scales from one decode; padding rows (mask False) are zeros and read nothing."""

    def __init__(self, records, views, on_corrupt: str):
        self.records, self.views, self.on_corrupt = records, views, on_corrupt

    def blank(self) -> tuple:
        return tuple(np.zeros(s, np.uint8) for s in self.views.shapes())

    def __call__(self, row: tuple) -> dict:
        i, mask = int(row[0]), bool(row[1])
        error = ("", "")
        image, label = self.blank(), 0
        if mask:
            name = self.records.name(i)
            try:
                data, label = _read(self.records, i)
                image = self.views.of(name, data)
            except ValueError as err:  # CorruptImageError, or an image the views refuse
                image, label, mask = self.blank(), 0, False
                error = (name, _reason(err, name).removeprefix(f"{name}: "))
        skipped = bool(error[0]) and self.on_corrupt == "skip"
        return {"image": image, "label": np.int32(label), "mask": np.bool_(mask),
                "skipped": np.int32(skipped), "error": np.asarray(("", "") if skipped else error)}

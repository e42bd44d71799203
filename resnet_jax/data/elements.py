"""One element of the streaming pipeline, as grain's workers make it: picklable callables that
need no JAX (workers import only numpy, the decoders and the records).

Training: position p of a process's stream is row p % b of step p // b (b = per-process
batch). `TrainPlan` says which example that is (the epoch permutation of `order`, drawn from
(seed, epoch); process i owns rows [i*b, (i+1)*b) of every global batch) and `TrainElement`
reads, decodes and augments it with the generator of (seed, epoch, example index). So an
element depends on the seed, its step and row, and the data alone: not on the number of
processes, workers or threads, nor on where the run started.

Bad files: an image that does not decode is corrupt; a file that cannot be read is a read
error (`decode.read_retrying`: tried again with growing pauses first), never skipped: the
batch of a step stays a function of the step. The element carries either as its 'error'
(the pipeline raises it in the main process with the step, whatever grain does with worker
exceptions). With on_corrupt='skip' a corrupt training image is replaced by the example at the
same row of the next step of its epoch (`stand_ins`), with an augmentation of its own: never a
duplicate in the batch, nor the view that example has in its own step.
"""
from __future__ import annotations

import numpy as np

from resnet_jax.data import augment, order
from resnet_jax.data.decode import CorruptImageError, ReadError, read_retrying


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


    def stand_ins(self, at: int):
        """The positions of the epoch order whose examples stand in, in turn, for that of
        position `at` when it does not decode: the same global row of the epoch's next steps
        (wrapping to its first), then the examples the epoch leaves over (n % B). None is in
        `at`'s own batch, and two rows of a batch share none of the next steps' (only when
        all of those fail too do they meet among the left-over ones)."""
        b, steps = self.global_batch, self.steps_per_epoch
        step, row = divmod(at, b)
        for j in range(1, steps):
            yield ((step + j) % steps) * b + row
        rest = self.n - steps * b
        for k in range(rest):
            yield steps * b + (row + k) % rest


def _read(records, i: int) -> tuple[bytes, int]:
    """(bytes, label) of example i, read again on an OSError (`decode.read_retrying`)."""
    return read_retrying(lambda: records.read(i), records.name(i))


def _reason(err: Exception, name: str) -> str:
    """The reason of a `CorruptImageError` or `ReadError` about `name`, without the name."""
    for prefix in (f"cannot decode image {name!r}: ", f"cannot read image {name!r}: "):
        if str(err).startswith(prefix):
            return str(err)[len(prefix):]
    return str(err)


class TrainElement:
    """position -> {'image': uint8 (S, S, 3), 'label': int32, 'skipped': int32, 'error': str}."""

    def __init__(self, records, plan: TrainPlan, augment_name: str, size: int,
                 eval_resize: int, on_corrupt: str):
        self.records, self.plan = records, plan
        self.augment, self.size, self.eval_resize = augment_name, size, eval_resize
        self.on_corrupt = on_corrupt

    def view(self, epoch: int, i: int, slot: int | None = None) -> tuple[np.ndarray, int]:
        """The training view of example i (standing in for position `slot`: a view drawn
        for that)."""
        data, label = _read(self.records, i)
        rng = (None if self.augment == "none"
               else augment.example_rng(self.plan.seed, epoch, i, slot))
        return augment.train_view(data, self.records.name(i), self.augment, rng, self.size,
                                  self.eval_resize), label

    def __call__(self, position: int) -> dict:
        step, row = divmod(int(position), self.plan.batch)
        epoch, at = self.plan.locate(step, row)
        perm = self.plan.permutation(epoch)
        i = int(perm[at])
        try:
            try:
                return _element(*self.view(epoch, i))
            except CorruptImageError as err:
                if self.on_corrupt != "skip":
                    return self.failed(i, err, "decode")
            for skipped, stand_in in enumerate(self.plan.stand_ins(at), start=1):
                i = int(perm[stand_in])
                try:
                    return _element(*self.view(epoch, i, slot=at), skipped=skipped)
                except CorruptImageError:
                    continue
        except ReadError as err:
            return self.failed(i, err, "read")
        raise CorruptImageError(f"data.on_corrupt='skip': none of the {self.plan.n} training "
                                "images can be decoded")

    def failed(self, i: int, err: Exception, kind: str) -> dict:
        name = self.records.name(i)
        return _element(np.zeros((self.size, self.size, 3), np.uint8), 0,
                        error=(name, _reason(err, name), kind))


def _element(image, label: int, skipped: int = 0, error: tuple = ("", "", "")) -> dict:
    """'error': (file, reason, 'decode' | 'read') of an image that could not be decoded or
    read, else empty strings."""
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
        error = ("", "", "")
        image, label = self.blank(), 0
        if mask:
            name = self.records.name(i)
            try:
                data, label = _read(self.records, i)
                image = self.views.of(name, data)
            except (ValueError, ReadError) as err:  # CorruptImageError, an image the views
                image, label, mask = self.blank(), 0, False  # refuse, or a read error
                kind = "read" if isinstance(err, ReadError) else "decode"
                error = (name, _reason(err, name).removeprefix(f"{name}: "), kind)
        skipped = error[2] == "decode" and self.on_corrupt == "skip"
        return {"image": image, "label": np.int32(label), "mask": np.bool_(mask),
                "skipped": np.int32(skipped),
                "error": np.asarray(("", "", "") if skipped else error)}

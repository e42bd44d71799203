"""The streaming Pipeline (ImageNet-size): tfds ArrayRecord, an image folder or an image tar ->
grain -> per-process numpy batches. No TensorFlow.

The batch of step s is a function of (seed, s) and the data alone. Each epoch is a
permutation drawn from (seed, epoch) (`order`, the in-memory rule), process i reads only rows
[i*b, (i+1)*b) of every global batch, by random access (`sources`), and each example is
augmented with the generator of (seed, epoch, its index) (`elements`, `augment`). So a run
resumed at step s opens its stream at s and reads what s needs, nothing before it; 2
processes see the global batches of 1; workers and threads change nothing.

grain: `MapDataset.range` over the stream's positions -> `.map(TrainElement)` (read, decode,
augment) -> `.batch(b)` -> `.to_iter_dataset` -> `.mp_prefetch` (`data.workers` worker
processes, each making whole batches; 0: in the calling thread, which the training loop's
feed thread already overlaps with the device). Evaluation is the same over the padded
evaluation plan with the views of `views` (decoded once for all scales).
"""
from __future__ import annotations

import copy
import functools
import logging
import os
import threading
import time
from typing import Iterator

import numpy as np

from resnet_jax.data import main_guard, order, sources
from resnet_jax.data.decode import CorruptImageError, ReadError
from resnet_jax.data.device_ops import IMAGENET_MEAN, IMAGENET_STD, make_device_preprocess
from resnet_jax.data.elements import EvalElement, TrainElement, TrainPlan

log = logging.getLogger(__name__)

HORIZON_STEPS = 1 << 40  # a stream's length: a run never gets there


def num_workers(workers: int) -> int:
    """`data.workers`: -1 -> one per CPU core this process may use; else as given."""
    if workers == -1:
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else os.cpu_count() or 1)
    return workers


def one_opencv_thread() -> None:
    """OpenCV resizes with a thread per core by default: on a 224 x 224 view the threads cost
    more CPU than they save, and each worker (or the calling thread) is already one core's
    work."""
    import cv2
    cv2.setNumThreads(1)


def init_worker(worker_index: int = 0, worker_count: int = 1, parent: int | None = None) -> None:
    """In each grain worker: SIGTERM and SIGINT are the training process's to handle (a
    preemption that signals every process must let the run save its checkpoint); grain stops
    its workers itself (a flag, then SIGKILL) when the pipeline closes, but a training process
    that dies without closing it (SIGKILL, the OOM killer, a second Ctrl-C) leaves them
    waiting for ever, and they ignore both signals: so they watch their parent (`parent`, the
    training process's pid) and end with it. One OpenCV thread."""
    import signal
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent is not None:
        threading.Thread(target=end_with_parent, args=(parent,), name="end-with-parent",
                         daemon=True).start()
    one_opencv_thread()


PARENT_POLL_S = 0.25


def end_with_parent(parent: int) -> None:
    """Ends this process once `parent` is no longer its parent (a process whose parent died
    is re-parented: to init, or a subreaper). Polled rather than PR_SET_PDEATHSIG, whose signal
    comes when the *thread* that started the process ends: grain starts its workers from
    short-lived threads of its own."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def make_iterator(ds, workers: int, buffer: int = 2):
    """grain iterator of a MapDataset: in this thread (workers=0: nothing read ahead) or in
    `workers` processes, each `buffer` batches ahead. Either way the maps (read, decode,
    augment) run in the thread that iterates, with no read threads (`num_threads=0`): grain's
    read threads would only share the same core (benchmarks/README.md, "Input pipeline")."""
    import grain
    read = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    if workers == 0:
        # the maps run here: OpenCV's thread count is the process's (no per-thread setting),
        # and a training process uses OpenCV for these maps alone
        one_opencv_thread()
        return iter(ds.to_iter_dataset(read))
    from absl import flags
    if not flags.FLAGS.is_parsed():  # grain's worker pool reads its absl flags (defaults)
        flags.FLAGS.mark_as_parsed()
    return iter(ds.to_iter_dataset(read).mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=buffer),
        worker_init_fn=functools.partial(init_worker, parent=os.getpid())))


WORKER_DIED = "Worker process was terminated unexpectedly"  # grain's RuntimeError
MAX_WORKER_RESTARTS = 3


def read_on(open_at, start: int = 0) -> Iterator:
    """The elements of `open_at(start)`, reopened at the element it stopped at when a grain
    worker dies (`MAX_WORKER_RESTARTS` times in a row at most, then the error is raised).

    A worker that a preemption's SIGTERM reaches while it starts up (before
    `init_worker` runs in it: seconds on a busy machine, at every evaluation) dies of
    it; the run must still read on to its checkpoint. Elements are functions of their
    position, so a reopened stream gives the same ones."""
    at, restarts = start, 0
    while True:
        it = open_at(at)
        try:
            while True:
                try:
                    element = next(it)
                except StopIteration:
                    return
                except RuntimeError as e:
                    if WORKER_DIED not in str(e) or restarts >= MAX_WORKER_RESTARTS:
                        raise
                    restarts += 1
                    log.warning("a data worker died (%s); reading on from element %d with "
                                "new workers", str(e).splitlines()[0], at)
                    break
                at, restarts = at + 1, 0
                yield element
        finally:
            close_iterator(it)


def close_iterator(it) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        close()


def release_shared_memory() -> None:
    """Unlinks now the shared-memory blocks of the batches grain's workers handed over. grain
    unlinks a block when its last array is collected, in a thread of its own; closed iterators
    keep a few in reference cycles until the next garbage collection, which at the end of a
    process comes too late (in the interpreter's teardown, that thread gone: "resource_tracker:
    There appear to be 4 leaked shared_memory objects to clean up at shutdown")."""
    import gc

    from grain.multiprocessing import SharedMemoryArray
    gc.collect()
    pool = getattr(SharedMemoryArray, "_del_thread_pool", None)
    if pool is not None:  # its one thread unlinks in order: done once this marker has run
        pool.apply(lambda: None)


def owned(batch: dict, workers: int) -> dict:
    """`batch` with its arrays copied out of the workers' shared memory (with `workers` > 0):
    a block lives as long as any array on it, and one that a caller still holds when the
    process ends is never unlinked ("leaked shared_memory objects" at exit)."""
    if not workers:  # made in this process: nothing shared
        return batch
    return {key: tuple(map(np.array, value)) if isinstance(value, tuple) else np.array(value)
            for key, value in batch.items()}


class StreamingPipeline:
    """A `resnet_jax.data.Pipeline` streaming from tfds (ArrayRecord), an image folder or an
    image tar. Multi-scale eval: `eval_batches()` yields the views of every scale in
    `eval_scales` of each batch, from one decode."""

    def __init__(self, cfg, *, global_batch_size: int, eval_batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1, eval_only: bool = False):
        self.augment, self.eval_crops, self.on_corrupt = (cfg.train_augment, cfg.eval_crops,
                                                          cfg.on_corrupt)
        self.size, self.eval_resize = int(cfg.image_size), int(cfg.eval_resize)
        self.eval_scales = (tuple(int(s) for s in cfg.multiscale_sizes)
                            if self.eval_crops == "multiscale" else (None,))
        self.seed, self.process_index, self.process_count = seed, process_index, process_count
        self.global_batch_size = global_batch_size
        self.batch_size = order.per_process(global_batch_size, process_count, "global_batch_size")
        self.eval_batch_size = order.per_process(eval_batch_size, process_count,
                                                 "eval_batch_size")
        self.workers = num_workers(int(cfg.workers))
        main_guard.check(self.workers)  # before any worker runs the user's script again
        self.num_skipped, self.resident = 0, None
        # eval_only: the training split is not listed unless the evaluation split is held out
        # of it (splits.train None: 0 training examples, and no training stream).
        self.splits = sources.open_splits(cfg, train=not eval_only)
        self.class_names = list(self.splits.class_names)
        self.num_classes = len(self.class_names)
        listed = self.splits.train is not None
        self.num_train_examples = len(self.splits.train) if listed else 0
        self.num_eval_examples = len(self.splits.eval)
        self.plan = TrainPlan(seed, self.num_train_examples, global_batch_size, process_index,
                              process_count) if listed else None
        self.steps_per_epoch = self.plan.steps_per_epoch if self.plan else 0
        self.image_shape = (self.size, self.size, 3)
        # ImageNet constants: the mean colour (a random crop's mean image is flat), divided by
        # each channel's std or ('channel_mean_scalar_std') by one scalar, their mean.
        self.mean = IMAGENET_MEAN
        self.std = IMAGENET_STD if cfg.normalize == "per_channel" else \
            np.float32(IMAGENET_STD.mean())
        self.device_preprocess = make_device_preprocess(
            mean=self.mean, std=self.std, lighting_std=float(cfg.lighting_std))
        self._lock, self._eval_lock = threading.Lock(), threading.Lock()
        self._stream, self._next_step, self._closed = None, None, False
        self._eval_stream = None  # between evaluations (`_eval_pass`)

    def with_seed(self, seed: int) -> "StreamingPipeline":
        """This pipeline (sources shared) with the order and augmentation of run seed `seed`,
        and a training stream of its own."""
        other = copy.copy(self)
        other.seed = seed
        other.plan = TrainPlan(seed, self.num_train_examples, self.global_batch_size,
                               self.process_index, self.process_count)
        other._lock, other._eval_lock, other.num_skipped = threading.Lock(), threading.Lock(), 0
        other._stream, other._next_step, other._closed = None, None, False
        other._eval_stream = None
        return other

    def identity(self) -> dict:
        """What the data is (`data.identity`): class names, and each split's size and the
        fingerprint of its examples' names and labels."""
        from resnet_jax.data.identity import of_split
        train = self.splits.train
        return {"class_names": self.class_names,
                "train": of_split(self.num_train_examples, train.fingerprint() if train else ""),
                "eval": of_split(self.num_eval_examples, self.splits.eval.fingerprint(),
                                 self.splits.eval_split)}

    def describe(self) -> str:
        """Where the images come from, in a few words."""
        workers = (f"{self.workers} worker process{'es' if self.workers > 1 else ''}"
                   if self.workers else "decoded in-process")
        return (f"{self.splits.where} (streaming, grain, {workers}; evaluation: "
                f"{self.splits.eval_split})")

    # ---- training -------------------------------------------------------------------------
    def _train_dataset(self, start_step: int):
        import grain
        b = self.batch_size
        element = TrainElement(self.splits.train, self.plan, self.augment, self.size,
                               self.eval_resize, self.on_corrupt)
        return grain.MapDataset.range(start_step * b, HORIZON_STEPS * b).map(element).batch(b)

    def _check(self, batch: dict, what: str) -> dict:
        """Raise an element's error (with `what`: the step) or count what it skipped."""
        bad = [tuple(map(str, e)) for e in batch.pop("error") if str(e[0])]
        if bad:
            name, reason, kind = bad[0]
            if kind == "read":
                raise ReadError(f"cannot read image {name!r} ({what}): {reason}: a read error, "
                                "not a corrupt image (data.on_corrupt does not apply); check "
                                "the storage, then run the same command again (a run resumes)")
            raise CorruptImageError(f"cannot decode image {name!r} ({what}; set data.on_corrupt="
                                    f"'skip' to skip it): {reason}")
        skipped = int(batch.pop("skipped").sum())
        if skipped:
            self.num_skipped += skipped
            log.warning("skipped %d unreadable image(s) (%s, data.on_corrupt='skip'); %d so far",
                        skipped, what, self.num_skipped)
        return batch

    def train_batches(self, start_step: int = 0) -> Iterator[dict]:
        """Endless per-process batches {'image': uint8 (b, S, S, 3), 'label': int32 (b,)}."""
        batches = self._batches(start_step)
        try:
            for batch in batches:
                yield owned(batch, self.workers)
        finally:
            batches.close()  # its workers now, not when it is collected

    def _batches(self, start_step: int) -> Iterator[dict]:
        """`train_batches`, its arrays still in the workers' shared memory."""
        step = start_step
        for batch in read_on(lambda at: make_iterator(self._train_dataset(at), self.workers),
                             start_step):
            batch = self._check(batch, f"training step {step}")
            step += 1
            yield batch

    def train_chunk(self, step: int, k: int) -> dict:
        """{'image': uint8 (k, b, S, S, 3), 'label': int32 (k, b)}: steps [step, step + k),
        read on from the previous chunk (a stream is opened at `step` when it does not follow
        on: a resume reads nothing before it)."""
        with self._lock:
            if self._closed or self.plan is None:
                raise RuntimeError(f"StreamingPipeline.train_chunk({step}, {k}) " + (
                    "after close()" if self._closed else "of an evaluation-only pipeline"))
            if self._stream is None or step != self._next_step:
                self._close_stream()
                self._stream = self._batches(step)
            try:
                batches = [next(self._stream) for _ in range(k)]
            except BaseException:
                self._close_stream()  # a failed stream is not resumed mid-way
                raise
            self._next_step = step + k
        # a copy (off the workers' shared memory too, as `owned`)
        return {key: np.stack([b[key] for b in batches]) for key in batches[0]}

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def close(self) -> None:
        """Stops and joins the training and evaluation streams' workers (waits for a
        `train_chunk` in progress; an evaluation in progress closes its stream when it ends);
        idempotent. A later `train_chunk` or `eval_batches` raises RuntimeError."""
        with self._lock:
            self._closed = True
            self._close_stream()
        with self._eval_lock:
            stream, self._eval_stream = self._eval_stream, None
        if stream is not None:
            stream.close()
        if self.workers:
            release_shared_memory()

    # ---- evaluation -----------------------------------------------------------------------
    def _views(self, scales: tuple):
        from resnet_jax.data import preprocess, views
        prep = preprocess.Preprocessing(np.zeros(3), 1.0, resize=self.eval_resize,
                                        crop=self.size, style="tf")
        return views.Views(prep, self.eval_crops, scales if scales != (None,) else ())

    def _eval_rows(self) -> list:
        plan = order.eval_plan(self.num_eval_examples, self.eval_batch_size * self.process_count,
                               self.process_index, self.process_count)
        return [(int(i), bool(m)) for idx, mask in plan for i, m in zip(idx, mask)]

    def _eval_batches_per_pass(self) -> int:
        return -(-self.num_eval_examples // (self.eval_batch_size * self.process_count))

    def _eval_pass(self) -> Iterator[dict]:
        """The batches of one pass over the evaluation plan, from a stream that reads pass
        after pass and is kept open between evaluations: its workers are spawned once, not at
        every evaluation (seconds each; `data.workers` idle processes in between, holding the
        next pass's first batches). A pass left unfinished closes the stream (the next one
        opens another at its start)."""
        import grain
        with self._eval_lock:
            if self._closed:
                raise RuntimeError("StreamingPipeline.eval_batches() after close()")
            stream, self._eval_stream = self._eval_stream, None
        if stream is None:
            element = EvalElement(self.splits.eval, self._views(self.eval_scales),
                                  self.on_corrupt)
            ds = (grain.MapDataset.source(self._eval_rows()).map(element)
                  .batch(self.eval_batch_size).repeat())
            stream = read_on(lambda at: make_iterator(ds[at:], self.workers), 0)
        whole = False
        try:
            for _ in range(self._eval_batches_per_pass()):
                yield owned(self._check(next(stream), "evaluation"), self.workers)
            whole = True
        finally:
            with self._eval_lock:
                kept = whole and not self._closed and self._eval_stream is None
                if kept:
                    self._eval_stream = stream
            if not kept:
                stream.close()

    def eval_batches(self) -> Iterator[dict]:
        """{'image': uint8 (b, V, H, W, 3), 'label': int32 (b,), 'mask': bool (b,)}: V = 1
        ('center') or 10 ('10crop'); multi-scale: 'image' is a tuple with the (b, 2, s, s, 3)
        views of each scale s of the same examples (`eval_step` averages them all). Every
        example once (padding rows masked), every process the same number of batches."""
        for batch in self._eval_pass():
            if self.eval_crops != "multiscale":
                batch["image"] = batch["image"][0]
            yield batch

"""Checkpoints (orbax): saving, listing, restoring (the restore decision: checkpoint_reads.py).

A checkpoint of step s holds the TrainState, the base RNG and a small JSON `meta` item
(model name and config, step = the position in the data: the next batch to train is the
batch of step s). Saves are asynchronous; orbax writes each one into a temporary directory
and renames it (a commit file on GCS), so a checkpoint is complete or absent and a crash or
a full disk during a save leaves the previous ones as they were.

Layout: `workdir/checkpoints/<step>/{state,meta}`. Retention: the newest `keep` plus the one
with the lowest validation top-1 error (`save(..., metrics={'top1_error': ...})`; with N
replicas, `top1_error` is a list and each replica's best is kept). A step that
cannot be read when a run resumes (a torn file) is renamed `<step>.unreadable`, never deleted,
and the run resumes from the one before it and saves that step again.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from resnet_jax import files
from resnet_jax.errors import StorageError
from resnet_jax.train import checkpoint_reads as reads
from resnet_jax.train.checkpoint_reads import (  # noqa: F401 - the errors a caller catches
    CheckpointMismatchError, CheckpointReadError, NoReadableCheckpointError, Outcome)

log = logging.getLogger(__name__)


class CheckpointSaveError(StorageError):
    """A save failed (e.g. disk full); the checkpoints committed before it are left as they
    were."""


class Restored(NamedTuple):
    """What `Checkpointer.restore_latest` returns: the state, the base rng, the step (= the
    position in the data) and the JSON meta item saved with them."""
    state: Any
    rng: jax.Array
    step: int
    meta: dict


def _key_data(rng: jax.Array) -> jax.Array:
    """Raw uint32 key data of an old-style or typed key (orbax saves plain arrays)."""
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(rng)
    return rng


def _abstract(tree: Any) -> Any:
    """ShapeDtypeStructs carrying each leaf's sharding, so restore lands on the mesh."""
    def leaf(x):
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
    return jax.tree.map(leaf, tree)


class Checkpointer:
    """Saves and restores (TrainState, rng, meta) under `directory`.

    Args:
      directory: where step directories go (local path or gs://).
      keep: how many of the newest checkpoints to keep (plus the best).
      async_save: write in a background thread (the train loop goes on meanwhile).
      replicas: N > 1 keeps the best checkpoint of each replica (`save`'s metrics then hold a
        list of N errors, inf for a replica without a finite evaluation).
      read_only: for readers (eval, export, loading): nothing is created, cleaned up or
        saved. orbax's cleanup of unfinished saves at start would otherwise delete the save
        a training run on the same workdir is writing now; only the run holding the
        workdir's lease opens it writable.
      read_attempts, retry_delay_s: a read that fails for a reason other than damage is
        tried this many times, the delay doubling (`checkpoint_reads.with_retries`).
    """

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True,
                 replicas: int = 1, read_only: bool = False, read_attempts: int = 3,
                 retry_delay_s: float = 2.0):
        # orbax refuses relative paths (and only in its save thread): `--workdir runs/x`.
        self.directory = directory if "://" in directory else os.path.abspath(directory)
        _check_remote_support(self.directory)
        self.read_attempts, self.retry_delay_s = read_attempts, retry_delay_s
        self._in_flight: int | None = None  # the step of the newest save started
        # A failed write leaves TensorStore's late errors behind too (see `_restore_state`).
        _silence_failed_read_noise()
        # reverse=True sorts by decreasing error; BestN keeps the tail: the lowest error.
        best = [ocp.checkpoint_managers.BestN(get_metric_fn=metric, reverse=True, n=1,
                                              keep_checkpoints_without_metrics=False)
                for metric in _best_metrics(replicas)]
        policy = ocp.checkpoint_managers.AnyPreservationPolicy(
            [ocp.checkpoint_managers.LatestN(n=keep), *best])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, enable_async_checkpointing=async_save,
            create=not read_only, cleanup_tmp_directories=not read_only, read_only=read_only)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "meta"))

    def all_steps(self) -> list[int]:
        """Committed steps on disk, oldest first (temporary directories are not steps)."""
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, rng: jax.Array, meta: dict,
             metrics: dict | None = None) -> None:
        """Starts an (async) save of step `step`. Raises CheckpointSaveError if this or the
        previous (async) save failed, naming that step; the checkpoints committed before it
        stay as they were."""
        self._raise_if_failed()
        items = {"state": state, "rng": _key_data(rng)}
        args = ocp.args.Composite(state=ocp.args.StandardSave(items),
                                  meta=ocp.args.JsonSave(dict(meta, step=int(step))))
        try:
            self.manager.save(int(step), args=args, metrics=metrics, force=True)
        except Exception as err:
            raise CheckpointSaveError(self._save_failed(step, err)) from err
        self._in_flight = int(step)

    def _raise_if_failed(self) -> None:
        """Waits for the save in flight; raises CheckpointSaveError naming it if it failed."""
        try:
            self.manager.wait_until_finished()
            self.manager.check_for_errors()
        except Exception as err:  # orbax re-raises the background thread's error here
            raise CheckpointSaveError(self._save_failed(self._in_flight, err)) from err

    def _save_failed(self, step: int | None, err: Exception) -> str:
        which = f"of step {step}" if step is not None else "in flight"
        return (f"saving the checkpoint {which} in {self.directory} failed ({reads.reason(err)})"
                f"; {self._readable_before(step)}")

    def _readable_before(self, step: int | None) -> str:
        """What a rerun would resume from, checked (its meta reads back), for an error message."""
        try:
            committed = [s for s in self.all_steps() if step is None or s < step]
        except Exception:  # noqa: BLE001 - only used to word an error message
            return "the earlier checkpoints could not be listed"
        for candidate in reversed(committed):
            try:
                self.read_meta(candidate)
            except Exception:  # noqa: BLE001
                continue
            return (f"the newest earlier checkpoint, step {candidate}, reads back: running the "
                    "same command again resumes from it")
        return "no earlier checkpoint reads back: running the same command again starts over"

    def wait(self) -> None:
        """Blocks until pending saves are committed; raises CheckpointSaveError on failure."""
        self._raise_if_failed()

    def close(self) -> None:
        self.manager.close()

    def _step_dir(self, step: int) -> epath.Path:
        return epath.Path(self.directory) / str(step)

    def read_meta(self, step: int) -> dict:
        """The JSON meta item of `step` (read by this process alone: no collective)."""
        return dict(ocp.JsonCheckpointHandler().restore(
            self._step_dir(step) / "meta", args=ocp.args.JsonRestore()))

    def latest_meta(self) -> dict | None:
        """The meta of the newest checkpoint whose meta reads (None if there is none); cheap,
        so a run can refuse a workdir of another model before building anything big. Damaged
        metas are passed over; other failures are retried, then raised."""
        for step in reversed(self.all_steps()):
            try:
                return self._read(lambda s=step: self.read_meta(s), step)
            except Exception as err:  # noqa: BLE001
                if not (reads.is_damage(err) or self._missing_files(step)):
                    raise CheckpointReadError(self._read_failed(step, err)) from err
        return None

    def _read(self, read: Callable[[], Any], step: int) -> Any:
        return reads.with_retries(
            read, f"the checkpoint of step {step} in {self.directory}", self.read_attempts,
            self.retry_delay_s, lambda err: reads.is_damage(err) or bool(self._missing_files(step)))

    def _read_failed(self, step: int, err: BaseException) -> str:
        return (f"cannot read the checkpoint of step {step} in {self.directory} "
                f"({reads.reason(err)}; {self.read_attempts} attempt(s)); nothing was moved or "
                "skipped: the error may pass (storage, memory), so run the same command again")

    def restore_latest(self, state: Any, rng: jax.Array,
                       check_meta: Callable[[dict], None] | None = None, *,
                       set_aside: bool = True, step: int | None = None) -> Restored | None:
        """Restores the newest readable checkpoint onto the shardings of `state` and `rng`.

        A checkpoint whose files are torn or missing (`checkpoint_reads.is_damage`) is skipped
        with a one-line warning and the one before it is tried. With `set_aside` (training),
        each skipped step directory is renamed `<step>.unreadable` (kept for inspection, never
        deleted), so the run can save that step again; without it (eval, loading) nothing is
        changed. Any other failure is retried (`read_attempts`), then raised as
        CheckpointReadError, moving nothing. With several processes the steps tried and every
        decision are the same on all of them (`checkpoint_reads.agree`).
        `check_meta(meta)` may raise (e.g. CheckpointMismatchError); that error propagates.
        `step`: that checkpoint only (no fallback). `state` and `rng` may be abstract
        (`jax.ShapeDtypeStruct`s with shardings). Returns a `Restored`, or None if there is
        no checkpoint.
        """
        steps = reads.same_steps(self.all_steps())
        steps = [s for s in steps if step is None or s == step]
        typed = jnp.issubdtype(rng.dtype, jax.dtypes.prng_key)
        target = {"state": _abstract(state), "rng": _abstract(_key_data(rng))}
        found = None
        step_found, value, unreadable = reads.newest_readable(
            steps, lambda s: self._try(s, target, check_meta), self.directory)
        if step_found is not None:
            restored, meta = value
            new_rng = jax.random.wrap_key_data(restored["rng"]) if typed else restored["rng"]
            found = Restored(restored["state"], new_rng, int(meta["step"]), meta)
        for bad, err in unreadable:
            self._skip(bad, err, set_aside, found)
        if unreadable and set_aside:
            if jax.process_count() > 1:  # every process sees the renames before saving again
                multihost_utils.sync_global_devices("resnet_jax_checkpoint_set_aside")
            self.manager.reload()
        return found

    def _try(self, step: int, target: dict, check_meta) -> tuple[Outcome, Any]:
        """This process's reading of `step`: (OK, (restored, meta)) or (outcome, error)."""
        try:
            meta = self._read(lambda: self.read_meta(step), step)
            if check_meta is not None:
                check_meta(meta)
            restored = self._read(lambda: self._restore_state(step, target), step)
        except CheckpointMismatchError as err:
            return Outcome.MISMATCH, err
        except Exception as err:  # noqa: BLE001 - classified
            if reads.is_damage(err):
                return Outcome.DAMAGED, err
            missing = self._missing_files(step)
            if missing:  # the error itself may not say so (a missing _METADATA does not)
                return Outcome.DAMAGED, f"{', '.join(missing)} missing ({reads.reason(err)})"
            return Outcome.FAILED, CheckpointReadError(self._read_failed(step, err))
        return Outcome.OK, (restored, meta)

    # Files every step of ours has (orbax's layout); looked for only after a read failed.
    _FILES = ("meta/metadata", "state/_METADATA")

    def _missing_files(self, step: int) -> list[str]:
        try:
            return [f for f in self._FILES if not (self._step_dir(step) / f).exists()]
        except Exception:  # noqa: BLE001 - cannot even look: not a reason to call it damaged
            return []

    def _restore_state(self, step: int, target: dict) -> dict:
        # When one read fails, the reads still in flight fail too, in TensorStore's threads,
        # after orbax's event loop is closed: hundreds of lines of tracebacks (some of them
        # before `restore` raises) for the one failure reported below.
        _silence_failed_read_noise()
        # The item's handler, not the manager: the manager's restore ends in a barrier of all
        # processes, which a process whose read failed never reaches (the others would hang
        # there instead of hearing about it in `checkpoint_reads.agree`).
        handler = ocp.StandardCheckpointHandler()
        try:
            return handler.restore(self._step_dir(step) / "state",
                                   args=ocp.args.StandardRestore(target))
        finally:
            handler.close()

    def _skip(self, step: int, err: Any, set_aside: bool, found: Restored) -> None:
        then = f"using step {found.step}"
        if set_aside:
            then = f"moved to {self._set_aside(step)}; resuming from step {found.step}"
        log.warning("checkpoint of step %d in %s cannot be read (%s); %s", step,
                    self.directory, reads.reason(err), then)

    def _set_aside(self, step: int) -> str:
        """Renames the step's directory `<step>.unreadable` (`.unreadable.N` if taken); with
        several processes process 0 does it."""
        root = epath.Path(self.directory)
        if jax.process_index() != 0:
            return f"{root / str(step)}.unreadable* (by process 0)"
        target = root / f"{step}.unreadable"
        n = 1
        while target.exists():
            n += 1
            target = root / f"{step}.unreadable.{n}"
        (root / str(step)).rename(target)
        return os.fspath(target)


def _best_metrics(replicas: int) -> list[Callable[[dict], float]]:
    """What each BestN policy ranks by: the error, or replica i's in the list of N."""
    if replicas == 1:
        return [lambda m: m["top1_error"]]
    return [lambda m, i=i: m["top1_error"][i] for i in range(replicas)]


def _check_remote_support(directory: str) -> None:
    """Refuses a gs:// directory without google-cloud-storage, at once: orbax lists the steps
    of a gs:// directory through it (it asks whether the bucket has a hierarchical namespace),
    but only once the directory holds checkpoints, so a run would train and save and then fail
    to resume after a preemption."""
    if directory.startswith("gs://") and not files.installed("google.cloud.storage"):
        raise ImportError(
            f"checkpoints in {directory} need google-cloud-storage (orbax asks it about the "
            "bucket when it lists the checkpoints): pip install 'resnet-jax[gcs]'")


_READ_NOISE = ("Event loop is closed", "Encountered error while reading array")


class _OrphanedReads(logging.Filter):
    """asyncio's "Task exception was never retrieved" for orbax's other array reads of a
    restore that failed (the first failure is raised and reported; the tasks of the others are
    collected later, each with a tensorstore traceback of thousands of characters)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (message.startswith("Task exception was never retrieved")
                    and "async_deserialize" in message)


_ORPHANED_READS = _OrphanedReads()


def _silence_failed_read_noise() -> None:
    """Drops the 'unraisable' errors a failed orbax read leaves behind (see `_restore_state`),
    and asyncio's log of the read tasks orphaned by it; every other unraisable error or
    asyncio log record still goes through. Installed once (again if someone replaced the hook
    since)."""
    logging.getLogger("asyncio").addFilter(_ORPHANED_READS)  # a no-op when it is there
    previous = sys.unraisablehook
    if getattr(previous, "_resnet_jax_filter", False):
        return

    def hook(unraisable):
        if not str(unraisable.exc_value).startswith(_READ_NOISE):
            previous(unraisable)

    hook._resnet_jax_filter = True
    sys.unraisablehook = hook


def check_same_model(expected: dict, added: dict | None = None) -> Callable[[dict], None]:
    """A `check_meta` that refuses checkpoints whose meta['model'] differs from `expected`.

    `added`: keys introduced after older checkpoints were written, with the value those
    checkpoints implicitly have, or a function of their meta['model'] giving it.
    """
    def complete(model: dict) -> dict:
        return {**{k: v(model) if callable(v) else v for k, v in (added or {}).items()},
                **model}

    expected = complete(expected)

    def check(meta: dict) -> None:
        found = meta.get("model")
        if isinstance(found, dict):
            found = complete(found)
        if found != expected:
            raise CheckpointMismatchError(
                f"the workdir holds checkpoints of another model: {found} (step "
                f"{meta.get('step')}), but the config asks for {expected}; use a new --workdir "
                "or the config the workdir was trained with (its config.json)")
    return check

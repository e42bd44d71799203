"""Checkpoints (orbax) and preemption.

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

Preemption: `PreemptionWatcher.should_stop(i)` is checked at step boundaries. In one process a
SIGTERM handler sets a flag. With `jax.distributed` initialized, JAX's coordination service
owns SIGTERM and `reached_preemption_sync_point` makes every host stop at the same boundary.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import signal
import sys
import threading
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
    """The workdir holds checkpoints of another model than the config asks for."""


class CheckpointSaveError(RuntimeError):
    """A save failed (e.g. disk full); the previous checkpoints are untouched."""


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
    """

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True,
                 replicas: int = 1):
        # orbax refuses relative paths (and only in its save thread): `--workdir runs/x`.
        self.directory = directory if "://" in directory else os.path.abspath(directory)
        _check_remote_support(self.directory)
        # reverse=True sorts by decreasing error; BestN keeps the tail: the lowest error.
        best = [ocp.checkpoint_managers.BestN(get_metric_fn=metric, reverse=True, n=1,
                                              keep_checkpoints_without_metrics=False)
                for metric in _best_metrics(replicas)]
        policy = ocp.checkpoint_managers.AnyPreservationPolicy(
            [ocp.checkpoint_managers.LatestN(n=keep), *best])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, enable_async_checkpointing=async_save, create=True,
            cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "meta"))

    def all_steps(self) -> list[int]:
        """Committed steps on disk, oldest first (temporary directories are not steps)."""
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, rng: jax.Array, meta: dict,
             metrics: dict | None = None) -> None:
        """Starts an (async) save of step `step`. Raises CheckpointSaveError if this or an
        earlier async save failed; the checkpoints committed before it stay restorable."""
        items = {"state": state, "rng": _key_data(rng)}
        args = ocp.args.Composite(state=ocp.args.StandardSave(items),
                                  meta=ocp.args.JsonSave(dict(meta, step=int(step))))
        try:
            self.manager.check_for_errors()
            self.manager.save(int(step), args=args, metrics=metrics, force=True)
        except Exception as err:  # orbax re-raises the background thread's error here
            raise CheckpointSaveError(self._save_failed(step, err)) from err

    def _save_failed(self, step: int, err: Exception) -> str:
        previous = [s for s in self._committed() if s < step]
        kept = f"the checkpoint of step {previous[-1]} is intact" if previous else \
            "no earlier checkpoint exists"
        return (f"checkpoint save near step {step} in {self.directory} failed "
                f"({type(err).__name__}: {err}); {kept}")

    def _committed(self) -> list[int]:
        try:
            return self.all_steps()
        except Exception:  # noqa: BLE001 - only used to word an error message
            return []

    def wait(self) -> None:
        """Blocks until pending saves are committed; raises CheckpointSaveError on failure."""
        try:
            self.manager.wait_until_finished()
            self.manager.check_for_errors()
        except Exception as err:
            raise CheckpointSaveError(self._save_failed(1 << 62, err)) from err

    def close(self) -> None:
        self.manager.close()

    def read_meta(self, step: int) -> dict:
        """The JSON meta item of `step`."""
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def latest_meta(self) -> dict | None:
        """The meta of the newest checkpoint whose meta reads (None if there is none); cheap,
        so a run can refuse a workdir of another model before building anything big."""
        for step in reversed(self.all_steps()):
            try:
                return self.read_meta(step)
            except Exception:  # noqa: BLE001 - unreadable: restore_latest will warn about it
                continue
        return None

    def restore_latest(self, state: Any, rng: jax.Array,
                       check_meta: Callable[[dict], None] | None = None, *,
                       set_aside: bool = True, step: int | None = None) -> Restored | None:
        """Restores the newest readable checkpoint onto the shardings of `state` and `rng`.

        A checkpoint that fails to read (truncated, corrupt) is skipped with a one-line
        warning and the one before it is tried. With `set_aside` (training), each skipped step
        directory is renamed `<step>.unreadable` (kept for inspection, never deleted), so the
        run can save that step again; without it (eval, loading) nothing is changed.
        `check_meta(meta)` may raise (e.g. CheckpointMismatchError); that error propagates.
        `step`: that checkpoint only (no fallback). `state` and `rng` may be abstract
        (`jax.ShapeDtypeStruct`s with shardings). Returns a `Restored`, or None if there is
        no checkpoint.
        """
        steps = [s for s in self.all_steps() if step is None or s == step]
        typed = jnp.issubdtype(rng.dtype, jax.dtypes.prng_key)
        target = {"state": _abstract(state), "rng": _abstract(_key_data(rng))}
        unreadable, found = [], None
        for candidate in reversed(steps):
            try:
                meta = self.read_meta(candidate)
            except Exception as err:  # noqa: BLE001 - any read failure means unusable
                unreadable.append((candidate, err))
                continue
            if check_meta is not None:
                check_meta(meta)
            try:
                restored = self._restore_state(candidate, target)
            except Exception as err:  # noqa: BLE001
                unreadable.append((candidate, err))
                continue
            new_rng = jax.random.wrap_key_data(restored["rng"]) if typed else restored["rng"]
            found = Restored(restored["state"], new_rng, int(meta["step"]), meta)
            break
        if unreadable and found is None:
            # Nothing to fall back on: refuse rather than start again from step 0 (the error
            # may be transient) and leave every directory where it is.
            reasons = "; ".join(f"{bad}: {_reason(err)}" for bad, err in unreadable)
            raise RuntimeError(f"no readable checkpoint in {self.directory} ({reasons})")
        for bad, err in unreadable:
            self._skip(bad, err, set_aside, found)
        if unreadable and set_aside:
            if jax.process_count() > 1:  # every process sees the renames before saving again
                multihost_utils.sync_global_devices("resnet_jax_checkpoint_set_aside")
            self.manager.reload()
        return found

    def _restore_state(self, step: int, target: dict) -> dict:
        # When one read fails, the reads still in flight fail too, in TensorStore's threads,
        # after orbax's event loop is closed: hundreds of lines of tracebacks (some of them
        # before `restore` raises) for the one failure reported below.
        _silence_failed_read_noise()
        return self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target)))["state"]

    def _skip(self, step: int, err: Exception, set_aside: bool, found: Restored) -> None:
        then = f"using step {found.step}"
        if set_aside:
            then = f"moved to {self._set_aside(step)}; resuming from step {found.step}"
        log.warning("checkpoint of step %d in %s cannot be read (%s); %s", step,
                    self.directory, _reason(err), then)

    def _set_aside(self, step: int) -> str:
        """Renames the step's directory `<step>.unreadable` (`.unreadable.N` if taken)."""
        root = epath.Path(self.directory)
        target = root / f"{step}.unreadable"
        n = 1
        while target.exists():
            n += 1
            target = root / f"{step}.unreadable.{n}"
        if jax.process_index() == 0:
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
    if not directory.startswith("gs://"):
        return
    try:
        found = importlib.util.find_spec("google.cloud.storage") is not None
    except (ImportError, ValueError):  # no google.cloud package; or a module set to None
        found = False
    if not found:
        raise ImportError(
            f"checkpoints in {directory} need google-cloud-storage (orbax asks it about the "
            "bucket when it lists the checkpoints): pip install 'resnet-jax[gcs]'")


def _reason(err: Exception) -> str:
    """One line of an error (TensorStore's run to dozens of lines of spec)."""
    text = str(err).strip().split(" See full TensorStore details")[0]
    return f"{type(err).__name__}: {text.splitlines()[0][:200]}" if text else type(err).__name__


_READ_NOISE = ("Event loop is closed", "Encountered error while reading array")


def _silence_failed_read_noise() -> None:
    """Drops the 'unraisable' errors a failed orbax read leaves behind (see `_restore_state`);
    every other unraisable error still reaches the previous hook. Installed once (again if
    someone replaced the hook since)."""
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
    checkpoints implicitly have.
    """
    expected = {**(added or {}), **expected}

    def check(meta: dict) -> None:
        found = meta.get("model")
        if isinstance(found, dict):
            found = {**(added or {}), **found}
        if found != expected:
            raise CheckpointMismatchError(
                f"the workdir holds checkpoints of another model: {found} (step "
                f"{meta.get('step')}), but the config asks for {expected}; use a new --workdir "
                "or the config the workdir was trained with (its config.json)")
    return check


class PreemptionWatcher:
    """Tells the loop when to save and stop because of SIGTERM (preemption).

    Use as a context manager; `should_stop(boundary_index)` must be called by every process
    at every step boundary with a counter that grows by one each call.
    """

    def __init__(self) -> None:
        self._flag = threading.Event()
        self._previous = None
        self._distributed = jax.process_count() > 1

    def __enter__(self) -> "PreemptionWatcher":
        # Multi-process: the coordination service's own SIGTERM notifier must stay installed.
        if not self._distributed and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self._flag.set()

    def request_stop(self) -> None:
        """What the SIGTERM handler does; tests call it directly."""
        self._flag.set()

    def should_stop(self, boundary_index: int) -> bool:
        if self._distributed:
            return multihost_utils.reached_preemption_sync_point(boundary_index)
        return self._flag.is_set()

"""Reading a checkpoint back: is a failure damage or worth another try, and one decision for
every process.

A checkpoint that is torn or missing a file (a crash or a full disk while it was written, a
file deleted by hand) never reads; it is set aside and the one before it is used. Anything
else (a storage service that did not answer, a timeout, an out-of-memory while restoring, an
error this module does not know) may well pass: the read is tried again a few times, and if
it still fails the run stops with that error, moving nothing and never falling back to an
older step on a good newest one.

With several processes each reads the checkpoint itself, so each may see something else
(one host's storage hiccups, one host's shard is damaged). `agree` makes the outcome one
for all: any failure worth retrying stops every process, any damage sets the step aside on
every process, so all of them restore the same step or none does.
"""
from __future__ import annotations

import enum
import json
import logging
import time
from typing import Any, Callable, Optional, Sequence, TypeVar

import jax
import numpy as np

from resnet_jax.errors import StorageError

log = logging.getLogger(__name__)
T = TypeVar("T")

# TensorStore's status codes (the prefix of its errors' text) that mean the bytes on storage
# are not a whole checkpoint: a file missing or shorter than its index says, or corrupt.
_DAMAGE_CODES = ("NOT_FOUND", "OUT_OF_RANGE", "DATA_LOSS")
_DAMAGE_TEXT = ("was not found in the checkpoint", "Found incomplete checkpoint")


class Outcome(enum.IntEnum):
    """How reading one checkpoint went on one process (higher wins when processes differ)."""
    OK = 0
    DAMAGED = 1        # torn or missing files: set aside, try the one before
    FAILED = 2         # worth retrying, and retries did not help: stop, move nothing
    MISMATCH = 3       # a checkpoint of another model: refuse


class CheckpointReadError(RuntimeError):
    """A checkpoint could not be read for a reason other than damage (after retries)."""


class CheckpointMismatchError(ValueError):
    """The workdir holds checkpoints of another model than the config asks for."""


class NoReadableCheckpointError(StorageError):
    """Checkpoints exist but none of them (or not the one asked for) reads back."""


def is_damage(err: BaseException) -> bool:
    """True when `err` says the checkpoint's files are torn or missing (never a reason to
    try again), False for everything else (which may be transient)."""
    if isinstance(err, (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError)):
        return True
    text = str(err).strip()
    if isinstance(err, ValueError) and text.split(":", 1)[0].strip() in _DAMAGE_CODES:
        return True
    return any(part in text for part in _DAMAGE_TEXT)


def reason(err: BaseException | str) -> str:
    """One line of an error (TensorStore's run to dozens of lines of spec). A long one keeps
    its beginning and its innermost cause, where TensorStore puts the OS error ('... No
    space left on device [os_error_code=28]'). A text given instead of an error is kept."""
    if isinstance(err, str):
        return err
    text = str(err).strip().split(" See full TensorStore details")[0]
    text = text.split(" [tensorstore_spec")[0]
    if not text:
        return type(err).__name__
    line = text.splitlines()[0]
    if len(line) > 200:
        cause = line.rsplit('": ', 1)[-1]
        line = f"{line[:100]} ... {cause if len(cause) < 120 else line[-100:]}"
    return f"{type(err).__name__}: {line}"


def with_retries(read: Callable[[], T], what: str, attempts: int, delay_s: float,
                 damaged: Callable[[BaseException], bool] = is_damage,
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """`read()`, tried up to `attempts` times while it fails with something that is not
    damage (`damaged(err)` False; a warning line before each retry; the delay doubles).
    Damage and the last failure are raised."""
    for attempt in range(1, attempts + 1):
        try:
            return read()
        except Exception as err:  # noqa: BLE001 - classified below
            if attempt == attempts or damaged(err):
                raise
            wait = delay_s * 2 ** (attempt - 1)
            log.warning("reading %s failed (%s); trying again in %.0f s (attempt %d of %d)",
                        what, reason(err), wait, attempt + 1, attempts)
            sleep(wait)
    raise AssertionError("unreachable")


def agree(outcome: Outcome) -> tuple[Outcome, Optional[int]]:
    """(the outcome every process acts on, a process that saw it) from each process's own:
    the highest wins, so one process's failure or damage is everyone's. A collective: every
    process calls it for the same checkpoint."""
    if jax.process_count() == 1:
        return outcome, 0
    from jax.experimental import multihost_utils
    seen = np.asarray(multihost_utils.process_allgather(np.int32(outcome))).reshape(-1)
    worst = int(seen.max())
    return Outcome(worst), int(np.argmax(seen == worst))


def same_steps(steps: Sequence[int]) -> list[int]:
    """Process 0's list of steps, on every process (listings may differ between hosts for a
    moment; the decision must not)."""
    if jax.process_count() == 1:
        return list(steps)
    from jax.experimental import multihost_utils
    n = int(multihost_utils.broadcast_one_to_all(np.int32(len(steps))))
    if n == 0:
        return []
    mine = np.zeros(n, np.int32)
    mine[:min(n, len(steps))] = list(steps)[:n]
    return [int(s) for s in np.asarray(multihost_utils.broadcast_one_to_all(mine))]


def newest_readable(steps: Sequence[int], read_step: Callable[[int], tuple[Outcome, Any]],
                    directory: str) -> tuple[Optional[int], Any, list[tuple[int, Any]]]:
    """The restore decision, one for every process: `steps` are tried newest first, each
    with `read_step(step) -> (Outcome, value)` (this process's reading; `value` is what was
    read, or the error) and `agree`d on. Returns (step, value) of the newest step that every
    process read, and [(step, error or text)] of the damaged steps passed over before it;
    (None, None, []) when there are no steps.

    Raises the error every process stops on: this process's own when it saw the agreed
    outcome, else one naming the process that did (CheckpointMismatchError for a checkpoint
    of another model, CheckpointReadError for a failure worth retrying); and
    NoReadableCheckpointError when every step is damaged (refused rather than starting again
    from step 0, every directory left where it is)."""
    unreadable = []
    for candidate in reversed(steps):
        outcome, value = read_step(candidate)
        agreed, who = agree(outcome)
        if agreed == Outcome.OK:
            return candidate, value, unreadable
        if agreed == Outcome.DAMAGED:
            unreadable.append((candidate, value if outcome == Outcome.DAMAGED else
                               f"process {who} cannot read it"))
            continue
        if outcome == agreed:
            raise value
        if agreed == Outcome.MISMATCH:
            raise CheckpointMismatchError(f"process {who} found a checkpoint of another "
                                          f"model in {directory} (step {candidate})")
        raise CheckpointReadError(f"process {who} cannot read the checkpoint of step "
                                  f"{candidate} in {directory}; nothing was moved")
    if unreadable:
        reasons = "; ".join(f"{bad}: {reason(err)}" for bad, err in unreadable)
        raise NoReadableCheckpointError(f"no readable checkpoint in {directory} ({reasons})")
    return None, None, []

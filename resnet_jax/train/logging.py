"""Run logs: `metrics.jsonl` (one JSON object per line), TensorBoard events (`tb/`, via
tensorboardX) and a console progress line. Only process 0 writes or prints; other processes
get writers whose methods do nothing, so the loop calls them unconditionally.

metrics.jsonl rows (docs/ARCHITECTURE.md "Runs"): step, epoch, split ('train'|'val'), loss,
top1_error, top5_error (percent), lr, grad_norm, images_per_sec, wall_time; a run of several
replicas adds `replica` (0 .. N-1) to every row, and its TensorBoard curves go to
`tb/replica_<i>` (one TensorBoard run per replica, so the seeds overlay on every chart).
"""
from __future__ import annotations

import io
import json
import math
import os
import sys
import time
from typing import Any, TextIO

from etils import epath

from resnet_jax import files

ROW_FIELDS = ("step", "epoch", "split", "loss", "top1_error", "top5_error", "lr", "grad_norm",
              "images_per_sec", "wall_time")
REPLICA_FIELD = "replica"  # in every row of a run of several replicas


def _clean(value: Any) -> Any:
    """JSON-safe floats (NaN/inf become None: plain JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsWriter:
    """Appends rows to `workdir/metrics.jsonl` and scalars to `workdir/tb`.

    Args:
      workdir: the run directory (local, or any filesystem etils `epath` knows: gs://, ...).
      enabled: False on processes other than 0.
      resume_step: when resuming from a checkpoint of this step, rows of later steps (logged
        by the interrupted run after its last checkpoint) are dropped, so every step appears
        once and the file matches an uninterrupted run; TensorBoard is told to purge its
        events after that step too.

    Object stores cannot append: on a remote workdir the file is rewritten whole, at most every
    `remote_every_s` seconds (GCS allows about one write per second to an object; CIFAR on a
    GPU logs several rows a second) and at every `flush()`, which the loop calls when it saves
    a checkpoint; a resumed run drops the rows after its checkpoint anyway. The TensorBoard
    event file is opened at the first row, so a run that logs nothing leaves no empty file.
    """

    def __init__(self, workdir: str, enabled: bool = True, resume_step: int = 0,
                 remote_every_s: float = 10.0):
        self.enabled = enabled
        self.workdir = epath.Path(workdir)
        self.path = self.workdir / "metrics.jsonl"
        self.remote = "://" in os.fspath(workdir)
        self._resume_step = resume_step
        self._tb: dict = {}  # TensorBoard writer of each replica (None: a run of one)
        self._text, self._written = "", ""
        self._remote_every_s, self._last_write = remote_every_s, time.monotonic()
        if enabled:
            self._text = self._written = self._truncate_after(resume_step)

    def _truncate_after(self, step: int) -> str:
        """Keeps the rows up to `step`; a line a crash cut off (SIGKILL mid-write) goes too."""
        if not self.path.exists():
            return ""
        text = self.path.read_text()
        rows = [r for r in files.parse_jsonl(text) if int(r.get("step", -1)) <= step]
        kept = "".join(json.dumps(r) + "\n" for r in rows)
        if kept != text:
            self.path.write_text(kept)
        return kept

    def _tensorboard(self, replica: int | None = None):
        if replica not in self._tb:
            from tensorboardX import SummaryWriter  # lazy: only process 0 needs it
            logdir = self.workdir / "tb"
            if replica is not None:
                logdir = logdir / f"replica_{replica}"
            logdir = os.fspath(logdir)
            if self.remote:
                _register_epath_events(logdir)
            self._tb[replica] = SummaryWriter(
                logdir=logdir, purge_step=self._resume_step + 1 if self._resume_step else None)
        return self._tb[replica]

    def write(self, row: dict) -> None:
        """One metrics row; keys outside ROW_FIELDS are kept too."""
        if not self.enabled:
            return
        row = {k: _clean(v) for k, v in row.items()}
        line = json.dumps(row) + "\n"
        if self.remote:
            self._text += line
            if time.monotonic() - self._last_write >= self._remote_every_s:
                self.flush()
        else:
            with self.path.open("a") as f:
                f.write(line)
        split, step = row["split"], int(row["step"])
        tb = self._tensorboard(row.get(REPLICA_FIELD))
        for key, value in row.items():
            if key not in ("step", "split", "wall_time", REPLICA_FIELD) and isinstance(
                    value, (int, float)):
                tb.add_scalar(f"{split}/{key}", value, step)

    def flush(self) -> None:
        """Writes what a remote workdir's file still lacks (local rows are written at once)."""
        if self.enabled and self.remote and self._text != self._written:
            self.path.write_text(self._text)
            self._written, self._last_write = self._text, time.monotonic()

    def close(self) -> None:
        self.flush()
        for tb in self._tb.values():
            tb.flush()
            tb.close()
        self._tb = {}


class _EpathEvents:
    """A tensorboardX record writer on `epath`: the event file is rewritten whole at each
    flush (what tensorboardX's own GCS writer does, without google-cloud-storage)."""

    def __init__(self, path: str):
        self.path = epath.Path(path)
        self.buffer = io.BytesIO()

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        self.path.write_bytes(self.buffer.getvalue())

    def close(self) -> None:
        self.flush()


class _EpathEventsFactory:
    def open(self, path: str) -> _EpathEvents:
        return _EpathEvents(path)

    def directory_check(self, path: str) -> None:
        epath.Path(path).mkdir(parents=True, exist_ok=True)


def _register_epath_events(logdir: str) -> None:
    """Routes tensorboardX's event files under `logdir`'s scheme (gs, s3, ...) through epath."""
    from tensorboardX import record_writer
    record_writer.register_writer_factory(logdir.split(":", 1)[0], _EpathEventsFactory())


def read_metrics(workdir: str) -> list[dict]:
    """All rows of `workdir/metrics.jsonl` ([] before the first; a torn last line left out)."""
    return files.read_jsonl(epath.Path(workdir) / "metrics.jsonl")


def format_duration(seconds: float) -> str:
    """3725 -> '1:02:05'."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """A one-line progress bar: step, epoch, loss, accuracy, images/s and ETA.

    On a terminal the line is redrawn in place; otherwise (logs, CI) each update is a line.
    """

    def __init__(self, total_steps: int, steps_per_epoch: int, enabled: bool = True,
                 stream: TextIO | None = None, width: int = 20, bar: bool = True):
        """enabled: False on processes other than 0 (nothing printed); bar: False prints only
        the messages (evaluations, resume, preemption), not the per-log progress line."""
        self.total, self.steps_per_epoch = total_steps, max(steps_per_epoch, 1)
        self.enabled, self.width, self.bar = enabled, width, bar
        self.stream = stream or sys.stdout
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def line(self, step: int, loss: float, top1_error: float, images_per_sec: float,
             eta_s: float, replicas: int = 1) -> str:
        """`replicas` > 1: loss and accuracy are the means over that many replicas, each of
        which trains at `images_per_sec`."""
        done = int(self.width * step / max(self.total, 1))
        bar = "=" * done + (">" if done < self.width else "") + " " * (self.width - done - 1)
        mean, rate = ("mean ", f"{replicas} x ") if replicas > 1 else ("", "")
        return (f"[{bar[:self.width]}] step {step}/{self.total} "
                f"epoch {step / self.steps_per_epoch:.2f} {mean}loss {loss:.4f} "
                f"acc {100.0 - top1_error:.2f}% {rate}{images_per_sec:,.0f} img/s "
                f"ETA {format_duration(eta_s)}")

    def update(self, step: int, loss: float, top1_error: float, images_per_sec: float,
               eta_s: float, replicas: int = 1) -> None:
        if not (self.enabled and self.bar):
            return
        text = self.line(step, loss, top1_error, images_per_sec, eta_s, replicas)
        self.stream.write(("\r" + text) if self._tty else (text + "\n"))
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own (eval results, checkpoints), not overwritten by the bar."""
        if not self.enabled:
            return
        self.stream.write(("\n" if self._tty and self.bar else "") + text + "\n")
        self.stream.flush()


class Timer:
    """Images/s over the steps since the last `rate` call (wall clock)."""

    def __init__(self) -> None:
        self._t = time.perf_counter()
        self._steps = 0

    def restart(self) -> None:
        """Starts a new window now (after an evaluation or a save, which are not training)."""
        self._t, self._steps = time.perf_counter(), 0

    def add(self, steps: int) -> None:
        self._steps += steps

    def rate(self, batch_size: int) -> tuple[float, float]:
        """(images per second, seconds per step) since the last call; resets the window."""
        now = time.perf_counter()
        elapsed, steps = now - self._t, self._steps
        self._t, self._steps = now, 0
        if steps == 0 or elapsed <= 0:
            return 0.0, float("nan")
        return steps * batch_size / elapsed, elapsed / steps

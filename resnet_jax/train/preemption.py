"""Preemption, Ctrl-C and a closed terminal: when the training loop saves and stops.

`PreemptionWatcher.should_stop(i)` is checked at step boundaries. In one process a handler
of SIGTERM, SIGHUP (the terminal was closed) and a first Ctrl-C sets a flag, which the loop
also reads between the steps of a CPU dispatch and while it waits for data, so the save
starts within one step of the signal. With `jax.distributed` initialized, JAX's coordination
service owns SIGTERM and `reached_preemption_sync_point` makes every host stop at the same
boundary.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Sequence

import jax
from jax.experimental import multihost_utils

# What stopped the run, for its lines: at the signal (stderr) and at the save.
WHY = {signal.SIGTERM: "preempted (SIGTERM)", signal.SIGINT: "interrupted (Ctrl-C)",
       signal.SIGHUP: "terminal closed (SIGHUP)"}
SAID = {signal.SIGTERM: b"\nSIGTERM: saving a checkpoint at the next step boundary, then "
                        b"stopping\n",
        signal.SIGINT: b"\nCtrl-C: saving a checkpoint at the next step boundary, then "
                       b"stopping (Ctrl-C again to abort at once, without saving)\n"}


def silence_closed_terminal(fds: Sequence[int] = (1, 2)) -> None:
    """Points each of `fds` that can no longer be written (a closed terminal: every write
    fails with EIO, even of nothing) at /dev/null, so the run's last lines cannot fail its
    save; a live terminal, a file or a pipe stays as it is."""
    for fd in fds:
        try:
            os.write(fd, b"")
        except OSError:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd)
            os.close(null)


def _say(text: bytes) -> None:
    # os.write: safe in a signal handler, unlike print (which may be mid-write).
    try:
        os.write(2, text)
    except OSError:  # no terminal left to tell
        pass


class PreemptionWatcher:
    """Tells the loop when to save and stop: SIGTERM (preemption), SIGHUP (a closed
    terminal) or a first Ctrl-C (SIGINT).

    Use as a context manager; `should_stop(boundary_index)` must be called by every process
    at every step boundary with a counter that grows by one each call (`requested()` may be
    read anywhere in between: one process only). Each says so at once on stderr (but SIGHUP:
    the terminal is gone, and its descriptors become /dev/null). A first Ctrl-C is handled
    like SIGTERM (save at the next boundary, exit as a preempted run), and a second Ctrl-C
    kills the process at once, without saving (the default action of SIGINT, restored by the
    first; what a crash leaves behind is safe: the last committed checkpoint, a torn last log
    line, an expired lease are all handled when the run resumes). With several processes a
    Ctrl-C or SIGHUP becomes a SIGTERM to this process, which JAX's coordination service
    turns into one stop step for all of them.
    """

    def __init__(self) -> None:
        self._flag = threading.Event()
        self._previous: dict = {}
        self._distributed = jax.process_count() > 1
        self._signal = signal.SIGTERM

    def __enter__(self) -> "PreemptionWatcher":
        if threading.current_thread() is threading.main_thread():
            # Multi-process: the coordination service's own SIGTERM notifier stays installed.
            if not self._distributed:
                self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handle)
            self._previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._handle)
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # the next Ctrl-C: stop at once
        if signum == signal.SIGHUP:
            silence_closed_terminal()
        if not self._flag.is_set():
            self._signal = signum
        _say(SAID.get(signum, b""))
        if self._distributed:
            os.kill(os.getpid(), signal.SIGTERM)
        else:
            self._flag.set()

    def why(self) -> str:
        """What stopped the run, for its last lines."""
        return WHY[self._signal]

    def requested(self) -> bool:
        """A stop was asked for (one process: between boundaries too)."""
        return self._flag.is_set()

    def should_stop(self, boundary_index: int) -> bool:
        if self._distributed:
            return multihost_utils.reached_preemption_sync_point(boundary_index)
        return self._flag.is_set()

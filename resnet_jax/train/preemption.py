"""Preemption and Ctrl-C: when the training loop saves and stops.

`PreemptionWatcher.should_stop(i)` is checked at step boundaries. In one process a SIGTERM
handler (and a first Ctrl-C) sets a flag. With `jax.distributed` initialized, JAX's
coordination service owns SIGTERM and `reached_preemption_sync_point` makes every host stop
at the same boundary.
"""
from __future__ import annotations

import os
import signal
import threading

import jax
from jax.experimental import multihost_utils


class PreemptionWatcher:
    """Tells the loop when to save and stop: SIGTERM (preemption) or a first Ctrl-C (SIGINT).

    Use as a context manager; `should_stop(boundary_index)` must be called by every process
    at every step boundary with a counter that grows by one each call. A first Ctrl-C is
    handled like SIGTERM (save at the next boundary, exit as a preempted run); it says so at
    once on stderr, and a second Ctrl-C kills the process at once, without saving (the
    default action of SIGINT, restored by the first; what a crash leaves behind is safe: the
    last committed checkpoint, a torn last log line, an expired lease are all handled when
    the run resumes). With several processes a Ctrl-C becomes a SIGTERM to this process, which
    JAX's coordination service turns into one stop step for all of them.
    """

    def __init__(self) -> None:
        self._flag = threading.Event()
        self._previous: dict = {}
        self._distributed = jax.process_count() > 1
        self._signal = "SIGTERM"

    def __enter__(self) -> "PreemptionWatcher":
        if threading.current_thread() is threading.main_thread():
            # Multi-process: the coordination service's own SIGTERM notifier stays installed.
            if not self._distributed:
                self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handle)
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._interrupt)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self._flag.set()

    def _interrupt(self, signum, frame) -> None:  # noqa: ARG002
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # the next Ctrl-C: stop at once
        self._signal = "SIGINT"
        # os.write: safe in a signal handler, unlike print (which may be mid-write).
        os.write(2, b"\nCtrl-C: saving a checkpoint at the next step boundary, then stopping "
                    b"(Ctrl-C again to abort at once, without saving)\n")
        if self._distributed:
            os.kill(os.getpid(), signal.SIGTERM)
        else:
            self._flag.set()

    def request_stop(self) -> None:
        """What the SIGTERM handler does; tests call it directly."""
        self._flag.set()

    def why(self) -> str:
        """What stopped the run, for its last line."""
        return "interrupted (Ctrl-C)" if self._signal == "SIGINT" else "preempted (SIGTERM)"

    def should_stop(self, boundary_index: int) -> bool:
        if self._distributed:
            return multihost_utils.reached_preemption_sync_point(boundary_index)
        return self._flag.is_set()

"""Prefetch host batches to the devices in a background thread.

`prefetch(batches, put, size=2)` applies `put` (e.g. `parallel.to_global(batch, mesh)`, which
starts the host-to-device copies) `size` batches ahead of the consumer, so the compiled step
never waits on a transfer. Errors from the producer are re-raised in the consumer.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


def prefetch(batches: Iterable, put: Callable[[object], T], size: int = 2) -> Iterator[T]:
    """Yield put(b) for b in batches, computed up to `size` items ahead in a daemon thread."""
    if size < 1:
        raise ValueError(f"prefetch size={size}; allowed: >= 1")
    q: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def produce():
        try:
            for b in batches:
                if stop.is_set():
                    return
                q.put(put(b))
        except BaseException as e:  # hand the failure to the consumer
            q.put(e)
            return
        q.put(_DONE)

    threading.Thread(target=produce, daemon=True).start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        # A consumer that stops early: free a producer blocked on a full queue so it can see
        # `stop` and end (it holds device buffers).
        stop.set()
        while True:
            try:
                q.get_nowait()
            except queue.Empty:
                break

"""Prefetch host batches to the devices in a background thread.

`prefetch(batches, put, size=2)` applies `put` (e.g. `parallel.to_global(batch, mesh)`, which
starts the host-to-device copies) `size` batches ahead of the consumer, so the compiled step
never waits on a transfer. Errors from the producer are re-raised in the consumer.

Shutdown: closing the iterator (or leaving a `for` over it) stops the producer and joins its
thread before it returns, so the caller may then close what `batches` reads from: the
producer is never inside `next(batches)` (or `put`) at that point. A producer in the middle
of a slow read finishes that read first.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")
_DONE = object()
_POLL_S = 0.05  # how often a producer (consumer) waiting on a full (empty) queue looks whether
# it must stop


def prefetch(batches: Iterable, put: Callable[[object], T], size: int = 2,
             interrupt: Optional[Callable[[], bool]] = None) -> Iterator[T]:
    """Yield put(b) for b in batches, computed up to `size` items ahead in a thread; the
    thread is stopped and joined when the iterator ends, fails or is closed. `interrupt`
    (optional) is asked while the consumer waits for an item: when True, None is yielded
    instead of waiting on (a stop request need not wait for a slow read; the consumer saves
    what it has, then closes the iterator, which waits for the read)."""
    if size < 1:
        raise ValueError(f"prefetch size={size}; allowed: >= 1")
    q: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def hand_over(item) -> bool:
        """Puts `item` on the queue unless told to stop first; False if it stopped."""
        while not stop.is_set():
            try:
                q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            source = iter(batches)
            while not stop.is_set():
                try:
                    b = next(source)
                except StopIteration:
                    break
                if stop.is_set() or not hand_over(put(b)):
                    return
        except BaseException as e:  # hand the failure to the consumer
            hand_over(e)
            return
        hand_over(_DONE)

    producer = threading.Thread(target=produce, name="resnet-jax-prefetch", daemon=True)
    producer.start()
    try:
        while True:
            try:
                item = q.get(timeout=_POLL_S) if interrupt is not None else q.get()
            except queue.Empty:
                if interrupt():
                    yield None
                continue
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        # Stop the producer and wait for it: it may be inside `next(batches)` or `put`, and
        # the caller closes their source next ("generator already executing" otherwise).
        stop.set()
        producer.join()
        while True:  # drop what it made ahead (device buffers)
            try:
                q.get_nowait()
            except queue.Empty:
                break

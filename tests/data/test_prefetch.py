"""Background prefetch: order kept, put applied ahead, producer errors re-raised."""
import threading
import time

import pytest

from resnet_jax.data.prefetch import prefetch


def test_prefetch_keeps_order_and_runs_ahead():
    done = []

    def put(x):
        done.append(x)
        return x * 10

    it = prefetch(iter(range(6)), put, size=2)
    assert next(it) == 0
    time.sleep(0.2)
    assert len(done) >= 3  # the item handed out plus `size` more already transferred
    assert list(it) == [10, 20, 30, 40, 50]
    assert threading.main_thread().is_alive()


def test_prefetch_reraises_producer_errors():
    def batches():
        yield 1
        raise OSError("disk gone")

    it = prefetch(batches(), lambda x: x)
    assert next(it) == 1
    with pytest.raises(OSError, match="disk gone"):
        next(it)
    with pytest.raises(ValueError, match="size"):
        next(prefetch([], lambda x: x, size=0))


def test_closing_stops_and_joins_the_producer_before_the_source_is_closed():
    """A slow source whose reader is inside next() when the consumer stops: closing the
    prefetch iterator waits for that read, so closing the source afterwards is safe (it
    raised "generator already executing")."""
    reading = threading.Event()

    def source():
        i = 0
        while True:
            reading.set()
            time.sleep(0.3)
            yield i
            i += 1

    gen = source()
    it = prefetch(gen, lambda x: x, size=1)
    assert next(it) == 0
    reading.clear()
    assert reading.wait(5)      # the producer is inside the next slow read now
    it.close()
    gen.close()                 # no ValueError: the producer is done with it
    assert not [t for t in threading.enumerate() if t.name == "resnet-jax-prefetch"]


def test_a_producer_failure_while_the_consumer_is_gone_does_not_hang():
    def source():
        yield 1
        raise OSError("disk gone")

    it = prefetch(source(), lambda x: x, size=1)
    assert next(it) == 1
    it.close()                  # joins a producer that failed with nobody to hand it to
    assert not [t for t in threading.enumerate() if t.name == "resnet-jax-prefetch"]


def test_a_consumer_waiting_on_a_slow_read_is_interrupted_at_once():
    """`interrupt` turns True while the consumer waits for a 2 s read: None comes within the
    poll (a stop request waited for the read); closing then waits for the read."""
    asked = threading.Event()

    def source():
        yield 0
        time.sleep(2.0)
        yield 1

    it = prefetch(source(), lambda x: x, size=1, interrupt=asked.is_set)
    assert next(it) == 0
    threading.Timer(0.2, asked.set).start()
    started = time.monotonic()
    assert next(it) is None
    assert time.monotonic() - started < 1.0
    it.close()
    assert not [t for t in threading.enumerate() if t.name == "resnet-jax-prefetch"]

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

"""Helpers of the training-loop tests (tests/train/test_loop*.py), as the `helpers` fixture
(tests use --import-mode=importlib, so they cannot import this module), and `finished`: one
uninterrupted smoke run for the whole session, the reference that runs stopped and resumed in
other tests must end as."""
import os
import signal
import sys
import time

import jax
import numpy as np
import pytest

from resnet_jax.config import load_config
from resnet_jax.train import loop
from resnet_jax.train.logging import read_metrics

SMOKE = "configs/smoke.py"


@pytest.fixture(scope="session")
def finished(tmp_path_factory):
    """An uninterrupted smoke run: (workdir, results)."""
    workdir = str(tmp_path_factory.mktemp("full"))
    return workdir, loop.train_and_evaluate(load_config(SMOKE), workdir)


def params(workdir, replica=None) -> list:
    """The trained parameters and BN statistics of a run (of one of its replicas), as leaves."""
    return jax.tree.leaves(jax.device_get(loop.load_trained(workdir, replica=replica)[2]))


def rows(workdir, replica=None) -> list[dict]:
    """metrics.jsonl rows without the timings (of one replica, without its tag)."""
    kept = [{k: v for k, v in r.items() if k not in ("wall_time", "images_per_sec")}
            for r in read_metrics(workdir)]
    if replica is None:
        return kept
    return [{k: v for k, v in r.items() if k != "replica"} for r in kept
            if r.get("replica") == replica]


def interrupted_run(workdir, signum=signal.SIGTERM, overrides=()):
    """The smoke run (with `overrides`, --config.x=y) stopped by a real SIGTERM (or Ctrl-C:
    SIGINT) sent after step 4: the next CPU dispatch (steps 4, 5) stops after its first step
    and saves step 5 (4 is a checkpoint step too)."""
    def preempt(step):
        if step == 4:
            os.kill(os.getpid(), signum)
    return loop.train_and_evaluate(load_config(SMOKE, list(overrides)), workdir,
                                   on_step=preempt)


def poison_step(monkeypatch, bad_step, seeds=None):
    """Make the real train step meet a NaN at the loop's step `bad_step` (only in the runs or
    replicas whose seed is in `seeds`; None: all): the images of that one batch are NaN, so its
    loss and gradient are. Nothing else is changed: keeping the state finite is left to the
    step's own guards (the tests fail without them).

    The batch is marked on the host, not in the compiled step: its first index points one
    past the resident training split, which the step's gather (`jnp.take`, which fills) reads
    as label -2**31. So one compiled poisoned step serves every test and every bad step (a
    step with `bad_step` or the replica built in was compiled anew for each), and a replica
    frozen at its NaN is not struck again after a resume (its own step count stays behind)."""
    import jax.numpy as jnp

    from resnet_jax.data.in_memory_pipeline import InMemoryPipeline
    from resnet_jax.train import dispatch
    real_step, real_chunk = dispatch.train_step, InMemoryPipeline.train_chunk

    def marked_chunk(self, step, k):
        chunk = real_chunk(self, step, k)
        if step <= bad_step < step + k and (seeds is None or self.seed in seeds):
            index = chunk["index"].copy()
            index[bad_step - step, 0] = self.num_train_examples
            chunk = dict(chunk, index=index)
        return chunk

    def poisoned(state, batch, rng, **kw):
        marked = jnp.any(batch["label"] < 0)
        images = jnp.where(marked, jnp.nan, batch["image"].astype(jnp.float32))
        return real_step(state, dict(batch, image=images, label=jnp.maximum(batch["label"], 0)),
                         rng, **kw)

    monkeypatch.setattr(InMemoryPipeline, "train_chunk", marked_chunk)
    monkeypatch.setattr(dispatch, "train_step", poisoned)


NAN_RUN = ["--config.train.num_steps=12", "--config.train.log_every_steps=6",
           "--config.train.eval_every_steps=12", "--config.optim.boundaries=100"]


class SlowStream:
    """The run's in-memory pipeline read through a slow generator, which `close()` closes, as
    the streaming pipeline reads and closes its stream: what the shutdown must not race."""

    def __init__(self, inner, delay_s):
        self.inner, self.delay_s = inner, delay_s  # delay_s(step): seconds to read it
        self._stream, self._next = None, None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _steps(self, step):
        while True:
            time.sleep(self.delay_s(step))
            yield self.inner.train_chunk(step, 1)
            step += 1

    def train_chunk(self, step, k):
        if self._stream is None or step != self._next:
            self.close()
            self._stream = self._steps(step)
        parts = [next(self._stream) for _ in range(k)]
        self._next = step + k
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

    def close(self):
        if self._stream is not None:
            self._stream.close()  # "generator already executing" if the producer is inside
            self._stream = None


def slow_source(monkeypatch, delay_s=lambda step: 0.3):
    import resnet_jax.data as data_lib
    real = data_lib.make_pipeline
    monkeypatch.setattr(data_lib, "make_pipeline",
                        lambda *a, **kw: SlowStream(real(*a, **kw), delay_s))


@pytest.fixture
def helpers():
    """This module: `SMOKE`, `NAN_RUN`, `params`, `rows`, `interrupted_run`,
    `poison_step`, `slow_source`."""
    return sys.modules[__name__]

"""Training data on the devices ahead of the step: the run's chunks of steps, prepared in a
thread (`data.prefetch` chunks ahead) so the compiled step never waits on the host.

A run's dispatches are fixed by its config alone (`chunk_size`): at most
`train.steps_per_dispatch` steps, cut at every log, eval and checkpoint boundary (absolute
step multiples), so a resumed run dispatches exactly the chunks of an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator

from jax.sharding import Mesh

from resnet_jax.data.prefetch import prefetch
from resnet_jax.train import dispatch


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Steps [step, step + size) as `dispatch.make_train_fn`'s function takes them."""
    step: int
    size: int
    data: Any


def chunk_size(step: int, train: Any) -> int:
    """Steps in the dispatch that starts at `step` (`train`: the config's train section)."""
    k = min(train.steps_per_dispatch, train.num_steps - step)
    for every in (train.log_every_steps, train.eval_every_steps, train.checkpoint_every_steps):
        k = min(k, every - step % every)
    return k


def schedule(start: int, train: Any) -> Iterator[tuple[int, int]]:
    """(first step, size) of every dispatch from `start` to `train.num_steps`."""
    step = start
    while step < train.num_steps:
        k = chunk_size(step, train)
        yield step, k
        step += k


def device_chunks(pipeline: Any, mesh: Mesh, start: int, train: Any, *, ahead: int,
                  loop: str = "auto") -> Iterator[Chunk]:
    """The run's chunks from `start` on, each `pipeline.train_chunk` put on the mesh
    (`dispatch.put_chunk`) `ahead` chunks before it is needed. Close it to stop the thread."""
    def put(item):
        step, k = item
        return Chunk(step, k, dispatch.put_chunk(pipeline.train_chunk(step, k), mesh, loop))
    return prefetch(schedule(start, train), put, size=ahead)

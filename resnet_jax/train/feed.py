"""Training data on the devices ahead of the step: the run's chunks of steps, prepared in a
thread (`data.prefetch` chunks ahead) so the compiled step never waits on the host.

A run's dispatches are fixed by its config alone (`chunk_size`): at most
`train.steps_per_dispatch` steps, cut at every eval and checkpoint boundary (absolute step
multiples: those need the state of that step) and at the end, so a resumed run dispatches
exactly the chunks of an uninterrupted one. Log rows are made from the per-step metrics and
need no cut. With a scan, every chunk is padded to `steps_per_dispatch` steps
(`dispatch.put_chunk(steps=...)`), so one compiled program runs them all.

Replicas: the chunk of a run with N replicas stacks, on axis 1, the chunk of each replica's
pipeline (`pipeline.with_seed(seed + i)`: the same resident split in that seed's order).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
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
    for every in (train.eval_every_steps, train.checkpoint_every_steps):
        k = min(k, every - step % every)
    return k


def schedule(start: int, train: Any) -> Iterator[tuple[int, int]]:
    """(first step, size) of every dispatch from `start` to `train.num_steps`."""
    step = start
    while step < train.num_steps:
        k = chunk_size(step, train)
        yield step, k
        step += k


def host_chunk(pipelines: Sequence[Any], step: int, k: int) -> dict:
    """This process's host data of steps [step, step + k): one pipeline's `train_chunk`
    (leaves (k, b, ...)), or the replicas' stacked on axis 1 (leaves (k, N, b, ...))."""
    if len(pipelines) == 1:
        return pipelines[0].train_chunk(step, k)
    parts = [p.train_chunk(step, k) for p in pipelines]
    return {name: np.stack([part[name] for part in parts], axis=1) for name in parts[0]}


def replica_pipelines(pipeline: Any, seeds: Optional[Sequence[int]]) -> list:
    """The pipeline of each replica (`seeds`: each replica's run seed; None: one run)."""
    if seeds is None or len(seeds) == 1:
        return [pipeline]
    return [pipeline.with_seed(seed) for seed in seeds]


def device_chunks(pipeline: Any, mesh: Mesh, start: int, train: Any, *, ahead: int,
                  loop: str = "auto", seeds: Optional[Sequence[int]] = None,
                  interrupt: Optional[Callable[[], bool]] = None,
                  ) -> Iterator[Optional[Chunk]]:
    """The run's chunks from `start` on, each put on the mesh (`dispatch.put_chunk`) `ahead`
    chunks before it is needed; `seeds` (one per replica, for `train.replicas` > 1) stack each
    replica's own rows. A scan's chunks are padded to `train.steps_per_dispatch` steps (one
    compiled program). `interrupt`: when it is True while the next chunk is not ready, None
    comes instead (`prefetch`). Close it to stop the thread."""
    pipelines = replica_pipelines(pipeline, seeds)
    steps = train.steps_per_dispatch

    def put(item):
        step, k = item
        return Chunk(step, k, dispatch.put_chunk(host_chunk(pipelines, step, k), mesh, loop,
                                                 replicas=len(pipelines), steps=steps))
    return prefetch(schedule(start, train), put, size=ahead, interrupt=interrupt)

"""Which examples go where: epoch permutations, per-process rows, padded eval shards.

Pure numpy, shared by the in-memory and streaming paths, so both agree on the order.
Convention: a global batch is the concatenation of the processes' batches in process order;
process p owns rows [p*b, (p+1)*b) of every global batch (b = global batch / process_count).
"""
from __future__ import annotations

import numpy as np


def per_process(global_size: int, process_count: int, field: str) -> int:
    """global_size / process_count, or ValueError naming `field` when it does not divide."""
    if global_size <= 0 or global_size % process_count:
        raise ValueError(
            f"{field}={global_size} must be a positive multiple of process_count={process_count}")
    return global_size // process_count


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of epoch `epoch`: a permutation of range(n) drawn from (seed, epoch)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, 0x5EED]))
    return rng.permutation(n).astype(np.int32)


def steps_per_epoch(n: int, global_batch: int) -> int:
    """Whole global batches in an epoch of n examples (the remainder of each permutation is
    dropped); ValueError when not one fits."""
    if n // global_batch == 0:
        raise ValueError(f"train.batch_size={global_batch} exceeds the {n} training examples")
    return n // global_batch


def locate(step: int, n: int, global_batch: int, process_index: int = 0,
           process_count: int = 1) -> tuple[int, int]:
    """(epoch, position in that epoch's permutation) of the first row of this process's part
    of step `step`: the one step -> example rule (`train_indices`, the streaming `TrainPlan`).

    Step s lies in epoch s // steps_per_epoch and takes that epoch's slice [pos*B, (pos+1)*B)
    (pos = s % steps_per_epoch, B the global batch), of which process p owns rows
    [p*b, (p+1)*b); so the answer for a step never depends on where a run started."""
    b = per_process(global_batch, process_count, "global_batch_size")
    epoch, pos = divmod(step, steps_per_epoch(n, global_batch))
    return epoch, pos * global_batch + process_index * b


def train_indices(
    *, seed: int, n: int, global_batch: int, start_step: int, num_steps: int,
    process_index: int = 0, process_count: int = 1,
) -> np.ndarray:
    """int32 (num_steps, global_batch // process_count): this process's rows of each step
    (`locate`)."""
    b = per_process(global_batch, process_count, "global_batch_size")
    out = np.empty((num_steps, b), np.int32)
    perm_epoch, perm = -1, None
    for i, step in enumerate(range(start_step, start_step + num_steps)):
        epoch, start = locate(step, n, global_batch, process_index, process_count)
        if epoch != perm_epoch:
            perm_epoch, perm = epoch, epoch_permutation(seed, epoch, n)
        out[i] = perm[start:start + b]
    return out


def eval_plan(n: int, eval_batch: int, process_index: int, process_count: int):
    """This process's eval batches: a list of (indices int32 (b,), mask bool (b,)).

    Global batch k covers examples [k*E, (k+1)*E) (E = eval_batch), process p takes rows
    [p*b, (p+1)*b) of it; rows past n are padding (index 0, mask False). Every process gets
    ceil(n / E) batches and every example is covered exactly once across processes.
    """
    b = per_process(eval_batch, process_count, "eval_batch_size")
    num_batches = -(-n // eval_batch)
    plan = []
    for k in range(num_batches):
        rows = k * eval_batch + process_index * b + np.arange(b)
        mask = rows < n
        plan.append((np.where(mask, rows, 0).astype(np.int32), mask))
    return plan

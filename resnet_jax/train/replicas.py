"""Replicas: N seeds of one net trained as one program (`train.replicas`).

Replica i of a run with seed s is the run with seed s + i: its own initialization, data order
and augmentation, over the same resident data and validation split. On the devices the N
states are one state with a leading replica axis (`resnet_jax.train.dispatch`); this module
holds what the rest of the code needs to know about that axis, and the across-seed summary
(the paper's "best (mean ± std)" over runs). JAX is imported only by the functions on
arrays, so the sweep report (which reads results.json files) can use the summary without it.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

METRICS = ("top1_error", "top5_error", "loss")


def count(config: Any) -> int:
    """`config.train.replicas` (1 for configs that predate the field)."""
    return int(config.train.get("replicas", 1))


def seeds(config: Any) -> list[int]:
    """The run seed of each replica: seed, seed + 1, ..."""
    return [int(config.seed) + i for i in range(count(config))]


def take(tree: Any, i: int) -> Any:
    """Replica i of a stacked pytree (leaves (N, ...) -> (...))."""
    import jax
    return jax.tree.map(lambda x: x[i], tree)


def stack(trees: Sequence[Any], mesh: Any) -> Any:
    """Per-replica pytrees (replicated on `mesh`) -> one stacked pytree, replicated."""
    import jax
    import jax.numpy as jnp

    from resnet_jax import parallel
    return jax.jit(lambda *t: jax.tree.map(lambda *x: jnp.stack(x), *t),
                   out_shardings=parallel.replicated(mesh))(*trees)


def check_index(replica: Optional[int], n: int, what: str) -> int:
    """The replica a command acts on: `replica`, or 0 for a run of one; `what` names the run in
    the error (a --replica out of range, or missing for a run of several)."""
    if replica is None:
        if n > 1:
            raise ValueError(f"{what} trained {n} replicas (train.replicas={n}): pass "
                             f"--replica i with i in 0..{n - 1}")
        return 0
    if not 0 <= replica < n:
        allowed = f"0..{n - 1}" if n > 1 else "0"
        raise ValueError(f"--replica {replica} is out of range: {what} trained {n} "
                         f"replica{'s' if n > 1 else ''} (allowed: {allowed})")
    return int(replica)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1, as a paper's ± over runs; 0 for one)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def stats(values: Sequence[float]) -> dict:
    """{'n', 'min', 'mean', 'std'} of `values` (sample std), what `paper_form` prints."""
    values = list(values)
    if not values:
        return {"n": 0}
    mean, std = mean_std(values)
    return {"n": len(values), "min": min(values), "mean": mean, "std": std}


def summarize(entries: Sequence[dict]) -> dict:
    """The across-seed summary of results.json's `replicas` list: over the replicas that
    finished finite, for `final` and for `best` (each replica's best evaluation), min / mean /
    sample std of each metric (and `n`); `runs` counts them, `replicas` all of them."""
    done = [e for e in entries if e.get("final")]
    out: dict = {"replicas": len(entries), "runs": len(done)}
    for which in ("final", "best"):
        rows = [e[which] for e in done if e.get(which)]
        if rows:
            out[which] = {m: stats([float(r[m]) for r in rows]) for m in METRICS}
    return out


def paper_form(stats: Optional[dict], digits: int = 2) -> str:
    """'6.43 (6.61 ± 0.16)': the best run and the mean ± std over runs, as the paper prints
    its CIFAR errors (one run: its value alone; none: '-')."""
    if not stats or not stats.get("n"):
        return "-"
    low, mean, std = stats["min"], stats["mean"], stats["std"]
    if stats["n"] == 1:
        return f"{low:.{digits}f}"
    return f"{low:.{digits}f} ({mean:.{digits}f} ± {std:.{digits}f})"


def summary_line(summary: dict) -> str:
    """'4 of 5 replicas finished: final val top-1 error (%), best (mean ± std): 6.43 (6.61 ±
    0.16)': results.json's `summary` in a few words."""
    top1 = (summary.get("final") or {}).get("top1_error")
    return (f"{summary['runs']} of {summary['replicas']} replicas finished: final val top-1 "
            f"error (%), best (mean ± std): {paper_form(top1)}")

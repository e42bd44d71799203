"""Host-side metric helpers: turn the step's outputs into logged numbers, and stop on NaN.

Conventions (see `resnet_jax.train.step`): `top1`/`top5` are fractions of examples classified
correctly (accuracies in [0, 1]) in the train metrics, and sums of correct examples in the eval
sums; the logs (metrics.jsonl) report errors in percent, which these helpers compute. With
replicas (`train.replicas` > 1) every metric has a trailing replica axis ((k, N) train metrics,
(N,) eval sums) and `replica=i` picks one.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np


class NonFiniteError(FloatingPointError):
    """A training step's loss or gradient was not finite; the run stopped there."""


def _column(metrics: Mapping[str, Any], name: str, replica: int | None) -> np.ndarray:
    """One metric over the steps (k,), of one replica when `replica` is given."""
    value = np.asarray(jax.device_get(metrics[name]))
    if replica is not None:
        value = value[..., replica]
    return np.atleast_1d(value)


def first_non_finite(metrics: Mapping[str, Any], step: int,
                     replica: int | None = None) -> tuple[int, str] | None:
    """(step, 'loss=..., grad_norm=...') of the first non-finite step in `metrics` (k steps
    stacked on axis 0, the first being `step`), or None when all were finite."""
    finite = _column(metrics, "finite", replica).astype(bool)
    if finite.all():
        return None
    i = int(np.argmin(finite))
    loss, gnorm = (_column(metrics, name, replica)[i] for name in ("loss", "grad_norm"))
    return step + i, f"loss={loss}, grad_norm={gnorm}"


def check_finite(metrics: Mapping[str, Any], step: int, kept: str = "") -> None:
    """Raise `NonFiniteError` naming the first step whose loss or gradient was not finite.

    Args:
      metrics: train metrics of one step (scalars) or of k steps stacked on axis 0 (from a
        `steps_per_dispatch` scan); must hold `finite`, and `loss`, `grad_norm` for the message.
      step: the step number (state.step before the update) of the first entry in `metrics`.
      kept: what the caller kept, appended to the message (e.g. the last finite checkpoint).
    The step functions never apply that update nor any later one (`finite` is cumulative).
    """
    found = first_non_finite(metrics, step)
    if found is not None:
        raise NonFiniteError(f"non-finite loss or gradient at step {found[0]} ({found[1]}); "
                             f"training stopped{kept}")


def train_summary(metrics: Mapping[str, Any], replica: int | None = None) -> dict | None:
    """Means over a dispatch of k steps (or one step) -> {'loss', 'top1_error', 'top5_error'
    (percent), 'lr', 'grad_norm'}; `lr` and `grad_norm` are those of the last step. With
    `replica`: that replica's, over its finite steps only (a frozen replica's steps after its
    non-finite one train nothing), None when it has none."""
    m = {k: _column(metrics, k, replica).astype(np.float64) for k in metrics}
    if replica is not None:
        finite = m["finite"].astype(bool)
        if not finite.any():
            return None
        m = {k: v[finite] for k, v in m.items()}
    return {"loss": float(m["loss"].mean()),
            "top1_error": 100.0 * (1.0 - float(m["top1"].mean())),
            "top5_error": 100.0 * (1.0 - float(m["top5"].mean())),
            "lr": float(m["lr"][-1]), "grad_norm": float(m["grad_norm"][-1])}


def add_sums(total: Mapping[str, Any] | None, sums: Mapping[str, Any]) -> dict:
    """Accumulate eval sums on the host in float64 (exact counts for any dataset size)."""
    sums = {k: float(np.asarray(jax.device_get(v), dtype=np.float64)) for k, v in sums.items()}
    if total is None:
        return sums
    return {k: total[k] + sums[k] for k in sums}


def eval_summaries(sums: Mapping[str, Any]) -> list[dict]:
    """`eval_summary` of each replica ((N,) sums), or [that of the one model] (scalars)."""
    first = np.asarray(next(iter(sums.values())))
    if first.ndim == 0:
        return [eval_summary(sums)]
    return [eval_summary({k: float(v[i]) for k, v in sums.items()}) for i in range(len(first))]


def eval_summary(sums: Mapping[str, float]) -> dict:
    """Eval sums -> {'loss', 'top1_error', 'top5_error' (percent), 'count'} over real examples."""
    count = float(sums["count"])
    if count <= 0:
        raise ValueError("eval sums have count=0: no unmasked example was evaluated")
    return {"loss": sums["loss"] / count,
            "top1_error": 100.0 * (1.0 - sums["top1"] / count),
            "top5_error": 100.0 * (1.0 - sums["top5"] / count),
            "count": int(round(count))}

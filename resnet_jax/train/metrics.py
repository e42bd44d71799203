"""Host-side metric helpers: turn the step's outputs into logged numbers, and stop on NaN.

Conventions (see `resnet_jax.train.step`): `top1`/`top5` are fractions of examples classified
correctly (accuracies in [0, 1]) in the train metrics, and sums of correct examples in the eval
sums; the logs (metrics.jsonl) report errors in percent, which these helpers compute.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np


class NonFiniteError(FloatingPointError):
    """A training step's loss or gradient was not finite; the run stopped there."""


def check_finite(metrics: Mapping[str, Any], step: int, kept: str = "") -> None:
    """Raise `NonFiniteError` naming the first step whose loss or gradient was not finite.

    Args:
      metrics: train metrics of one step (scalars) or of k steps stacked on axis 0 (from a
        `steps_per_dispatch` scan); must hold `finite`, and `loss`, `grad_norm` for the message.
      step: the step number (state.step before the update) of the first entry in `metrics`.
      kept: what the caller kept, appended to the message (e.g. the last finite checkpoint).
    The step functions never apply that update nor any later one (`finite` is cumulative).
    """
    finite = np.atleast_1d(np.asarray(jax.device_get(metrics["finite"]), dtype=bool))
    if finite.all():
        return
    i = int(np.argmin(finite))
    loss = np.atleast_1d(np.asarray(jax.device_get(metrics["loss"])))[i]
    gnorm = np.atleast_1d(np.asarray(jax.device_get(metrics["grad_norm"])))[i]
    raise NonFiniteError(
        f"non-finite loss or gradient at step {step + i} (loss={loss}, grad_norm={gnorm}); "
        f"training stopped{kept}")


def train_summary(metrics: Mapping[str, Any]) -> dict:
    """Means over a dispatch of k steps (or one step) -> {'loss', 'top1_error', 'top5_error'
    (percent), 'lr', 'grad_norm'}; `lr` and `grad_norm` are those of the last step."""
    m = {k: np.atleast_1d(np.asarray(jax.device_get(v), dtype=np.float64))
         for k, v in metrics.items()}
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


def eval_summary(sums: Mapping[str, float]) -> dict:
    """Eval sums -> {'loss', 'top1_error', 'top5_error' (percent), 'count'} over real examples."""
    count = float(sums["count"])
    if count <= 0:
        raise ValueError("eval sums have count=0: no unmasked example was evaluated")
    return {"loss": sums["loss"] / count,
            "top1_error": 100.0 * (1.0 - sums["top1"] / count),
            "top5_error": 100.0 * (1.0 - sums["top5"] / count),
            "count": int(round(count))}

"""Helpers for sweep configs (configs/sweeps/*.py): their ":arg" and shortened schedules."""
from __future__ import annotations

from typing import Any

from resnet_jax.config import parse_config_arg


def parse_args(arg: str | None, defaults: dict[str, Any]) -> dict[str, Any]:
    """``'steps=600,depths=20/56'`` -> a copy of ``defaults`` with those keys replaced, each typed
    like its default (tuples from ``a/b/c``); errors name the key and the accepted keys
    (``resnet_jax.config.parse_config_arg``)."""
    return parse_config_arg(arg, defaults, kind="sweep argument")


def shortened_schedule(steps: int, full_steps: int,
                       boundaries: tuple[int, ...]) -> list[tuple[str, Any]]:
    """Overrides for a run of ``steps`` with the learning-rate drops at the same fractions."""
    if steps == full_steps:
        return []
    scaled = tuple(int(round(b * steps / full_steps)) for b in boundaries)
    return [("train.num_steps", steps), ("optim.boundaries", scaled)]

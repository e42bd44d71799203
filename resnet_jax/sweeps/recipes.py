"""Helpers for sweep configs (configs/sweeps/*.py): their ":arg" and shortened schedules."""
from __future__ import annotations

from typing import Any

from resnet_jax.config import parse_value


def parse_args(arg: str | None, defaults: dict[str, Any]) -> dict[str, Any]:
    """``'steps=600,depths=20/56'`` -> a copy of ``defaults`` with those keys replaced, each typed
    like its default (``resnet_jax.config.parse_value``; tuples from ``a/b/c``, since commas
    separate the arguments). A malformed item, an unknown key or a value of the wrong type is
    one ValueError naming the key and the accepted keys."""
    values = dict(defaults)
    accepted = ", ".join(defaults) or "none"
    for item in (arg or "").split(","):
        if not item.strip():
            continue
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"sweep argument {item!r} is not key=value; accepted keys: {accepted}")
        if key not in defaults:
            raise ValueError(f"sweep argument {key!r} is unknown; accepted keys: {accepted}")
        like, what = defaults[key], f"sweep argument {key}"
        if isinstance(like, tuple):
            parts = [t for t in text.split("/") if t.strip()]
            if not parts:
                raise ValueError(f"{what}: expected values separated by '/', got {text!r}")
            values[key] = tuple(parse_value(t, like[0] if like else None, what) for t in parts)
        else:
            values[key] = parse_value(text, like, what)
    return values


def shortened_schedule(steps: int, full_steps: int,
                       boundaries: tuple[int, ...]) -> list[tuple[str, Any]]:
    """Overrides for a run of ``steps`` with the learning-rate drops at the same fractions."""
    if steps == full_steps:
        return []
    scaled = tuple(int(round(b * steps / full_steps)) for b in boundaries)
    return [("train.num_steps", steps), ("optim.boundaries", scaled)]

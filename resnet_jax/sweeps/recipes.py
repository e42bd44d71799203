"""Helpers for sweep configs (configs/sweeps/*.py): their ":arg" and shortened schedules."""
from __future__ import annotations

from typing import Any


def parse_args(arg: str | None, defaults: dict[str, Any]) -> dict[str, Any]:
    """Typed like ``defaults``; tuples from ``a/b/c``; unknown keys name the allowed ones."""
    values = dict(defaults)
    for item in (arg or "").split(","):
        if not item.strip():
            continue
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or key not in defaults:
            raise ValueError(f"sweep argument {item!r}: expected key=value with key in "
                             f"{sorted(defaults)}")
        like = defaults[key]
        if isinstance(like, tuple):
            values[key] = tuple(type(like[0])(t) for t in text.split("/") if t)
        else:
            values[key] = type(like)(text)
    return values


def shortened_schedule(steps: int, full_steps: int,
                       boundaries: tuple[int, ...]) -> list[tuple[str, Any]]:
    """Overrides for a run of ``steps`` with the learning-rate drops at the same fractions."""
    if steps == full_steps:
        return []
    scaled = tuple(int(round(b * steps / full_steps)) for b in boundaries)
    return [("train.num_steps", steps), ("optim.boundaries", scaled)]

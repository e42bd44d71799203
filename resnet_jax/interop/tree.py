"""Flat '/'-joined views of variable trees, and the error for weights that do not fit a model.

`flatten({'params': {'conv1': {'kernel': k}}})` -> `{'params/conv1/kernel': k}`; `unflatten`
inverts it. `check_shapes(expected, found, what)` compares two flat {name: shape} maps and
raises `IncompatibleWeightsError` listing every missing key, unexpected key and shape mismatch.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

SEP = "/"
_SHOWN = 12  # names listed per kind in an error message; the counts are always complete


class IncompatibleWeightsError(ValueError):
    """Weights that do not fit the model: `missing`, `unexpected` (key lists) and `mismatched`
    ({key: (shape in the file, shape the model needs)})."""

    def __init__(self, what: str, missing: list[str], unexpected: list[str],
                 mismatched: dict[str, tuple[tuple, tuple]], hint: str = ""):
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_names(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_names(unexpected)}")
        if mismatched:
            n = _SHOWN // 2
            shown = [f"{k} {tuple(a)} in the file, {tuple(b)} in the model"
                     for k, (a, b) in list(mismatched.items())[:n]]
            more = f", ... ({len(mismatched) - n} more)" if len(mismatched) > n else ""
            parts.append(f"{len(mismatched)} shape mismatch(es): {'; '.join(shown)}{more}")
        super().__init__(f"{what}{f' ({hint})' if hint else ''}: " + "; ".join(parts))


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f", ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {'a/b/c': leaf}; keys must not contain '/'."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        key = str(key)
        if SEP in key:
            raise ValueError(f"variable name {key!r} contains {SEP!r}")
        name = f"{prefix}{SEP}{key}" if prefix else key
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{'a/b/c': leaf} -> nested dicts (inverse of `flatten`)."""
    out: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = name.split(SEP)
        node = out
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"{name!r} is both a variable and a scope")
        node[leaf] = value
    return out


def check_shapes(expected: Mapping[str, tuple], found: Mapping[str, tuple], what: str,
                 hint: str = "") -> None:
    """Raise IncompatibleWeightsError unless `found` has exactly the keys and shapes of
    `expected` (both {name: shape}); `what` opens the message."""
    missing = sorted(set(expected) - set(found), key=_natural)
    unexpected = sorted(set(found) - set(expected), key=_natural)
    mismatched = {k: (tuple(found[k]), tuple(expected[k]))
                  for k in sorted(set(expected) & set(found), key=_natural)
                  if tuple(found[k]) != tuple(expected[k])}
    if missing or unexpected or mismatched:
        raise IncompatibleWeightsError(what, missing, unexpected, mismatched, hint)


def _natural(key: str) -> list:
    """Sort 'layer1.10' after 'layer1.9'."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]

"""Read a sweep directory back: each member's values, results, metrics, config and analysis.

Pure reading (no JAX), shared by the report, the plots and the tests.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from resnet_jax.sweeps import grid

ANALYSIS_FILE = "analysis.json"


@dataclasses.dataclass
class MemberRecord:
    """What one member left on disk. ``status``: 'done' | 'failed' | 'pending'."""

    name: str
    index: int
    values: dict[str, Any]
    status: str
    results: dict | None = None
    metrics: list[dict] = dataclasses.field(default_factory=list)
    config: dict | None = None
    analysis: dict | None = None
    error: str = ""

    def get(self, field: str, default: Any = None) -> Any:
        """A config field (``model.depth``): the member's value, else config.json's, else
        ``default``."""
        if field in self.values:
            return self.values[field]
        node: Any = self.config or {}
        for part in field.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl as a list of dicts; a torn last line (a killed run) is ignored."""
    rows = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def _values_from_name(name: str) -> dict[str, Any]:
    """Without member.json: ``depth=20,plain=true`` -> {'depth': 20, 'plain': True}."""
    values = {}
    for part in name.split(","):
        key, sep, text = part.partition("=")
        if sep:
            values[key] = grid.parse_value(text)
    return values


def read_member(mdir: Path, fallback_index: int = 0) -> MemberRecord:
    """Everything one member directory holds."""
    meta = _read_json(mdir / "member.json") or {}
    values = dict(meta.get("values", [])) or _values_from_name(mdir.name)
    results = _read_json(mdir / "results.json")
    error = ""
    if results is not None:
        status = "done"
    elif (mdir / "error.txt").exists():
        status = "failed"
        lines = [ln for ln in (mdir / "error.txt").read_text().splitlines() if ln.strip()]
        error = lines[-1] if lines else ""
    else:
        status = "pending"
    return MemberRecord(
        name=mdir.name, index=int(meta.get("index", fallback_index)), values=values,
        status=status, results=results, metrics=read_metrics(mdir / "metrics.jsonl"),
        config=_read_json(mdir / "config.json"), analysis=_read_json(mdir / ANALYSIS_FILE),
        error=error)


def read_sweep(sweep_dir: str | Path) -> tuple[dict, list[MemberRecord]]:
    """``(sweep.json content or {}, members in grid order)``; members not started are left out."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise ValueError(f"sweep directory {str(root)!r} does not exist")
    desc = _read_json(root / "sweep.json") or {}
    order = {name: i for i, name in enumerate(desc.get("members", []))}
    dirs = [d for d in root.iterdir() if d.is_dir() and (
        d.name in order or (d / "member.json").exists() or (d / "results.json").exists())]
    records = [read_member(d, order.get(d.name, len(order))) for d in dirs]
    records.sort(key=lambda r: (order.get(r.name, r.index + len(order)), r.name))
    return desc, records


def varied_fields(desc: dict, records: list[MemberRecord]) -> list[str]:
    """The sweep's axes in order (from sweep.json, else from the members' values)."""
    if desc.get("axes"):
        return [field for field, _ in desc["axes"]]
    fields: list[str] = []
    for r in records:
        fields += [f for f in r.values if f not in fields]
    return fields


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))

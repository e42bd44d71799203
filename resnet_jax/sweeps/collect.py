"""Read a sweep directory back: each member's values, results, metrics, config, analysis and
attempts; group members into models. Paths go through etils ``epath``, so a sweep directory may
be local or remote (``gs://``).

Pure reading (no JAX), shared by the runner, the report, the plots and the analysis.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Sequence

from etils import epath

from resnet_jax import config as config_lib
from resnet_jax import files
from resnet_jax.sweeps import grid

ANALYSIS_FILE = "analysis.json"
RESULTS_FILE = "results.json"
SWEEP_FILE = "sweep.json"
MEMBER_FILE = "member.json"
LOG_FILE = "sweep_log.jsonl"
ERROR_FILE = "error.txt"


@dataclasses.dataclass
class MemberRecord:
    """What one member left on disk. ``status``: 'done' | 'failed' | 'pending'.
    ``attempts``: its rows of sweep_log.jsonl, oldest first."""

    name: str
    index: int
    values: dict[str, Any]
    status: str
    results: dict | None = None
    metrics: list[dict] = dataclasses.field(default_factory=list)
    config: dict | None = None
    analysis: dict | None = None
    error: str = ""
    attempts: list[dict] = dataclasses.field(default_factory=list)

    def get(self, field: str, default: Any = None) -> Any:
        """A config field (``model.depth``): the member's value, else config.json's, else
        ``default``."""
        if field in self.values:
            return self.values[field]
        try:
            return config_lib.get_field(self.config or {}, field)
        except (KeyError, TypeError):
            return default


def read_results(mdir: files.PathLike) -> dict | None:
    """The member's results.json, or None when it is missing, torn or not a JSON object: the
    member is then not done (the sweep runs it again; the trainer resumes from its checkpoint)."""
    results = files.read_json(epath.Path(mdir) / RESULTS_FILE)
    return results if isinstance(results, dict) else None


def is_done(mdir: files.PathLike) -> bool:
    """A member (or a training run) is done when its results.json reads back whole."""
    return read_results(mdir) is not None


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples the grid was written with."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def grid_values(desc: dict) -> dict[str, dict[str, Any]]:
    """``{member name: {field: value}}`` rebuilt from sweep.json's axes (what a member directory
    without member.json is known by)."""
    axes = [(str(f), tuple(_tuples(v) for v in vs)) for f, vs in desc.get("axes") or []]
    if not axes:
        return {}
    fields = [f for f, _ in axes]
    labels = grid.axis_labels(fields)
    return {grid.member_name(labels, combo): dict(zip(fields, combo))
            for combo in itertools.product(*(vs for _, vs in axes))}


def read_member(mdir: files.PathLike, fallback_index: int = 0,
                known_values: dict[str, Any] | None = None,
                attempts: Sequence[dict] = ()) -> MemberRecord:
    """Everything one member directory holds. ``known_values``: the member's values from
    sweep.json, used when member.json is missing or unreadable."""
    mdir = epath.Path(mdir)
    meta = files.read_json(mdir / MEMBER_FILE)
    meta = meta if isinstance(meta, dict) else {}
    values = dict(meta.get("values", [])) or dict(known_values or {})
    results = read_results(mdir)
    error = ""
    if results is not None:
        status = "done"
    elif (mdir / ERROR_FILE).exists():
        status = "failed"
        lines = [ln for ln in (mdir / ERROR_FILE).read_text().splitlines() if ln.strip()]
        error = lines[-1] if lines else ""
    else:
        status = "pending"
    return MemberRecord(
        name=mdir.name, index=int(meta.get("index", fallback_index)), values=values,
        status=status, results=results, metrics=files.read_jsonl(mdir / "metrics.jsonl"),
        config=files.read_json(mdir / "config.json"),
        analysis=files.read_json(mdir / ANALYSIS_FILE), error=error,
        attempts=[a for a in attempts if a.get("name") == mdir.name])


def read_sweep(sweep_dir: files.PathLike) -> tuple[dict, list[MemberRecord]]:
    """``(sweep.json content or {}, members in grid order)``; members not started are left out.

    Raises ValueError when ``sweep_dir`` does not exist or is not a sweep: no sweep.json and no
    member directory with member.json (a folder of training runs is not a sweep).
    """
    root = epath.Path(sweep_dir)
    if not root.is_dir():
        raise ValueError(f"sweep directory {str(root)!r} does not exist")
    desc = files.read_json(root / SWEEP_FILE)
    is_sweep = isinstance(desc, dict)
    desc = desc if is_sweep else {}
    order = {name: i for i, name in enumerate(desc.get("members", []))}
    dirs = [d for d in root.iterdir() if d.is_dir() and (
        d.name in order or (d / MEMBER_FILE).exists() or (d / RESULTS_FILE).exists())]
    if not is_sweep and not any((d / MEMBER_FILE).exists() for d in dirs):
        raise ValueError(f"{str(root)!r} is not a sweep directory: no {SWEEP_FILE} and no member "
                         f"directory with {MEMBER_FILE} (`resnet-jax sweep ... --workdir DIR` "
                         "writes them)")
    known, attempts = grid_values(desc), files.read_jsonl(root / LOG_FILE)
    records = [read_member(d, order.get(d.name, len(order)), known.get(d.name), attempts)
               for d in dirs]
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


def is_seed_field(field: str) -> bool:
    """Seeds are averaged over, not listed: ``seed`` or any ``*.seed`` field."""
    return field.rsplit(".", 1)[-1] == "seed"


def group_members(records: Sequence[MemberRecord],
                  fields: Sequence[str]) -> list[tuple[dict[str, Any], list[MemberRecord]]]:
    """Group members by the non-seed varied fields, groups in first-appearance (grid) order."""
    keys = [f for f in fields if not is_seed_field(f)]
    groups: dict[tuple, tuple[dict, list]] = {}
    for r in records:
        values = {f: r.get(f) for f in keys}
        key = tuple(grid.format_value(v) for v in values.values())
        groups.setdefault(key, (values, []))[1].append(r)
    return list(groups.values())


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))

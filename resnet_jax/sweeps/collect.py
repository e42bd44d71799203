"""Read a sweep directory back: each member's values, results, metrics, config, analysis and
attempts; group members into models. Paths go through etils ``epath``, so a sweep directory may
be local or remote (``gs://``).

Pure reading (no JAX), shared by the runner, the report, the plots and the analysis.

A run of several replicas (a packed member, or any run with ``train.replicas`` > 1) is read
back as one record per replica (``expand_replicas``): its seed, its best and final results,
its rows of metrics.jsonl and its analysis, so the report and the plots group and average
seeds whether they ran packed or one by one. A replica frozen at a non-finite step is a
failed record.
"""
from __future__ import annotations

import dataclasses
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
    axes = grid.parse_axes([(f, [_tuples(v) for v in vs]) for f, vs in desc.get("axes") or []])
    if not axes:
        return {}
    labels = grid.axis_labels(grid.axis_fields(axes))
    return {grid.member_name(labels, [v for _, v in pairs]): dict(pairs)
            for pairs in grid.grid_points(axes)}


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


def _replica_results(results: dict, i: int) -> dict:
    """The results.json of replica i alone, as a run of one would have written it."""
    one = results["replicas"][i]
    out = {k: v for k, v in results.items() if k not in ("replicas", "summary")}
    out.update(best=one.get("best"), final=one.get("final"), seed=one.get("seed"))
    return out


def expand_replicas(record: MemberRecord, packs: Sequence[str] = (),
                    replicas: int | None = None) -> list[MemberRecord]:
    """One record per replica of a run of several (`record` itself for a run of one).
    `packs`: the grid member each replica stands for (member.json), else `<name>/replica<i>`;
    `replicas`: how many, when the run has no results yet (its packed member's value)."""
    results = record.results
    n = len(results["replicas"]) if results and "replicas" in results else (replicas or 1)
    if n == 1 and not (results and "replicas" in results):
        return [record]
    first = record.values.get(grid.SEED_FIELD)
    rows = [r for r in record.metrics if "replica" in r]
    out = []
    for i in range(n):
        values = {f: v for f, v in record.values.items() if f != grid.REPLICAS_FIELD}
        if first is not None:
            values[grid.SEED_FIELD] = first + i
        one = dataclasses.replace(
            record, name=packs[i] if i < len(packs) else f"{record.name}/replica{i}",
            values=values, metrics=[{k: v for k, v in r.items() if k != "replica"}
                                    for r in rows if r["replica"] == i])
        if results and "replicas" in results:
            one.results = _replica_results(results, i)
            bad = results["replicas"][i].get("non_finite_step")
            if bad is not None:
                one.status, one.results = "failed", None
                one.error = f"non-finite loss or gradient at step {bad} (replica {i} frozen)"
        if isinstance(record.analysis, dict) and "replicas" in record.analysis:
            one.analysis = {**{k: v for k, v in record.analysis.items() if k != "replicas"},
                            **record.analysis["replicas"][i]}
        out.append(one)
    return out


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
    records = []
    for d in dirs:
        record = read_member(d, order.get(d.name, len(order)), known.get(d.name), attempts)
        meta = files.read_json(d / MEMBER_FILE)
        packs = meta.get("packs", []) if isinstance(meta, dict) else []
        for i, one in enumerate(expand_replicas(record, packs,
                                                record.values.get(grid.REPLICAS_FIELD))):
            records.append((order.get(record.name, record.index + len(order)), record.name, i,
                            one))
    records.sort(key=lambda r: r[:3])
    return desc, [r[3] for r in records]


def varied_fields(desc: dict, records: list[MemberRecord]) -> list[str]:
    """The sweep's axes in order (from sweep.json, else from the members' values)."""
    if desc.get("axes"):
        return grid.axis_fields(grid.parse_axes(desc["axes"]))
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

"""Sweep configs: load them, expand their axes into members, name and configure each member.

A sweep config is a Python file whose ``get_config(arg=None)`` returns a ConfigDict (or a
dict) with:

- ``base`` (str): the base config spec, ``'path.py[:arg]'``, relative to the current
  directory, to the sweep file, or to the repository root (``'configs/cifar10.py'``), or absolute.
- ``overrides`` (list of ``(field, value)`` pairs, optional): applied to every member, e.g.
  ``[('train.num_steps', 64000)]``.
- ``axes`` (list of ``(field, values)`` pairs): the fields to vary, e.g.
  ``[('model.depth', [20, 32]), ('model.plain', [True, False]), ('seed', [0, 1])]``.
  Pairs, not a dict, because ConfigDict refuses dotted keys and the order matters. A joint
  axis sets several fields together, one tuple of values per point (rows of a table that is
  no cartesian product): ``(('model.depth', 'model.block'), [(110, 'basic'), (164,
  'bottleneck')])``; its fields are varied fields like any other (names, report columns).
- ``recipe_args`` (list of ``(field, arg)`` pairs, optional): axes handed to the base recipe
  as its ``:arg`` (``('model.depth', 'depth')`` -> ``cifar10.py:depth=110``) instead of being
  set as fields, so that whatever the recipe derives from them (ResNet-110's warmup) follows.
- ``name`` (str, optional): a title for the report.
- ``published`` (list of ``({field: value}, text)``, optional) and ``published_source``
  (str): a paper's number for the report rows whose values include those, e.g.
  ``({'model.shortcut_variant': 'identity'}, '6.61')``, and where it is printed.

Members are the cartesian product of the axes, the first axis outermost (itertools.product
order), so member ``i`` means the same run on every host.

Packing (``members(pack=True)``, what ``resnet-jax sweep`` runs unless ``--no-pack``): members
that differ only in their seed, over consecutive seeds s .. s+N-1, become one member that
trains them as N replicas of one run (``seed=s``, ``train.replicas=N``; replica i is the run
with seed s+i), named with the seed range (``plain=false,seed=0-4``); its ``packs`` lists the
grid members it holds, in seed order.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path
from typing import Any, Sequence, Union

from resnet_jax import config as config_lib

REPO_ROOT = Path(__file__).resolve().parents[2]
SEED_FIELD = "seed"
REPLICAS_FIELD = "train.replicas"


Axis = Union[str, tuple[str, ...]]  # a field, or the fields of a joint axis


def axis_fields(axes: Sequence[tuple[Axis, Any]]) -> list[str]:
    """The fields of `axes`, a joint axis's in its order."""
    return [f for field, _ in axes for f in ((field,) if isinstance(field, str) else field)]


def grid_points(axes: Sequence[tuple[Axis, Sequence[Any]]]
                ) -> list[tuple[tuple[str, Any], ...]]:
    """Every point of the grid as its (field, value) pairs, the first axis outermost."""
    points = []
    for combo in itertools.product(*(values for _, values in axes)):
        pairs: list[tuple[str, Any]] = []
        for (field, _), value in zip(axes, combo):
            pairs += [(field, value)] if isinstance(field, str) else list(zip(field, value))
        points.append(tuple(pairs))
    return points


def parse_axes(raw: Any) -> tuple[tuple[Axis, tuple[Any, ...]], ...]:
    """Axes as a sweep config or sweep.json gives them (lists for tuples) -> checked
    ``((field or tuple of fields, values), ...)``; ValueError naming a malformed axis."""
    checked = []
    for field, values in _pairs(raw, "axes", joint=True):
        joint = not isinstance(field, str)
        if joint:
            field = tuple(str(f) for f in field)
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            raise ValueError(f"sweep axis '{field}' must list its values, got {values!r}")
        values = tuple(tuple(v) if joint and isinstance(v, (list, tuple)) else v
                       for v in values)
        if not values:
            raise ValueError(f"sweep axis '{field}' has no values")
        if joint and any(not isinstance(v, tuple) or len(v) != len(field) for v in values):
            raise ValueError(f"sweep axis {list(field)} is joint: each value must be a tuple "
                             f"of {len(field)} values, got {list(values)!r}")
        if len(set(map(format_value, values))) != len(values):
            raise ValueError(f"sweep axis '{field}' repeats a value: {values!r}")
        checked.append((field, values))
    return tuple(checked)


@dataclasses.dataclass(frozen=True)
class Sweep:
    """An expanded sweep: the base spec, shared overrides and ordered axes."""

    name: str
    base: str
    overrides: tuple[tuple[str, Any], ...]
    axes: tuple[tuple[Axis, tuple[Any, ...]], ...]
    recipe_args: tuple[tuple[str, str], ...] = ()
    published: tuple[tuple[tuple[tuple[str, Any], ...], str], ...] = ()
    published_source: str = ""

    @property
    def fields(self) -> list[str]:
        """The varied fields, in axis order (a joint axis's in its order)."""
        return axis_fields(self.axes)

    def members(self, pack: bool = False) -> list["Member"]:
        """All members, in the fixed cartesian-product order; with `pack`, those that differ
        only in consecutive seeds packed into one member each (module docstring)."""
        keys = axis_labels(self.fields)
        members = [
            Member(index=i, values=pairs, name=member_name(keys, [v for _, v in pairs]))
            for i, pairs in enumerate(grid_points(self.axes))
        ]
        return pack_seeds(members, keys) if pack else members

    def to_json(self, pack: bool = False) -> dict:
        """A JSON-able description (written as ``sweep.json`` in the sweep workdir): its
        `members` are those that run (packed with `pack`)."""
        return {
            "name": self.name,
            "base": self.base,
            "overrides": [[f, v] for f, v in self.overrides],
            "axes": [[f if isinstance(f, str) else list(f), list(vs)] for f, vs in self.axes],
            "recipe_args": [[f, a] for f, a in self.recipe_args],
            "members": [m.name for m in self.members(pack)],
            "pack": bool(pack),
            **({"published": [[dict(values), text] for values, text in self.published],
                "published_source": self.published_source} if self.published else {}),
        }


@dataclasses.dataclass(frozen=True)
class Member:
    """One point of the grid: its index, its ``(field, value)`` pairs and its directory name;
    a packed member (several seeds as replicas of one run) also names the grid members it
    holds, in replica order (``packs``)."""

    index: int
    values: tuple[tuple[str, Any], ...]
    name: str
    packs: tuple[str, ...] = ()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _consecutive(members: list[Member]) -> list[list[Member]]:
    """Members sorted by seed, split into runs of consecutive seeds."""
    seed = lambda m: dict(m.values)[SEED_FIELD]  # noqa: E731
    runs: list[list[Member]] = []
    for m in sorted(members, key=seed):
        if runs and seed(m) == seed(runs[-1][-1]) + 1:
            runs[-1].append(m)
        else:
            runs.append([m])
    return runs


def pack_seeds(members: Sequence[Member], labels: Sequence[str]) -> list[Member]:
    """Members that differ only in consecutive integer seeds -> one member of N replicas each
    (module docstring), in the order of their first grid member; the rest as they are.
    `labels`: the axes' labels (`axis_labels`). Re-indexed 0, 1, ..."""
    fields = [f for f, _ in members[0].values] if members else []
    if SEED_FIELD not in fields or REPLICAS_FIELD in fields or not all(
            _is_int(dict(m.values)[SEED_FIELD]) for m in members):
        return list(members)
    groups: dict[tuple, list[Member]] = {}
    for m in members:
        key = tuple(format_value(v) for f, v in m.values if f != SEED_FIELD)
        groups.setdefault(key, []).append(m)
    packed = []
    for group in groups.values():
        for run in _consecutive(group):
            if len(run) == 1:
                packed.append(run[0])
                continue
            first, last = (dict(m.values)[SEED_FIELD] for m in (run[0], run[-1]))
            shown = [f"{first}-{last}" if f == SEED_FIELD else v for f, v in run[0].values]
            packed.append(Member(
                index=0, name=member_name(labels, shown), packs=tuple(m.name for m in run),
                values=tuple(run[0].values) + ((REPLICAS_FIELD, len(run)),)))
    return [dataclasses.replace(m, index=i) for i, m in enumerate(packed)]


def with_seeds(sweep: "Sweep", count: int) -> "Sweep":
    """`sweep` with a seed axis 0 .. count-1 added last (``resnet-jax sweep --seeds N``)."""
    if count < 1:
        raise ValueError(f"--seeds {count} must be >= 1")
    if SEED_FIELD in sweep.fields:
        field, values = next(a for a in sweep.axes if SEED_FIELD in axis_fields([a]))
        raise ValueError(f"--seeds {count}: the sweep already varies {SEED_FIELD!r} (its axis: "
                         f"{list(values) if field == SEED_FIELD else (field, list(values))}); "
                         "drop --seeds or that axis")
    return dataclasses.replace(sweep, axes=sweep.axes + ((SEED_FIELD, tuple(range(count))),))


def format_value(value: Any) -> str:
    """A value as it appears in a member name: bools lower-case, the rest as ``str``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def axis_labels(fields: Sequence[str]) -> list[str]:
    """Short labels for fields: the last path component, or the full path where two clash."""
    last = [f.rsplit(".", 1)[-1] for f in fields]
    return [short if last.count(short) == 1 else full for short, full in zip(last, fields)]


def member_name(labels: Sequence[str], values: Sequence[Any]) -> str:
    """``depth=20,plain=true``: the member's directory name."""
    return ",".join(f"{k}={format_value(v)}" for k, v in zip(labels, values))


def _pairs(value: Any, what: str, joint: bool = False) -> tuple[tuple[Any, Any], ...]:
    """Accept a list of (field, value) pairs or a plain dict; reject anything else. `joint`:
    a field may be a list or tuple of fields (axes)."""
    if value is None:
        return ()
    if isinstance(value, dict):
        return tuple(value.items())
    try:
        pairs = tuple((f if joint and isinstance(f, (list, tuple)) else str(f), v)
                      for f, v in value)
    except (TypeError, ValueError):
        raise ValueError(
            f"sweep field '{what}' must be a list of (field, value) pairs, got {value!r}"
        ) from None
    return pairs


def sweep_from_config(config: Any, source: str | os.PathLike = "") -> Sweep:
    """Validate a sweep ConfigDict/dict into a :class:`Sweep`; ``source`` resolves ``base``."""
    get = config.get if hasattr(config, "get") else lambda k, d=None: getattr(config, k, d)
    base = get("base", None)
    if not isinstance(base, str) or not base:
        raise ValueError("sweep field 'base' must be a config spec string like "
                         "'configs/cifar10.py'")
    checked = parse_axes(get("axes", None))
    if not checked:
        raise ValueError("sweep field 'axes' must name at least one (field, values) pair")
    fields = axis_fields(checked)
    if len(set(fields)) != len(fields):
        raise ValueError(f"sweep field 'axes' names a field twice: {fields}")
    recipe_args = tuple((f, str(a)) for f, a in _pairs(get("recipe_args", None), "recipe_args"))
    for field, _ in recipe_args:
        if field not in fields:
            raise ValueError(f"sweep field 'recipe_args' names {field!r}, which is not an axis; "
                             f"axes: {fields}")
    name = get("name", None) or (Path(source).stem if source else "sweep")
    return Sweep(name=str(name), base=resolve_spec(base, source),
                 overrides=_pairs(get("overrides", None), "overrides"), axes=checked,
                 recipe_args=recipe_args, published=_published(get("published", None), fields),
                 published_source=str(get("published_source", None) or ""))


def _published(raw: Any, fields: Sequence[str]) -> tuple:
    """A sweep's ``published`` numbers, each keyed by varied fields only."""
    out = []
    for values, text in raw or ():
        values = tuple(dict(values).items())
        unknown = [f for f, _ in values if f not in fields]
        if unknown:
            raise ValueError(f"sweep field 'published' names {unknown}, which no axis varies; "
                             f"axes: {list(fields)}")
        out.append((values, str(text)))
    return tuple(out)


def resolve_spec(spec: str, source: str | os.PathLike = "") -> str:
    """Make ``path.py[:arg]`` absolute: try it as given, beside ``source``, then the repo root."""
    path, sep, arg = spec.partition(":")
    candidates = [Path(path)]
    if source:
        candidates.append(Path(source).resolve().parent / path)
    candidates.append(REPO_ROOT / path)
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate.resolve()) + sep + arg
    raise ValueError(
        f"sweep field 'base': no config file {path!r} (looked in {[str(c) for c in candidates]})"
    )


def load_sweep(spec: str) -> Sweep:
    """Import a sweep file ``path.py[:arg]`` and expand its ``get_config(arg)``."""
    path, _, arg = spec.partition(":")
    module = config_lib.load_module(path, label="sweep config")
    config = module.get_config(arg) if arg else module.get_config()
    return sweep_from_config(config, path)


def override_text(field: str, value: Any) -> str:
    """``('train.num_steps', 100)`` -> ``'--config.train.num_steps=100'`` (load_config's syntax)."""
    if isinstance(value, (tuple, list)):
        text = repr(tuple(value))
    else:
        text = format_value(value)
    return f"--config.{field}={text}"


def member_spec(sweep: Sweep, member: Member) -> tuple[str, list[str]]:
    """The member's ``(config spec, override strings)`` for ``resnet_jax.config.load_config``.

    Recipe-argument axes go after the spec's colon; the sweep's overrides and the other axes
    become ``--config.field=value`` strings (parsed and type-checked by load_config).
    """
    arg_names = dict(sweep.recipe_args)
    args = [f"{arg_names[f]}={format_value(v)}" for f, v in member.values if f in arg_names]
    spec = sweep.base
    if args:
        spec += ("," if ":" in spec and not spec.endswith(":") else
                 ("" if spec.endswith(":") else ":")) + ",".join(args)
    overrides = [override_text(f, v) for f, v in sweep.overrides]
    overrides += [override_text(f, v) for f, v in member.values if f not in arg_names]
    return spec, overrides

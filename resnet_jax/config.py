"""Run configs: load a recipe from `configs/*.py`, apply command-line overrides, validate.

A recipe is a Python file with `get_config(arg: str | None = None) -> ConfigDict`; `arg` is
the text after the colon in `--config configs/cifar10.py:depth=110,shortcut=B,plain=false`,
parsed by `parse_config_arg`. Overrides are `--config.optim.lr=0.2` strings. Every field has
a type fixed by the recipe; a value of another type, a misspelled field or a value outside a
field's allowed set is refused with a `ValueError` naming the field.

The schema (every field, allowed value and range) is `resnet_jax.schema`, the same table the
modules that act on the fields use; `validate` checks a config against it once, at load.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
from typing import Any, Iterable, Mapping

import ml_collections

from resnet_jax import schema
from resnet_jax.schema import ADDED_FIELDS, REMOVED_FIELDS, RENAMED_VALUES

_TRUE = ("true", "t", "yes", "y", "1")
_FALSE = ("false", "f", "no", "n", "0")


def parse_bool(text: str, field: str) -> bool:
    """'true'/'false' (also yes/no/1/0, any case) -> bool; anything else names `field`."""
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"{field}: expected a bool (true|false), got {text!r}")


def parse_value(text: str, like: Any, field: str) -> Any:
    """Parses `text` into the type of the current value `like` (bool, int, float, str, tuple).

    int fields refuse '0.2'; float fields accept '1' and '1e-4'; tuple fields take
    '32000,48000' or '(32000, 48000)'; a field whose value is None takes any Python literal.
    """
    if isinstance(like, bool):
        return parse_bool(text, field)
    try:
        if isinstance(like, int):
            return int(text.strip())
        if isinstance(like, float):
            return float(text.strip())
    except ValueError:
        kind = type(like).__name__
        raise ValueError(f"{field}: expected {kind}, got {text!r}") from None
    if isinstance(like, str):
        return text
    if isinstance(like, (tuple, list)):
        stripped = text.strip()
        if stripped in ("", "()", "[]"):
            return ()
        try:
            value = ast.literal_eval(stripped)
        except (ValueError, SyntaxError):
            raise ValueError(f"{field}: expected a tuple like '1,2,3', got {text!r}") from None
        return tuple(value) if isinstance(value, (tuple, list)) else (value,)
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_config_arg(arg: str | None, defaults: Mapping[str, Any],
                     kind: str = "config argument") -> dict[str, Any]:
    """'depth=110,shortcut=B,plain=false' -> a copy of `defaults` with those keys replaced,
    each typed like its default (`parse_value`; a tuple from 'a/b/c', since commas separate
    the arguments). A malformed item, an unknown key or a value of the wrong type is one
    ValueError naming the key and the accepted keys; `kind` names what is parsed ('config
    argument', 'sweep argument')."""
    values = dict(defaults)
    accepted = ", ".join(defaults) or "none"
    for item in (arg or "").split(","):
        if not item.strip():
            continue
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{kind} {item!r} is not key=value; accepted keys: {accepted}")
        if key not in defaults:
            raise ValueError(f"{kind} {key!r} is unknown; accepted keys: {accepted}")
        like, what = defaults[key], f"{kind} {key}"
        if isinstance(like, tuple):
            parts = [t for t in text.split("/") if t.strip()]
            if not parts:
                raise ValueError(f"{what}: expected values separated by '/', got {text!r}")
            values[key] = tuple(parse_value(t, like[0] if like else None, what) for t in parts)
        else:
            values[key] = parse_value(text, like, what)
    return values


def load_module(path: str, label: str = "--config"):
    """The Python file `path` as a module with a `get_config` function; errors name `label`."""
    if not os.path.isfile(path):
        raise ValueError(f"{label}: file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"_resnet_jax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 - a recipe's own bug: one line naming its line
        raise recipe_error(path, label, err) from None
    if not hasattr(module, "get_config"):
        raise ValueError(f"{label}: {path!r} has no get_config(arg) function")
    return module


def recipe_error(path: str, label: str, err: BaseException) -> ValueError:
    """One line for an error raised while a recipe file runs: its file and line, the error."""
    if isinstance(err, SyntaxError):
        return ValueError(f"{label}: {path}:{err.lineno}: syntax error: {err.msg}")
    line = None
    tb = err.__traceback__
    while tb is not None:  # the innermost frame in the recipe itself
        if os.path.abspath(tb.tb_frame.f_code.co_filename) == os.path.abspath(path):
            line = tb.tb_lineno
        tb = tb.tb_next
    where = f"{path}:{line}" if line else path
    return ValueError(f"{label}: {where}: {type(err).__name__}: {err}")


def _split_override(override: str) -> tuple[str, str]:
    text = override[2:] if override.startswith("--") else override
    if text.startswith("config."):
        text = text[len("config."):]
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"override {override!r}: expected --config.section.field=value")
    return key, value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> None:
    """Applies '--config.a.b=value' strings in place; unknown fields and bad types refused."""
    for override in overrides:
        key, text = _split_override(override)
        *parents, leaf = key.split(".")
        node = config
        for i, part in enumerate(parents):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                raise ValueError(f"config field {'.'.join(parents[:i + 1])!r} does not exist "
                                 f"(in override {override!r})")
            node = node[part]
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            raise ValueError(f"config field {key!r} does not exist; fields here: {known}")
        if isinstance(node[leaf], ml_collections.ConfigDict):
            raise ValueError(f"config field {key!r} is a section; set one of its fields")
        value = parse_value(text, node[leaf], f"config field {key}")
        try:
            node[leaf] = value
        except TypeError as err:
            raise ValueError(f"config field {key}: {err}") from None


def get_field(config: Any, dotted: str) -> Any:
    """`config['a']['b']` for 'a.b' (a ConfigDict or nested dicts); KeyError if missing."""
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks the schema, allowed values and ranges (`resnet_jax.schema`); returns `config`
    unchanged. Every field must be present: nothing downstream fills in a default."""
    for section, fields in schema.FIELDS.items():
        node = config[section] if section else config
        for field in fields:
            if field not in node:
                name = f"{section}.{field}" if section else field
                raise ValueError(f"config field {name!r} is missing from the recipe")
    for field, why in REMOVED_FIELDS.items():
        section, name = field.split(".")
        if name in config[section]:
            raise ValueError(f"config field {field} was removed ({why}); delete it from the "
                             "recipe")
    for field in schema.ENUMS:
        schema.check_choice(field, get_field(config, field))
    schema.check_data(config.data)
    for field in schema.POSITIVE_INTS:
        value = get_field(config, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"config field {field}={value!r} must be a positive integer")
    for field in schema.RANGES:
        problem = schema.range_problem(field, get_field(config, field))
        if problem:
            raise ValueError(f"config field {problem}")
    _validate_model(config.model)
    _validate_data(config.data)
    _validate_replicas(config)
    bounds = list(config.optim.boundaries)
    if any(b < 0 for b in bounds) or any(a >= b for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"config field optim.boundaries={tuple(bounds)} must be strictly "
                         "increasing and >= 0")
    return config


def _validate_model(model: ml_collections.ConfigDict) -> None:
    problem = (schema.depth_problem(model.arch, model.depth, model.block)
               or schema.variant_problem({f: model[f] for f in (
                   "plain", "zero_init_residual", *schema.VARIANT_DEFAULTS)}))
    if problem:
        raise ValueError(f"config field model.{problem}")
    if model.plain and model.zero_init_residual:
        raise ValueError("config field model.zero_init_residual=True with model.plain=True: "
                         "a plain block has no shortcut, so a zero last-BN scale makes every "
                         "block output relu(0) = 0 and the net is dead from step 0; set "
                         "model.zero_init_residual=false")


def _validate_data(data: ml_collections.ConfigDict) -> None:
    if data.path and data.source not in ("tar", "folder"):
        raise ValueError(f"config field data.path={data.path!r} is only read with data.source="
                         f"tar or folder, but data.source={data.source!r}; add "
                         "--config.data.source=tar (or folder), or use the recipe's data= "
                         "argument (configs/cifar10.py:data=PATH)")
    sizes = tuple(data.multiscale_sizes)
    if not sizes or any(not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"config field data.multiscale_sizes={sizes} must be positive ints")
    if data.eval_resize < data.image_size:
        raise ValueError(f"config field data.eval_resize={data.eval_resize} is smaller than "
                         f"data.image_size={data.image_size} (the eval crop would not fit)")
    for field, (ok, what) in schema.UNREAD[data.pipeline].items():
        value = data[field.split(".", 1)[1]]
        if not ok(value, data):
            raise ValueError(f"config field {field}={value!r} is not read by data.pipeline="
                             f"{data.pipeline!r}; it must be {what}")


def _validate_replicas(config: ml_collections.ConfigDict) -> None:
    replicas, pipeline = config.train.replicas, config.data.pipeline
    if replicas > 1 and pipeline != "in_memory":
        # Each replica needs its own order and augmentation: free over one resident split,
        # N times the decoding for a streaming one (and an ImageNet net fills a GPU alone).
        raise ValueError(f"config field train.replicas={replicas} needs data.pipeline="
                         f"'in_memory' (data.pipeline={pipeline!r} trains one replica: set "
                         "train.replicas=1)")


def check_fits(config: ml_collections.ConfigDict, num_devices: int, process_count: int) -> None:
    """Refuses batch sizes that do not split evenly over devices and processes (with
    replicas, each replica's batch is split over every device)."""
    replicas = config.train.replicas
    for field in ("batch_size", "eval_batch_size"):
        value = config.train[field]
        if value % num_devices or value % process_count:
            each = (f" (the batch of each of the train.replicas={replicas} replicas, split "
                    "over every device)" if replicas > 1 else "")
            raise ValueError(f"config field train.{field}={value}{each} is not divisible by "
                             f"the {num_devices} devices ({process_count} processes); choose a "
                             f"multiple of {num_devices}")
    if config.train.bn_mode == "group" and num_devices % config.train.bn_group_size:
        raise ValueError(f"config field train.bn_group_size={config.train.bn_group_size} "
                         f"does not divide the {num_devices} devices")


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Loads 'path.py[:arg]', applies overrides, validates, and returns a locked ConfigDict."""
    path, _, arg = spec.partition(":")
    module = load_module(path)
    try:
        config = module.get_config(arg) if arg else module.get_config()
    except ValueError:
        raise  # the recipe's own refusal (a bad argument), already one line
    except Exception as err:  # noqa: BLE001
        raise recipe_error(path, "--config", err) from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ValueError(f"--config: {path}:get_config returned {type(config).__name__}, "
                         "expected ml_collections.ConfigDict")
    config.lock()
    apply_overrides(config, overrides)
    return validate(config)


def to_json(config: ml_collections.ConfigDict) -> str:
    """The resolved config as indented JSON (tuples become lists)."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def from_json(text: str) -> ml_collections.ConfigDict:
    """Inverse of `to_json`: lists become tuples again; an older workdir's config gets the
    `ADDED_FIELDS` it lacks (their defaults), loses the `REMOVED_FIELDS` and has its
    `RENAMED_VALUES` renamed; the result is locked."""
    def tuples(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: tuples(v) for k, v in value.items()}
        if isinstance(value, list):
            return tuple(tuples(v) for v in value)
        return value
    tree = tuples(json.loads(text))
    for field, default in ADDED_FIELDS.items():
        section, name = field.split(".")
        if isinstance(tree.get(section), dict):
            tree[section].setdefault(name, default)
    for field in REMOVED_FIELDS:
        section, name = field.split(".")
        if isinstance(tree.get(section), dict):
            tree[section].pop(name, None)
    for (field, old, pipeline), new in RENAMED_VALUES.items():
        section, name = field.split(".")
        node = tree.get(section)
        if isinstance(node, dict) and node.get(name) == old and node.get("pipeline") == pipeline:
            node[name] = new
    config = ml_collections.ConfigDict(tree)
    config.lock()
    return config

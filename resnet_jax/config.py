"""Run configs: load a recipe from `configs/*.py`, apply command-line overrides, validate.

A recipe is a Python file with `get_config(arg: str | None = None) -> ConfigDict`; `arg` is
the text after the colon in `--config configs/cifar10.py:depth=110,shortcut=B,plain=false`,
parsed by `parse_config_arg`. Overrides are `--config.optim.lr=0.2` strings. Every field has
a type fixed by the recipe; a value of another type, a misspelled field or a value outside a
field's allowed set is refused with a `ValueError` naming the field.

The schema (docs/ARCHITECTURE.md "Config schema") is `REQUIRED_FIELDS`; `ENUMS` holds the
allowed values of the fields that have a fixed set.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
from typing import Any, Iterable, Mapping

import ml_collections

REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "": ("seed",),
    "model": ("arch", "depth", "plain", "shortcut", "bottleneck_stride", "zero_init_residual",
              "width", "dtype", "scan_blocks"),
    "data": ("pipeline", "source", "name", "path", "data_dir", "num_val_examples",
             "train_augment", "image_size", "eval_resize", "lighting_std", "normalize",
             "eval_crops", "multiscale_sizes", "on_corrupt", "shuffle_buffer",
             "synthetic_examples", "num_classes", "prefetch"),
    "optim": ("name", "lr", "lr_scaling", "base_batch_size", "momentum", "nesterov",
              "weight_decay", "decay_bn_and_bias", "schedule", "schedule_unit", "boundaries",
              "decay_factor", "warmup", "warmup_length", "warmup_lr", "label_smoothing"),
    "train": ("batch_size", "eval_batch_size", "num_steps", "bn_mode", "bn_group_size",
              "steps_per_dispatch", "log_every_steps", "eval_every_steps",
              "checkpoint_every_steps", "keep_checkpoints", "progress"),
}

ENUMS: dict[str, tuple[Any, ...]] = {
    "model.arch": ("cifar", "imagenet"),
    "model.shortcut": ("A", "B", "C"),
    "model.bottleneck_stride": ("v1", "v1.5"),
    "model.dtype": ("float32", "bfloat16"),
    "data.pipeline": ("in_memory", "streaming"),
    "data.source": ("tar", "folder", "tfds", "synthetic"),
    "data.train_augment": ("pad_crop_flip", "scale", "inception", "none"),
    "data.normalize": ("per_pixel_mean", "per_channel"),
    "data.eval_crops": ("center", "10crop", "multiscale"),
    "data.on_corrupt": ("error", "skip"),
    "optim.name": ("sgd", "lars"),
    "optim.lr_scaling": ("none", "linear"),
    "optim.schedule": ("piecewise", "cosine"),
    "optim.schedule_unit": ("steps", "epochs"),
    "optim.warmup": ("none", "linear", "constant"),
    "train.bn_mode": ("global", "per_device", "group"),
}

# Fields added after workdirs were first written, with the value that reproduces the older
# behaviour: `from_json` fills them in, so an older workdir still evaluates and resumes.
ADDED_FIELDS: dict[str, Any] = {"model.scan_blocks": False, "data.num_classes": 0,
                                "data.prefetch": 2}

POSITIVE_INTS = ("train.batch_size", "train.eval_batch_size", "train.num_steps",
                 "train.bn_group_size", "train.steps_per_dispatch", "train.log_every_steps",
                 "train.eval_every_steps", "train.checkpoint_every_steps",
                 "train.keep_checkpoints", "model.width", "data.image_size", "data.prefetch")
# Numeric fields whose other values can only be mistakes: field -> (test, what it must be).
RANGES: dict[str, tuple[Any, str]] = {
    "optim.lr": (lambda v: v > 0, "> 0"),
    "optim.momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optim.weight_decay": (lambda v: v >= 0, ">= 0"),
    "optim.decay_factor": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "optim.warmup_lr": (lambda v: v >= 0, ">= 0"),
    "optim.warmup_length": (lambda v: v >= 0, ">= 0"),
    "optim.base_batch_size": (lambda v: v > 0, "> 0"),
    "optim.label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "data.lighting_std": (lambda v: v >= 0, ">= 0"),
    "data.num_val_examples": (lambda v: v >= 0, ">= 0"),
    "data.shuffle_buffer": (lambda v: v >= 0, ">= 0"),
    "data.synthetic_examples": (lambda v: v > 0, "> 0"),
    "data.num_classes": (lambda v: v >= 0, ">= 0 (0: from the data)"),
    "data.eval_resize": (lambda v: v > 0, "> 0"),
}
IMAGENET_DEPTHS = (18, 34, 50, 101, 152, 200)
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


def parse_config_arg(arg: str | None, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """'depth=110,shortcut=B,plain=false' -> dict typed like `defaults`; unknown keys refused.

    Returns a copy of `defaults` with the given keys replaced.
    """
    values = dict(defaults)
    for item in (arg or "").split(","):
        if not item.strip():
            continue
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"config argument {item!r}: expected key=value")
        if key not in defaults:
            raise ValueError(f"config argument {key!r} is unknown; allowed: {sorted(defaults)}")
        values[key] = parse_value(text, defaults[key], f"config argument {key}")
    return values


def _load_module(path: str):
    if not os.path.isfile(path):
        raise ValueError(f"--config: file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"_resnet_jax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"--config: {path!r} has no get_config(arg) function")
    return module


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


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks the schema, allowed values and simple ranges; returns `config` unchanged."""
    for section, fields in REQUIRED_FIELDS.items():
        node = config[section] if section else config
        for field in fields:
            if field not in node:
                name = f"{section}.{field}" if section else field
                raise ValueError(f"config field {name!r} is missing from the recipe")
    for field, allowed in ENUMS.items():
        value = _get(config, field)
        if value not in allowed:
            raise ValueError(f"config field {field}={value!r} is not allowed; "
                             f"allowed values: {', '.join(map(str, allowed))}")
    for field in POSITIVE_INTS:
        value = _get(config, field)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"config field {field}={value!r} must be a positive integer")
    for field, (ok, what) in RANGES.items():
        value = _get(config, field)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
            raise ValueError(f"config field {field}={value!r} must be {what}")
    _validate_model(config.model)
    _validate_data(config.data)
    bounds = list(config.optim.boundaries)
    if any(b < 0 for b in bounds) or any(a >= b for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"config field optim.boundaries={tuple(bounds)} must be strictly "
                         "increasing and >= 0")
    return config


def _validate_model(model: ml_collections.ConfigDict) -> None:
    if model.arch == "cifar" and (model.depth < 8 or (model.depth - 2) % 6):
        raise ValueError(f"config field model.depth={model.depth}: CIFAR depths are 6n+2 "
                         "with n >= 1 (8, 14, 20, 32, 44, 56, 110, 1202, ...)")
    if model.arch == "imagenet" and model.depth not in IMAGENET_DEPTHS:
        raise ValueError(f"config field model.depth={model.depth}: ImageNet depths are "
                         f"{', '.join(map(str, IMAGENET_DEPTHS))}")
    if model.plain and model.zero_init_residual:
        raise ValueError("config field model.zero_init_residual=True with model.plain=True: "
                         "a plain block has no shortcut, so a zero last-BN scale makes every "
                         "block output relu(0) = 0 and the net is dead from step 0; set "
                         "model.zero_init_residual=false")


def _validate_data(data: ml_collections.ConfigDict) -> None:
    sizes = tuple(data.multiscale_sizes)
    if not sizes or any(not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"config field data.multiscale_sizes={sizes} must be positive ints")
    if data.eval_resize < data.image_size:
        raise ValueError(f"config field data.eval_resize={data.eval_resize} is smaller than "
                         f"data.image_size={data.image_size} (the eval crop would not fit)")


def check_fits(config: ml_collections.ConfigDict, num_devices: int, process_count: int) -> None:
    """Refuses batch sizes that do not split evenly over devices and processes."""
    for field in ("batch_size", "eval_batch_size"):
        value = config.train[field]
        if value % num_devices or value % process_count:
            raise ValueError(f"config field train.{field}={value} is not divisible by the "
                             f"{num_devices} devices ({process_count} processes); choose a "
                             f"multiple of {num_devices}")
    if config.train.bn_mode == "group" and num_devices % config.train.bn_group_size:
        raise ValueError(f"config field train.bn_group_size={config.train.bn_group_size} "
                         f"does not divide the {num_devices} devices")


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Loads 'path.py[:arg]', applies overrides, validates, and returns a locked ConfigDict."""
    path, _, arg = spec.partition(":")
    module = _load_module(path)
    config = module.get_config(arg) if arg else module.get_config()
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
    """Inverse of `to_json`: lists become tuples again, `ADDED_FIELDS` missing from an older
    workdir's config get their defaults; the result is locked."""
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
    config = ml_collections.ConfigDict(tree)
    config.lock()
    return config

"""The run config's schema: every field, every allowed value, every range, in one table.

Plain Python (no ml_collections, no JAX), so the modules that act on a field (models, optim,
parallel, data) take their allowed values from here, and `resnet_jax.config.validate` checks a
whole config against the same table once, when it is loaded. docs/ARCHITECTURE.md "Config
schema" describes each field.
"""
from __future__ import annotations

from typing import Any, Callable

FIELDS: dict[str, tuple[str, ...]] = {
    "": ("seed",),
    "model": ("arch", "depth", "plain", "shortcut", "bottleneck_stride", "zero_init_residual",
              "width", "dtype", "scan_blocks", "init_from", "block", "unit", "shortcut_variant",
              "shortcut_scale", "residual_scale", "gate_bias", "shortcut_dropout"),
    "data": ("pipeline", "source", "name", "path", "data_dir", "num_val_examples",
             "train_augment", "image_size", "eval_resize", "lighting_std", "normalize",
             "eval_crops", "multiscale_sizes", "on_corrupt", "synthetic_examples",
             "num_classes", "prefetch", "workers"),
    "optim": ("name", "lr", "lr_scaling", "base_batch_size", "momentum", "nesterov",
              "weight_decay", "decay_bn_and_bias", "schedule", "schedule_unit", "boundaries",
              "decay_factor", "warmup", "warmup_length", "warmup_lr", "label_smoothing"),
    "train": ("batch_size", "eval_batch_size", "num_steps", "bn_mode", "bn_group_size",
              "steps_per_dispatch", "log_every_steps", "eval_every_steps",
              "checkpoint_every_steps", "keep_checkpoints", "progress", "replicas"),
}

ENUMS: dict[str, tuple[Any, ...]] = {
    "model.arch": ("cifar", "imagenet"),
    "model.shortcut": ("A", "B", "C"),
    "model.bottleneck_stride": ("v1", "v1.5"),
    # 'auto': the family's block for the depth (ImageNet: Table 1's; CIFAR: basic, 6n+2).
    "model.block": ("auto", "basic", "bottleneck"),
    # He et al. 2016 ("Identity Mappings in Deep Residual Networks"), Fig. 4 / Table 2.
    "model.unit": ("post", "bn_after_add", "relu_before_add", "relu_preact", "preact"),
    # The same paper's Fig. 2 / Table 1 (its 1x1-conv shortcut is model.shortcut='C').
    "model.shortcut_variant": ("identity", "scale", "exclusive_gate", "shortcut_gate",
                               "dropout"),
    "model.dtype": ("float32", "bfloat16"),
    "data.pipeline": ("in_memory", "streaming"),
    "data.source": ("tar", "folder", "tfds", "synthetic"),
    "data.train_augment": ("pad_crop_flip", "scale", "inception", "none"),
    "data.normalize": ("per_pixel_mean", "per_channel", "channel_mean_scalar_std"),
    "data.eval_crops": ("center", "10crop", "multiscale"),
    "data.on_corrupt": ("error", "skip"),
    "optim.name": ("sgd", "lars"),
    "optim.lr_scaling": ("none", "linear"),
    "optim.schedule": ("piecewise", "cosine"),
    "optim.schedule_unit": ("steps", "epochs"),
    "optim.warmup": ("none", "linear", "constant"),
    "train.bn_mode": ("global", "per_device", "group"),
}

# What each data pipeline supports, a subset of ENUMS.
PIPELINE_ENUMS: dict[str, dict[str, tuple[Any, ...]]] = {
    "in_memory": {"data.source": ("synthetic", "tar", "folder", "tfds"),
                  "data.train_augment": ("pad_crop_flip", "none"),
                  "data.eval_crops": ("center",),
                  "data.normalize": ("per_pixel_mean", "per_channel")},
    # Streaming normalizes with constants: the mean colour and either each channel's std or
    # one scalar std (its mean): no mean image, which a random crop's mean would not show.
    "streaming": {"data.source": ("tfds", "folder", "tar"),
                  "data.train_augment": ("scale", "inception", "none"),
                  "data.normalize": ("per_channel", "channel_mean_scalar_std")},
}

# Fields a pipeline does not read: a recipe must leave them at the value that does nothing
# there (`config.validate` refuses any other, naming the field), so that no setting is
# silently ignored. field -> (test of (value, data section), the value it must have).
UNREAD: dict[str, dict[str, tuple[Callable[[Any, Any], bool], str]]] = {
    "in_memory": {
        "data.lighting_std": (lambda v, data: v == 0, "0 (PCA lighting is a streaming "
                              "augmentation)"),
        "data.eval_resize": (lambda v, data: v == data.image_size, "data.image_size (the "
                             "in-memory evaluation reads the stored images as they are)"),
        "data.workers": (lambda v, data: v in (-1, 0), "-1 or 0 (the in-memory pipeline "
                         "decodes its split once, in this process)"),
    },
    "streaming": {},
}

POSITIVE_INTS = ("train.batch_size", "train.eval_batch_size", "train.num_steps",
                 "train.bn_group_size", "train.steps_per_dispatch", "train.log_every_steps",
                 "train.eval_every_steps", "train.checkpoint_every_steps",
                 "train.keep_checkpoints", "model.width", "data.image_size", "data.prefetch",
                 "train.replicas")

# Numeric fields whose other values can only be mistakes: field -> (test, what it must be).
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
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
    "data.synthetic_examples": (lambda v: v > 0, "> 0"),
    "data.num_classes": (lambda v: v >= 0, ">= 0 (0: from the data)"),
    "data.eval_resize": (lambda v: v > 0, "> 0"),
    "model.shortcut_scale": (lambda v: 0 < v < float("inf"), "> 0 (finite)"),
    "model.residual_scale": (lambda v: 0 < v < float("inf"), "> 0 (finite)"),
    "model.gate_bias": (lambda v: abs(v) < float("inf"), "a finite number"),
    "model.shortcut_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "data.workers": (lambda v: isinstance(v, int) and v >= -1,
                     "an integer >= -1 (-1: one per CPU core; 0: decode in this process)"),
}

IMAGENET_DEPTHS = (18, 34, 50, 101, 152, 200)
IMAGENET_BOTTLENECK_FROM = 50  # Table 1 of the 2015 paper: 18 and 34 basic, 50+ bottleneck

# The unit and shortcut variants at the values that build the 2015 paper's nets: what every
# recipe starts from. The variant-specific numbers (scales, gate bias, dropout rate) act only
# with their variant; another value with another variant is refused (`variant_problem`).
VARIANT_DEFAULTS: dict[str, Any] = {
    "unit": "post", "shortcut_variant": "identity", "shortcut_scale": 1.0,
    "residual_scale": 1.0, "gate_bias": 0.0, "shortcut_dropout": 0.5}
_VARIANT_OF = {"shortcut_scale": ("scale",), "residual_scale": ("scale",),
               "gate_bias": ("exclusive_gate", "shortcut_gate"), "shortcut_dropout": ("dropout",)}

# Fields added after workdirs were first written, with the value that reproduces the older
# behaviour: `config.from_json` fills them in, so an older workdir still evaluates and resumes.
ADDED_FIELDS: dict[str, Any] = {"model.scan_blocks": False, "data.num_classes": 0,
                                "data.prefetch": 2, "model.init_from": "",
                                "train.replicas": 1, "data.workers": -1, "model.block": "auto",
                                **{f"model.{k}": v for k, v in VARIANT_DEFAULTS.items()}}


def resolve_block(arch: str, depth: int, block: str = "auto") -> str:
    """'auto' -> the family's block for `depth` (ImageNet: basic below 50 layers, else
    bottleneck; CIFAR: basic); 'basic' / 'bottleneck' as they are."""
    if block != "auto":
        return block
    return "bottleneck" if arch == "imagenet" and depth >= IMAGENET_BOTTLENECK_FROM else "basic"


def depth_problem(arch: str, depth: int, block: str = "auto") -> str | None:
    """Why (`arch`, `depth`, `block`) names no network of the papers, or None. The text names
    the fields (`depth=`, `block=`) and what they allow; callers prefix how they call them."""
    resolved = resolve_block(arch, depth, block)
    if arch == "imagenet":
        if depth not in IMAGENET_DEPTHS:
            return (f"depth={depth} is not an ImageNet ResNet; choose one of "
                    f"{list(IMAGENET_DEPTHS)}")
        if resolved != resolve_block(arch, depth):
            return (f"block={block!r} does not fit ImageNet depth {depth} (a "
                    f"{resolve_block(arch, depth)} net); allowed: 'auto' or "
                    f"{resolve_block(arch, depth)!r}")
        return None
    if resolved == "bottleneck" and (depth < 11 or (depth - 2) % 9):
        return (f"depth={depth} is not a CIFAR bottleneck ResNet depth; with block='bottleneck' "
                "depth must be 9n+2 with n >= 1 (11, 20, 29, 56, 110, 164, 1001, ...)")
    if resolved == "basic" and (depth < 8 or (depth - 2) % 6):
        return (f"depth={depth} is not a CIFAR ResNet depth; depth must be 6n+2 with n >= 1 "
                "(8, 14, 20, 32, 44, 56, 110, 1202, ...), or 9n+2 with block='bottleneck'")
    return None


def variant_problem(options: dict[str, Any]) -> str | None:
    """Why a model's unit and shortcut-variant options do not go together, or None.
    `options`: plain, zero_init_residual and the `VARIANT_DEFAULTS` fields (allowed values and
    ranges are checked before this). The text names the field and what is allowed."""
    variant = options["shortcut_variant"]
    if options["plain"] and variant != "identity":
        return (f"shortcut_variant={variant!r} with plain=True: a plain net has no shortcut "
                "to scale, gate or drop; allowed with plain: 'identity'")
    for field, variants in _VARIANT_OF.items():
        if variant not in variants and options[field] != VARIANT_DEFAULTS[field]:
            return (f"{field}={options[field]!r} acts only with shortcut_variant in "
                    f"{list(variants)}, not {variant!r}; leave it at "
                    f"{VARIANT_DEFAULTS[field]!r} or choose that variant")
    if options["zero_init_residual"] and options["unit"] in ("bn_after_add", "preact"):
        return (f"zero_init_residual=True with unit={options['unit']!r}: its residual branch "
                "does not end in a BN of its own (zeroing would silence "
                f"{'the whole unit' if options['unit'] == 'bn_after_add' else 'nothing'}); "
                "allowed with units 'post', 'relu_before_add', 'relu_preact'")
    return None


def range_problem(field: str, value: Any, name: str | None = None) -> str | None:
    """'name=value must be ...' when `value` is not a number in RANGES[field], else None."""
    ok, what = RANGES[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
        return f"{name or field}={value!r} must be {what}"
    return None

# Fields removed since, and why: `config.validate` refuses a recipe that still sets one,
# `config.from_json` drops it from an older workdir's config.
REMOVED_FIELDS: dict[str, str] = {
    "data.shuffle_buffer": "it was read nowhere: the streaming order is a seeded permutation "
                           "of each epoch (resnet_jax/data/order.py), no shuffle buffer",
}

# Values renamed since: (field, old value, the pipeline it applied to) -> the new value, which
# `config.from_json` puts in an older workdir's config.
RENAMED_VALUES: dict[tuple[str, Any, str], Any] = {
    # on the streaming path it was always the mean colour and one scalar std
    ("data.normalize", "per_pixel_mean", "streaming"): "channel_mean_scalar_std",
}


def check_choice(field: str, value: Any, allowed: tuple | None = None) -> None:
    """Raises ValueError naming `field` and its allowed values (ENUMS[field] by default)."""
    allowed = ENUMS[field] if allowed is None else allowed
    if value not in allowed:
        raise ValueError(f"config field {field}={value!r} is not allowed; "
                         f"allowed values: {', '.join(map(str, allowed))}")


def check_data(data: Any) -> None:
    """The `data` section's allowed values, with what its pipeline supports (`data` is a
    ConfigDict or any object with the fields as attributes)."""
    for field in (f"data.{name}" for name in FIELDS["data"]):
        if field in ENUMS:
            check_choice(field, getattr(data, field.split(".", 1)[1]))
    for field, allowed in PIPELINE_ENUMS[data.pipeline].items():
        value = getattr(data, field.split(".", 1)[1])
        if value not in allowed:
            raise ValueError(f"config field {field}={value!r} is not supported by "
                             f"data.pipeline={data.pipeline!r}; allowed values: "
                             f"{', '.join(map(str, allowed))}")


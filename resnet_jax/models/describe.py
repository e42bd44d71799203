"""`resnet-jax describe NAME`: parameters, multiply-adds and stage shapes of a model."""
from __future__ import annotations

import argparse
import json
from typing import Any

from resnet_jax import schema
from resnet_jax.models.counting import (abstract_variables, count_bn_params, count_macs,
                                        count_params, stage_shapes)
from resnet_jax.models.resnet import create_model, parse_model_name


def describe(name: str, image_size: int | None = None, **overrides: Any) -> dict[str, Any]:
    """Everything `describe` prints, as a dict (JSON-ready).

    Keys: name, image_size, params, bn_params (BN scales and shifts among them; the 2016
    paper's sizes count the rest: ResNet-1001 10.2M), macs, stages ({stage: [H, W, C]}),
    output_shape, options. image_size defaults to 224 for ImageNet nets and 32 for CIFAR nets.
    """
    arch, _, _ = parse_model_name(name)
    if image_size is None:
        image_size = 32 if arch == "cifar" else 224
    model = create_model(name, **overrides)
    shape = (1, image_size, image_size, 3)
    params = abstract_variables(model, shape)["params"]
    stages = stage_shapes(model, shape)
    order = ["stem"] + sorted(k for k in stages if k != "stem")
    return {
        "name": name,
        "image_size": image_size,
        "params": count_params(params),
        "bn_params": count_bn_params(params),
        "macs": count_macs(model, shape),
        "stages": {k: list(stages[k][1:]) for k in order},
        "output_shape": [1, model.num_classes],
        "options": {"shortcut": model.shortcut, "plain": model.plain, "block": model.block,
                    "bottleneck_stride": model.bottleneck_stride, "width": model.width,
                    **{k: getattr(model, k) for k in schema.VARIANT_DEFAULTS}},
    }


def _variant_text(opts: dict[str, Any]) -> str:
    """', unit preact, exclusive_gate (gate_bias -6.0)': what differs from the 2015 paper."""
    parts = [f"unit {opts['unit']}"] if opts["unit"] != "post" else []
    variant = opts["shortcut_variant"]
    if variant != "identity":
        numbers = [f"{k} {opts[k]}" for k, default in schema.VARIANT_DEFAULTS.items()
                   if k not in ("unit", "shortcut_variant") and (opts[k] != default or (
                       variant == "dropout" and k == "shortcut_dropout"))]
        parts.append(variant + (f" ({', '.join(numbers)})" if numbers else ""))
    return "".join(f", {p}" for p in parts)


def format_text(info: dict[str, Any]) -> str:
    opts = info["options"]
    rest = info["params"] - info["bn_params"]
    lines = [
        f"{info['name']}  ({opts['block']} blocks, shortcut {opts['shortcut']}"
        f"{', plain' if opts['plain'] else ''}"
        f"{', stride on ' + opts['bottleneck_stride'] if opts['block'] == 'bottleneck' else ''}"
        f"{_variant_text(opts)})",
        f"  input          {info['image_size']}x{info['image_size']}x3",
        f"  parameters     {info['params']:,}  (conv and fc {rest:,}; BN {info['bn_params']:,})",
        f"  multiply-adds  {info['macs']:,}  ({info['macs'] / 1e9:.3f} G)",
    ]
    for stage, (h, w, c) in info["stages"].items():
        lines.append(f"  {stage:<14} {h}x{w}x{c}")
    lines.append(f"  output         {info['output_shape'][1]} logits")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    enums = schema.ENUMS
    parser.add_argument("name", help="e.g. resnet50, plain34, cifar_resnet110, cifar_plain56, "
                        "cifar_resnet164 --block bottleneck")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input height = width (default 224 ImageNet, 32 CIFAR)")
    parser.add_argument("--shortcut", choices=enums["model.shortcut"], default=None)
    parser.add_argument("--bottleneck-stride", choices=enums["model.bottleneck_stride"],
                        default=None)
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--block", choices=enums["model.block"], default=None,
                        help="CIFAR nets: basic (6n+2) or bottleneck (9n+2)")
    parser.add_argument("--unit", choices=enums["model.unit"], default=None)
    parser.add_argument("--shortcut-variant", choices=enums["model.shortcut_variant"],
                        default=None)
    for field in ("shortcut_scale", "residual_scale", "gate_bias", "shortcut_dropout"):
        parser.add_argument("--" + field.replace("_", "-"), type=float, default=None)
    parser.add_argument("--scan-blocks", action="store_true",
                        help="count a deep net (ResNet-1001, -1202) scanned: the same counts, "
                             "traced in seconds")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    names = ("shortcut", "bottleneck_stride", "num_classes", "width", "block",
             *schema.VARIANT_DEFAULTS)
    overrides = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if args.scan_blocks:
        overrides["scan_blocks"] = True
    info = describe(args.name, args.image_size, **overrides)
    print(json.dumps(info, indent=2) if args.json else format_text(info))
    return 0

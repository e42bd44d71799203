"""`resnet-jax describe NAME`: parameters, multiply-adds and stage shapes of a model."""
from __future__ import annotations

import argparse
import json
from typing import Any

from resnet_jax.models.counting import abstract_variables, count_macs, count_params, stage_shapes
from resnet_jax.models.resnet import create_model, parse_model_name


def describe(name: str, image_size: int | None = None, **overrides: Any) -> dict[str, Any]:
    """Everything `describe` prints, as a dict (JSON-ready).

    Keys: name, image_size, params, macs, stages ({stage: [H, W, C]}), output_shape, options.
    image_size defaults to 224 for ImageNet nets and 32 for CIFAR nets.
    """
    arch, _, _ = parse_model_name(name)
    if image_size is None:
        image_size = 32 if arch == "cifar" else 224
    model = create_model(name, **overrides)
    shape = (1, image_size, image_size, 3)
    variables = abstract_variables(model, shape)
    stages = stage_shapes(model, shape)
    order = ["stem"] + sorted(k for k in stages if k != "stem")
    return {
        "name": name,
        "image_size": image_size,
        "params": count_params(variables["params"]),
        "macs": count_macs(model, shape),
        "stages": {k: list(stages[k][1:]) for k in order},
        "output_shape": [1, model.num_classes],
        "options": {"shortcut": model.shortcut, "plain": model.plain, "block": model.block,
                    "bottleneck_stride": model.bottleneck_stride, "width": model.width},
    }


def format_text(info: dict[str, Any]) -> str:
    opts = info["options"]
    lines = [
        f"{info['name']}  ({opts['block']} blocks, shortcut {opts['shortcut']}"
        f"{', plain' if opts['plain'] else ''}"
        f"{', stride on ' + opts['bottleneck_stride'] if opts['block'] == 'bottleneck' else ''})",
        f"  input          {info['image_size']}x{info['image_size']}x3",
        f"  parameters     {info['params']:,}",
        f"  multiply-adds  {info['macs']:,}  ({info['macs'] / 1e9:.3f} G)",
    ]
    for stage, (h, w, c) in info["stages"].items():
        lines.append(f"  {stage:<14} {h}x{w}x{c}")
    lines.append(f"  output         {info['output_shape'][1]} logits")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="e.g. resnet50, plain34, cifar_resnet110, cifar_plain56")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input height = width (default 224 ImageNet, 32 CIFAR)")
    parser.add_argument("--shortcut", choices=["A", "B", "C"], default=None)
    parser.add_argument("--bottleneck-stride", choices=["v1", "v1.5"], default=None)
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in {
        "shortcut": args.shortcut, "bottleneck_stride": args.bottleneck_stride,
        "num_classes": args.num_classes, "width": args.width}.items() if v is not None}
    info = describe(args.name, args.image_size, **overrides)
    print(json.dumps(info, indent=2) if args.json else format_text(info))
    return 0

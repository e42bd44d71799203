"""`resnet-jax convert`, `export` and `predict` (dispatched by resnet_jax/cli.py).

    resnet-jax convert --from torchvision resnet50-0676ba61.safetensors --model resnet50 --out r50
    resnet-jax export --workdir runs/r110 --out r110 [--checkpoint newest|best] [--replica I]
    resnet-jax export --model r50 --to torchvision --out resnet50.safetensors
    resnet-jax predict --model r50 cat.jpg dog.png [--json] [--top-k 5]
"""
from __future__ import annotations

import argparse
import json
import sys

from resnet_jax.data.preprocess import INTERPOLATIONS
from resnet_jax.interop import preprocess as prep_lib


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="torchvision / timm weights: .safetensors, or .pth (needs "
                                     "torch; read with torch.load(weights_only=True))")
    parser.add_argument("--from", dest="source", required=True, choices=("torchvision", "timm"),
                        help="where the weights come from (same key layout for ResNet-18..152)")
    parser.add_argument("--model", required=True,
                        help="resnet18 | resnet34 | resnet50 | resnet101 | resnet152")
    parser.add_argument("--out", required=True, help="model directory to write (new or empty)")
    _add_overwrite(parser)
    parser.add_argument("--width", type=int,
                        help="first-stage width if not the standard 64 (a narrowed net)")
    parser.add_argument("--num-classes", type=int,
                        help="classes (default: the rows of fc.weight in the file)")
    parser.add_argument("--class-names", help="text file, one class name per line (default: "
                                              "the ImageNet names for 1000 classes)")
    parser.add_argument("--resize", type=int, default=256,
                        help="eval resize, shorter side (torchvision V1: 256, V2 weights: 232)")
    parser.add_argument("--crop", type=int, default=224, help="eval centre crop (224)")
    parser.add_argument("--interpolation", choices=INTERPOLATIONS, default="bilinear",
                        help="resize filter (timm's a1/a2/a3 weights: bicubic)")


def _add_overwrite(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="replace what --out holds (a model directory's files and its "
                             "eval/ results; else a non-empty --out is refused)")


def _check_out(args: argparse.Namespace) -> None:
    """Refuses an --out that is taken before anything is read or computed."""
    import os
    from resnet_jax.interop import bundle
    if getattr(args, "to", "model") == "torchvision":
        if os.path.exists(args.out) and not args.overwrite:
            raise ValueError(f"--out {args.out} exists; pass --overwrite to replace it")
        return
    bundle.check_out(args.out, args.overwrite)


def run_convert(args: argparse.Namespace) -> int:
    from resnet_jax.interop import torch_import
    _check_out(args)
    overrides = {k: v for k, v in (("width", args.width), ("num_classes", args.num_classes))
                 if v is not None}
    names = _read_names(args.class_names) if args.class_names else None
    prep = prep_lib.torchvision_preprocessing(args.resize, args.crop, args.interpolation)
    loaded = torch_import.convert(args.file, args.model, args.source, None, names, prep,
                                  **overrides)
    loaded.save(args.out, overwrite=args.overwrite)
    _summary(loaded, args.out, f"{args.source} weights {args.file}")
    return 0


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", help="a training run (resnet-jax train)")
    src.add_argument("--model", help="a model directory (convert / export)")
    parser.add_argument("--out", required=True,
                        help="model directory (new or empty), or a .safetensors file with --to "
                             "torchvision")
    _add_overwrite(parser)
    parser.add_argument("--checkpoint", choices=("newest", "best"), default="newest",
                        help="with --workdir: the newest checkpoint or the best (lowest "
                             "validation error)")
    parser.add_argument("--replica", type=int,
                        help="with --workdir of a run of several replicas (train.replicas): "
                             "which one, 0 .. N-1")
    parser.add_argument("--to", choices=("model", "torchvision"), default="model",
                        help="model: a model directory (resnet_jax.load); torchvision: a "
                             "torchvision ResNet state dict (.safetensors)")


def run_export(args: argparse.Namespace) -> int:
    from resnet_jax.interop import bundle, torch_import
    if args.replica is not None and not args.workdir:
        raise ValueError("--replica applies to --workdir only")
    _check_out(args)
    if args.workdir:
        from resnet_jax.interop import workdir
        loaded = workdir.export_workdir(args.workdir, None, args.checkpoint,
                                        replica=args.replica)
        which = f"replica {args.replica}, " if args.replica is not None else ""
        what = (f"{args.workdir} ({which}{args.checkpoint} checkpoint, step "
                f"{loaded.source['step']})")
    else:
        loaded, what = bundle.load(args.model), args.model
    if args.to == "torchvision":
        state = torch_import.export_torchvision(loaded, args.out)
        print(f"{loaded.name} from {what} -> {args.out} (torchvision state dict, "
              f"{len(state)} tensors)")
        return 0
    loaded.save(args.out, overwrite=args.overwrite)
    _summary(loaded, args.out, what)
    return 0


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a model directory (convert / export)")
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    parser.add_argument("--top-k", type=int, default=5, help="classes per image (5)")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per image: {file, top: [{index, class, prob}]} "
                             "or {file, error}")
    parser.add_argument("--batch-size", type=int, default=32)


def run_predict(args: argparse.Namespace) -> int:
    from resnet_jax.interop import bundle, predict
    if args.top_k < 1 or args.batch_size < 1:
        raise ValueError("--top-k and --batch-size must be >= 1")
    loaded = bundle.load(args.model)
    failed = 0
    for result in predict.predict_files(loaded, args.images, args.top_k, args.batch_size):
        if "error" in result:
            failed += 1
            print(f"resnet-jax predict: {predict.format_line(result)}", file=sys.stderr)
        if args.json:
            print(json.dumps(result), flush=True)
        elif "error" not in result:
            print(predict.format_line(result), flush=True)
    return 1 if failed else 0


def _read_names(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\r\n") for line in f if line.strip()]
    except OSError as err:
        raise ValueError(f"--class-names {path}: {err.strerror}") from None


def _summary(loaded, out: str, what: str) -> None:
    from resnet_jax.models import count_params
    m, p = loaded.model, loaded.preprocessing
    variant = f", {m.bottleneck_stride}" if m.block == "bottleneck" else ""
    print(f"{loaded.name} (width {m.width}{variant}, {m.num_classes} classes, "
          f"{count_params(loaded.variables['params']):,} params) from {what} -> {out}; "
          f"preprocessing: resize {p.resize}, crop {p.crop}, {p.style} style")

"""`resnet-jax train` and `resnet-jax eval` (dispatched by resnet_jax/cli.py).

    resnet-jax train --config configs/cifar10.py:depth=110,shortcut=B --workdir W \
        [--config.optim.lr=0.2 ...] [--distributed | --coordinator H:P --num-processes N
        --process-id I] [--cpu-devices K]
    resnet-jax eval (--workdir W [--checkpoint newest|best] [--replica I] | --model DIR)
        [--data SOURCE] [--split SPLIT] [--crops center|10crop|multiscale] [--batch-size N]
        [--json]

`train` on a workdir that holds checkpoints resumes from the newest one. Multi-process:
`--distributed` lets jax.distributed.initialize() find the cluster (TPU pods, SLURM);
`--coordinator/--num-processes/--process-id` set it explicitly (launch/local.sh).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from resnet_jax import schema

CROPS = schema.ENUMS["data.eval_crops"]


def _add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("processes and devices")
    group.add_argument("--distributed", action="store_true",
                       help="call jax.distributed.initialize() with cluster auto-detection")
    group.add_argument("--coordinator", help="host:port of process 0 (explicit multi-process)")
    group.add_argument("--num-processes", type=int, help="number of processes (with --coordinator)")
    group.add_argument("--process-id", type=int, help="this process's index (with --coordinator)")
    group.add_argument("--cpu-devices", type=int,
                       help="give this process K CPU devices (tests, local multi-process runs)")


def init_runtime(args: argparse.Namespace) -> None:
    """Sets CPU device count and joins jax.distributed; must run before any JAX computation."""
    import jax
    if args.cpu_devices:
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    if args.coordinator:
        if args.num_processes is None or args.process_id is None:
            raise ValueError("--coordinator needs --num-processes and --process-id")
        # Short timeouts so a dead peer fails the run in seconds, not minutes.
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                                   initialization_timeout=120, heartbeat_timeout_seconds=30)
    elif args.distributed:
        jax.distributed.initialize()


def config_overrides(extra: Sequence[str]) -> list[str]:
    """The `--config.a.b=v` (or `--config.a.b v`) arguments argparse left over; others refused."""
    out, items, i = [], list(extra), 0
    while i < len(items):
        item = items[i]
        if not item.startswith("--config."):
            raise ValueError(f"unrecognized argument {item!r} (config fields are set with "
                             "--config.section.field=value)")
        if "=" not in item:
            if i + 1 >= len(items):
                raise ValueError(f"{item}: missing value")
            item, i = f"{item}={items[i + 1]}", i + 1
        out.append(item)
        i += 1
    return out


TRAIN_EPILOG = """config:
  --config FILE.py[:ARGS]  a recipe and its arguments, e.g. configs/cifar10.py:depth=110,plain=true
                           (each recipe's docstring lists its arguments)
  --config.SECTION.FIELD=VALUE  override any field after the recipe, e.g.
                           --config.optim.lr=0.05 --config.train.num_steps=2000
                           --config.data.path=../shared/data/cifar10-train.tar.gz
                           (a bad field or value is one error naming the allowed values;
                           all fields: docs/ARCHITECTURE.md "Config schema")"""


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Train a config in a workdir, or resume it: the same command again "
                          "continues from the newest checkpoint.")
    parser.epilog = TRAIN_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--config", required=True,
                        help="recipe file and its argument: configs/cifar10.py:depth=110,shortcut=B")
    parser.add_argument("--workdir", required=True,
                        help="run directory (local or gs://); an existing one is resumed")
    _add_runtime_arguments(parser)


def run_train(args: argparse.Namespace) -> int:
    from resnet_jax.config import load_config
    config = load_config(args.config, config_overrides(getattr(args, "extra", ())))
    init_runtime(args)
    from resnet_jax.train.loop import train_and_evaluate
    # A NaN, a busy workdir, a failed save: one line and an exit code each (resnet_jax/cli.py).
    # The run's last line says how it ended; results.json has the numbers.
    train_and_evaluate(config, args.workdir)
    return 0


EVAL_EPILOG = """examples:
  resnet-jax eval --workdir runs/r20                      the run's own validation split
  resnet-jax eval --workdir runs/r20 --data tfds:cifar10  CIFAR-10 test (tfds, prepared offline)
  resnet-jax eval --workdir runs/r20 --data cifar10-test.tar.gz --split test
  resnet-jax eval --model r50 --data tfds:imagenet2012 --crops 10crop
  resnet-jax eval --model r50 --data tfds:imagenet2012_real    (ReaL labels)

The result is also written to <workdir or model dir>/eval/<source>-<split>-<crops>.json."""


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Score a training run or a model directory: on the run's own "
                          "validation split,\nor on any labelled split with --data.")
    parser.epilog = EVAL_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--workdir", help="a training run (resnet-jax train)")
    parser.add_argument("--model", help="a model directory (resnet-jax convert / export); "
                                        "needs --data")
    parser.add_argument("--checkpoint", choices=("newest", "best"),
                        help="with --workdir: the newest checkpoint (default) or the best "
                             "(lowest validation error)")
    parser.add_argument("--data", help="tfds:NAME, a .tar/.tar.gz of split/<class>/<image>, or "
                                       "a folder (<split>/<class>/<image> or <class>/<image>)")
    parser.add_argument("--split", help="split of --data (default: validation, val or test, "
                                        "the first there; tfds slices such as "
                                        "'validation[:1000]' work)")
    parser.add_argument("--crops", choices=CROPS,
                        help="test views (default: the run's data.eval_crops; with --data: "
                             "center)")
    parser.add_argument("--scales", help="multiscale: shorter sides, e.g. 224,256,384,480,640 "
                                         "(default: the run's data.multiscale_sizes, else the "
                                         "paper's scaled to the model's crop)")
    parser.add_argument("--batch-size", type=int,
                        help="examples per batch (with --data: 64, rounded up to a multiple "
                             "of the devices)")
    parser.add_argument("--data-dir", help="tfds data_dir for tfds:NAME (default: tfds's)")
    parser.add_argument("--workers", type=int, help="decoding threads (default: CPU cores)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--replica", type=int,
                        help="with --workdir of a run of several replicas (train.replicas): "
                             "which one, 0 .. N-1")
    _add_runtime_arguments(parser)


def run_eval(args: argparse.Namespace) -> int:
    if getattr(args, "extra", None):
        raise ValueError(f"unrecognized arguments: {' '.join(args.extra)}")
    scales = None
    if args.scales:
        try:
            scales = tuple(int(s) for s in args.scales.replace("/", ",").split(","))
        except ValueError:
            raise ValueError(f"--scales {args.scales!r}: comma-separated integers") from None
    init_runtime(args)
    import jax
    from resnet_jax.interop import eval_record, evaluate
    result = evaluate.evaluate(
        workdir=args.workdir, model=args.model, checkpoint=args.checkpoint, data=args.data,
        split=args.split, crops=args.crops, scales=scales, batch_size=args.batch_size,
        data_dir=args.data_dir, workers=args.workers, replica=args.replica)
    if jax.process_index() == 0:
        print(json.dumps(result) if args.json else eval_record.format_line(result))
    return 0


def main_for_tests(argv: Sequence[str]) -> int:  # pragma: no cover - convenience
    from resnet_jax.cli import main
    return main(list(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main_for_tests(sys.argv[1:]))

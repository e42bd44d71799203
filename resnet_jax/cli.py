"""`resnet-jax` command line: a thin dispatcher. Each command lives beside its code and exposes
an `add_arguments(parser)` and a `run(args) -> int` function (docs/ARCHITECTURE.md "Runs");
modules are imported only when their command runs, so `describe` does not load the trainer.

Arguments argparse does not know are handed to the command as `args.extra` (train takes the
`--config.a.b=value` overrides from there). Failures a user can act on are one line on stderr
with an exit code per kind (`resnet_jax.errors`, README "When something fails"): 1 a NaN
stopped training, 2 bad input (`ValueError`), 3 the workdir is in use by another run, 4
storage (a save or a run file failed, `OSError`), 130 interrupted. Anything else is a bug: a
traceback (RESNET_JAX_TRACEBACK=1 shows one for those too).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Sequence

from resnet_jax import errors
from resnet_jax.data.tf_import import quiet_native_logs

DESCRIPTION = ("Deep Residual Learning (He et al., 2015) in JAX/Flax: train, evaluate, sweep "
               "and take home ResNets.")
EPILOG = """examples:
  resnet-jax train --config configs/cifar10.py:depth=20 --workdir runs/r20
  resnet-jax eval --workdir runs/r20
  resnet-jax sweep configs/sweeps/cifar10_depth_plain.py --workdir runs/fig6
  resnet-jax COMMAND --help   (each command's own options)"""

# name: (module, add_arguments function, run function, help)
COMMANDS = {
    "train": ("resnet_jax.train.commands", "add_train_arguments", "run_train",
              "train (or resume) a config in a workdir"),
    "eval": ("resnet_jax.train.commands", "add_eval_arguments", "run_eval",
             "score a run or a model directory on its validation split or any test set "
             "(--data)"),
    "describe": ("resnet_jax.models.describe", "add_arguments", "run",
                 "a model's layers, parameters and multiply-adds"),
    "sweep": ("resnet_jax.sweeps.run", "add_arguments", "run", "run a sweep of configs"),
    "report": ("resnet_jax.sweeps.report", "add_arguments", "run", "tables and plots of a sweep"),
    "analyze": ("resnet_jax.sweeps.analysis", "add_arguments", "run",
                "layer response analysis (paper Fig. 7)"),
    "convert": ("resnet_jax.interop.commands", "add_convert_arguments", "run_convert",
                "import torchvision / timm ResNet weights as a model directory"),
    "export": ("resnet_jax.interop.commands", "add_export_arguments", "run_export",
               "a training run (or model directory) as a model directory or torchvision file"),
    "predict": ("resnet_jax.interop.commands", "add_predict_arguments", "run_predict",
                "top-5 classes of image files with a model directory"),
    "prepare": ("resnet_jax.data.prepare", "add_arguments", "run",
                "an image folder or tar, or a TFRecord tfds dataset, as tfds ArrayRecord"),
}


def build_parser(command: str | None) -> argparse.ArgumentParser:
    """The top parser; only the chosen command's module is imported for its arguments."""
    parser = argparse.ArgumentParser(
        prog="resnet-jax", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, add, _, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text)
        if name == command:
            getattr(importlib.import_module(module), add)(sp)
    return parser


class _OrbaxErrorsFilter(logging.Filter):
    """Drops orbax's own ERROR records (a failed save logs each of its threads' tracebacks,
    dozens of lines): the failure reaches the caller, which reports it in one line. Also its
    warnings that checkpoints are opened read-only: what every reader (eval, export) asks
    for."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "orbax" not in record.pathname:
            return True
        message = record.getMessage()
        return (record.levelno < logging.ERROR
                and "read only" not in message and "read_only=True" not in message)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Before JAX or TensorFlow load: their C++ INFO/WARNING lines stay off the console.
    quiet_native_logs()
    if not os.environ.get("RESNET_JAX_TRACEBACK"):
        from absl import logging as absl_logging  # its logger finds orbax as the caller
        absl_logger = absl_logging.get_absl_logger()
        if not any(isinstance(f, _OrbaxErrorsFilter) for f in absl_logger.filters):
            absl_logger.addFilter(_OrbaxErrorsFilter())
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args, extra = parser.parse_known_args(argv)
    args.extra = extra
    module, _, run, _ = COMMANDS[args.command]
    if extra and args.command not in ("train", "eval"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(getattr(importlib.import_module(module), run)(args) or 0)
    except KeyboardInterrupt:
        print(f"\nresnet-jax {args.command}: interrupted (Ctrl-C); nothing was saved",
              file=sys.stderr)
        return errors.EXIT_INTERRUPTED
    except (ValueError, FloatingPointError, errors.WorkdirBusyError, errors.StorageError,
            OSError) as err:
        if os.environ.get("RESNET_JAX_TRACEBACK"):
            raise
        print(f"resnet-jax {args.command}: error: {err}", file=sys.stderr)
        return exit_code(err)


def exit_code(err: BaseException) -> int:
    """The exit code of a failure (module docstring)."""
    if isinstance(err, FloatingPointError):
        return errors.EXIT_NON_FINITE
    if isinstance(err, errors.WorkdirBusyError):
        return errors.EXIT_BUSY
    if isinstance(err, (errors.StorageError, OSError)):
        return errors.EXIT_STORAGE
    return errors.EXIT_BAD_INPUT


def console() -> None:
    """The `resnet-jax` command: `main`, then exit. A run interrupted by Ctrl-C before its
    loop (while the model compiles, say) ends with `os._exit`: the interpreter's teardown
    under XLA's still-running threads segfaulted (exit 139 instead of 130) in about half of
    such interrupts. By then everything was closed and the lease released."""
    code = main()
    if code == errors.EXIT_INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console()

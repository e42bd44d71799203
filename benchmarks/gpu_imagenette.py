"""The ImageNet path on real photographs, on an accelerator (shared/GPU.md item 1): the
imagenette recipe (configs/imagenette.py: the paper's scale augmentation, grain, no
TensorFlow) for ResNet-18 and ResNet-50 at 224.

1. Throughput, real vs synthetic input in the same process: the training step fed by the
   streaming pipeline (decode + augment in `--workers` processes, the loop's own feed thread)
   against the same step fed one fixed host batch through the same feed (so the input is the
   only difference). Is the input the bottleneck?
2. ResNet-18 trained for about `--train-seconds` (default 180; steps from the measured rate, so
   the whole script fits ~8 minutes with three compilations), then top-1
   error on the seeded held-out part, through `train_and_evaluate` (the CLI's path).

    python benchmarks/gpu_imagenette.py --data _data/imagenette-224-train.tar --out $OUT
    python benchmarks/gpu_imagenette.py --smoke     # CPU, a few steps: checks it runs

Writes `$OUT/gpu_imagenette.json` and prints one line per figure. Run through
benchmarks/gpu_imagenette.sh on the device (it installs the carried wheels first).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def config_for(depth: int, args, steps: int, batch: int):
    from resnet_jax.config import load_config
    spec = (f"{ROOT}/configs/imagenette.py:depth={depth},size={args.size},steps={steps},"
            f"batch={batch},data={args.data},workers={args.workers},val={args.val}")
    return load_config(spec, [f"--config.model.dtype={args.dtype}",
                              "--config.train.progress=false"])


class Fixed:
    """A pipeline stand-in whose every chunk is the real pipeline's first chunk."""

    def __init__(self, chunk):
        self.chunk = chunk

    def train_chunk(self, step, k):
        return self.chunk


def rates(depth: int, args) -> dict:
    """images/s of the training step fed real vs synthetic (one fixed batch) input."""
    import jax

    from resnet_jax.train import dispatch, feed
    from resnet_jax.train import run as run_lib
    config = config_for(depth, args, args.steps + args.warmup, args.batch)
    run = run_lib.build(config)
    state, rng = run_lib.fresh_state(run)
    train_fn = dispatch.make_train_fn(run.model, run.tx, run.mesh,
                                      preprocess=run.pipeline.device_preprocess,
                                      label_smoothing=config.optim.label_smoothing)
    out = {}
    try:
        for name, source in (("real", run.pipeline),
                             ("synthetic", Fixed(run.pipeline.train_chunk(0, 1)))):
            chunks = feed.device_chunks(source, run.mesh, 0, config.train, ahead=2)
            started = None
            for i, chunk in enumerate(chunks):
                if i == args.warmup:
                    jax.block_until_ready(state)
                    started = time.perf_counter()
                state, metrics = train_fn(state, chunk.data, rng)
            jax.block_until_ready(state)
            chunks.close()
            out[name] = args.steps * args.batch / (time.perf_counter() - started)
            print(f"resnet{depth} {args.dtype} batch {args.batch}: {name} input "
                  f"{out[name]:,.0f} images/s", flush=True)
    finally:
        run.pipeline.close()
    out["real/synthetic"] = out["real"] / out["synthetic"]
    return out


def train(args, images_per_s: float) -> dict:
    """ResNet-18 for about args.train_seconds at the measured rate; held-out top-1 error."""
    from resnet_jax.train import loop
    steps = max(10, int(args.train_seconds * images_per_s / args.batch))
    config = config_for(18, args, steps, args.batch)
    workdir = tempfile.mkdtemp(prefix="imagenette-r18-")
    started = time.perf_counter()
    results = loop.train_and_evaluate(config, workdir)
    wall = time.perf_counter() - started
    held_out = config.data.num_val_examples
    out = {"steps": steps, "batch": args.batch, "seconds": wall,
           "final": results["final"], "best": results["best"], "workdir": workdir}
    print(f"resnet18 trained {steps} steps (batch {args.batch}, {wall:.0f} s with compilation "
          f"and evaluations): held-out top-1 error {results['final']['top1_error']:.2f}% "
          f"({held_out} images held out)", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data",
                                                  "imagenette-224-train.tar"))
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--workers", type=int, default=-1)
    p.add_argument("--val", type=int, default=947)
    p.add_argument("--steps", type=int, default=40, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--depths", type=int, nargs="+", default=[18, 50])
    p.add_argument("--train-seconds", type=float, default=180)
    p.add_argument("--smoke", action="store_true", help="CPU: tiny sizes, a few steps")
    args = p.parse_args()
    if args.smoke:
        args.size, args.batch, args.steps, args.warmup = 32, 8, 2, 1
        args.depths, args.train_seconds, args.dtype, args.val = [18], 1, "float32", 947
    import jax
    result = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
              "date": time.strftime("%Y-%m-%d"), "args": vars(args)}
    for depth in args.depths:
        result[f"resnet{depth}"] = rates(depth, args)
    result["train_resnet18"] = train(args, result["resnet18"]["real"])
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_imagenette.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

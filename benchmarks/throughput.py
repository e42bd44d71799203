"""Training throughput of this codebase's step against a minimal Flax baseline, in one process.

    python benchmarks/throughput.py --model resnet50 --batch 256 --dtype bfloat16
    python benchmarks/throughput.py --model cifar_resnet20 --batch 128 --steps-per-dispatch 100
    python benchmarks/throughput.py --model cifar_resnet20 --batch 128 --steps-per-dispatch 100 \
        --replicas 5                                   # 5 seeds as one program vs 1
    python benchmarks/throughput.py --smoke            # CI: tiny, CPU, checks it runs
    python benchmarks/throughput.py --smoke --replicas 2

Synthetic data already on the device; SGD momentum 0.9 with weight decay 1e-4; BN in train
mode. Prints images/s, ms/step, MFU (from the exact multiply-add count: 3 x 2 x MACs per image
for forward + backward), peak device memory, and the baseline measured in the same run with
the ratio. Baselines: ImageNet nets -> `flax_reference.py` (flax examples/imagenet style, one
step per dispatch); CIFAR nets -> this codebase's step with one step per dispatch in float32;
with `--replicas N` (N nets of different seeds trained as one program, `train.replicas`) ->
the same step with one replica, and the ratio is the time of N against the time of one
(issue 19's goal on an H100: 5 replicas in at most 1.5x the time of one).
Timings belong here, never in tests.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

# Peak dense matrix rates (TFLOP/s) by device kind, for MFU; bf16 and tf32 (float32 convs on
# tensor cores). Datasheet figures for the SXM parts; override with --peak-tflops.
PEAK_TFLOPS = {"H100": {"bfloat16": 989.0, "float32": 494.0},
               "H200": {"bfloat16": 989.0, "float32": 494.0},
               "A100": {"bfloat16": 312.0, "float32": 156.0}}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--image-size", type=int, default=None, help="224 ImageNet, 32 CIFAR")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--steps", type=int, default=60, help="timed steps")
    p.add_argument("--warmup-steps", type=int, default=None, help="default: 2 dispatches")
    p.add_argument("--steps-per-dispatch", type=int, default=1)
    p.add_argument("--bottleneck-stride", default="v1.5", choices=["v1", "v1.5"],
                   help="v1.5 = what the flax baseline and torchvision run")
    p.add_argument("--block", default="auto", choices=["auto", "basic", "bottleneck"],
                   help="CIFAR nets: bottleneck = 9n+2 (cifar_resnet164, cifar_resnet1001)")
    p.add_argument("--unit", default="post",
                   help="the 2016 paper's unit variant (post, preact, ...)")
    p.add_argument("--scan-blocks", action="store_true",
                   help="identical blocks of a stage as one nn.scan (compiles one per stage)")
    p.add_argument("--baseline", default="auto", choices=["auto", "none"])
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--xla-flags", default="", help="appended to XLA_FLAGS before jax starts")
    p.add_argument("--json", default="", help="also append the result as a JSON line here")
    p.add_argument("--replicas", type=int, default=1,
                   help="N > 1: N replicas in one program, against one in the same process")
    p.add_argument("--replica-mode", default="vmap", choices=["vmap", "sequential"],
                   help="how the N replicas step (resnet_jax.train.dispatch): all at once, "
                        "or one after the other (the CPU default)")
    p.add_argument("--smoke", action="store_true", help="tiny CPU run for CI")
    args = p.parse_args(argv)
    if args.replicas < 1:
        p.error(f"--replicas {args.replicas} must be >= 1")
    if args.smoke:
        args.model, args.batch, args.image_size = "resnet18", 4, 32
        args.steps, args.steps_per_dispatch, args.dtype = 2, 2, "float32"
    return args


def _timed(run, state, dispatches):
    import jax
    state = run(state)  # warm-up dispatch (compilation happened before)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(dispatches):
        state = run(state)
    jax.block_until_ready(state)
    return time.perf_counter() - start, state


def measure_ours(args, image_size, num_classes, replicas=1):
    """This codebase: create_model + make_optimizer + dispatch.make_train_fn (what `train`
    runs), k steps per call on a chunk already on the device; `replicas` nets at once."""
    import jax
    import jax.numpy as jnp
    import ml_collections
    import numpy as np

    from resnet_jax import create_model, parallel
    from resnet_jax.train import dispatch, optim, step

    overrides = {"dtype": args.dtype, "num_classes": num_classes,
                 "scan_blocks": args.scan_blocks, "block": args.block, "unit": args.unit}
    if not args.model.startswith("cifar_"):
        overrides["bottleneck_stride"] = args.bottleneck_stride
    model = create_model(args.model, **overrides)
    optim_config = ml_collections.ConfigDict(dict(
        name="sgd", lr=0.1, lr_scaling="none", base_batch_size=256, momentum=0.9,
        nesterov=False, weight_decay=1e-4, decay_bn_and_bias=True, schedule="piecewise",
        schedule_unit="steps", boundaries=(), decay_factor=0.1, warmup="none",
        warmup_length=0, warmup_lr=0.0, label_smoothing=0.0))
    tx = optim.make_optimizer(optim_config, steps_per_epoch=1000)
    mesh = parallel.make_mesh(1)
    keys = [jax.random.key(i) for i in range(replicas)]
    state = step.create_train_state(keys[0] if replicas == 1 else jnp.stack(keys), model, tx,
                                    (image_size, image_size, 3), mesh=mesh, replicas=replicas)
    k = args.steps_per_dispatch
    # One replica after another is stepped from the host: the python loop.
    loop = "python" if replicas > 1 and args.replica_mode == "sequential" else "auto"
    fn = dispatch.make_train_fn(model, tx, mesh, replicas=replicas, loop=loop,
                                replica_mode=args.replica_mode)
    rng = np.random.default_rng(0)
    lead = (k, replicas) if replicas > 1 else (k,)
    host = {"image": rng.normal(size=(*lead, args.batch, image_size, image_size, 3)
                                ).astype(np.float32),
            "label": rng.integers(0, num_classes, (*lead, args.batch)).astype(np.int32)}
    batch = dispatch.put_chunk(host, mesh, loop, replicas=replicas)
    key = jax.random.key(1) if replicas == 1 else jnp.stack(
        [jax.random.key(1 + i) for i in range(replicas)])
    t0 = time.perf_counter()
    state, _ = fn(state, batch, key)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t0
    dispatches = max(1, args.steps // k)
    elapsed, _ = _timed(lambda s: fn(s, batch, key)[0], state, dispatches)
    return elapsed / (dispatches * k), compile_s, model


def measure_flax_reference(args, image_size, num_classes):
    import jax
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from flax_reference import make_reference

    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    fn, state = make_reference(args.model, dtype, num_classes, args.batch, image_size)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(args.batch, image_size, image_size, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, num_classes, (args.batch,)), jnp.int32)
    t0 = time.perf_counter()
    state = fn(state, images, labels)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t0
    elapsed, _ = _timed(lambda s: fn(s, images, labels), state, args.steps)
    return elapsed / args.steps, compile_s


def peak_memory_gib():
    import jax
    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.xla_flags:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    import jax

    from resnet_jax import count_macs

    cifar = args.model.startswith("cifar_")
    image_size = args.image_size or (32 if cifar else 224)
    num_classes = 10 if cifar else 1000
    device = jax.local_devices()[0]
    kind = getattr(device, "device_kind", device.platform)

    sec, compile_s, model = measure_ours(args, image_size, num_classes, args.replicas)
    ours_peak = peak_memory_gib()
    macs = count_macs(model, (1, image_size, image_size, 3))
    flops_per_image = 6 * macs
    peak_tflops = args.peak_tflops or next(
        (v[args.dtype] for k, v in PEAK_TFLOPS.items() if k in kind), None)
    result = {
        "device": kind, "model": args.model, "batch": args.batch, "image_size": image_size,
        "dtype": args.dtype, "steps_per_dispatch": args.steps_per_dispatch,
        "replicas": args.replicas, "replica_mode": args.replica_mode,
        "scan_blocks": args.scan_blocks, "xla_flags": args.xla_flags, "ms_per_step": 1e3 * sec,
        "images_per_s": args.replicas * args.batch / sec, "compile_s": compile_s,
        "mfu": (flops_per_image * args.replicas * args.batch / sec / 1e12 / peak_tflops)
        if peak_tflops else None,
        "peak_mem_gib": ours_peak, "macs_per_image": macs,
    }

    if args.baseline == "auto" and args.replicas > 1:
        base_sec, _, _ = measure_ours(args, image_size, num_classes, 1)
        result["baseline"] = "this codebase, the same step with 1 replica"
        result["baseline_images_per_s"] = args.batch / base_sec
        result["baseline_ms_per_step"] = 1e3 * base_sec
        result["time_vs_one"] = sec / base_sec
    elif args.baseline == "auto":
        if cifar:
            base_args = argparse.Namespace(**{**vars(args), "steps_per_dispatch": 1,
                                              "dtype": "float32"})
            base_sec, _, _ = measure_ours(base_args, image_size, num_classes)
            result["baseline"] = "this codebase, float32, 1 step per dispatch"
        else:
            base_sec, _ = measure_flax_reference(args, image_size, num_classes)
            result["baseline"] = "minimal flax ResNet (examples/imagenet style)"
        result["baseline_images_per_s"] = args.batch / base_sec
        result["baseline_ms_per_step"] = 1e3 * base_sec
        result["speedup"] = base_sec / sec

    mfu = f"{100 * result['mfu']:.1f}%" if result["mfu"] is not None else "n/a"
    mem = f"{ours_peak:.1f} GiB" if ours_peak is not None else "n/a"
    reps = f" x{args.replicas} replicas ({args.replica_mode})" if args.replicas > 1 else ""
    line = (f"{kind} {args.model} b{args.batch} {image_size}px {args.dtype} "
            f"k={args.steps_per_dispatch}{' scan_blocks' if args.scan_blocks else ''}{reps}: "
            f"{result['images_per_s']:,.0f} img/s, "
            f"{result['ms_per_step']:.3f} ms/step, MFU {mfu}, peak mem {mem}, "
            f"compile {compile_s:.1f} s")
    if "speedup" in result:
        line += (f" | baseline {result['baseline_images_per_s']:,.0f} img/s "
                 f"({result['baseline_ms_per_step']:.3f} ms/step) -> x{result['speedup']:.2f}")
    if "time_vs_one" in result:
        line += (f" | 1 replica {result['baseline_ms_per_step']:.3f} ms/step -> "
                 f"{args.replicas} replicas in x{result['time_vs_one']:.2f} the time of one "
                 f"(x{args.replicas / result['time_vs_one']:.2f} the images/s)")
    print(line, flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the training loop makes the device wait for, before and after issue 19, in one process.

    python benchmarks/loop_overheads.py                      # all three, a CIFAR ResNet-20
    python benchmarks/loop_overheads.py --smoke              # CI: tiny, checks it runs

- compile: a run's chunks of steps as a scan, with a short chunk wherever a dispatch is cut at
  an eval or checkpoint boundary (here every other chunk: k, k/2, k, k/2, ...). Before: each
  chunk length compiled its own program; after: every chunk padded to k steps
  (`dispatch.put_chunk(steps=k)`), one program. Compilations and wall time of the whole
  sequence, compilation included (the padded steps are computed and dropped: the price).
- eval: one pass over an evaluation split. Before: each batch transferred when it is needed and
  its sums fetched to the host at once (`metrics.add_sums` after every `eval_fn`); after: the
  next batch transferred while one is scored, the sums kept on the device and fetched once at
  the end (`train.run.evaluate_all`: `data.prefetch` + `dispatch.eval_sums`).
- syncs: of the real training loop's dispatches between its boundaries (a run of
  configs/smoke.py with logs, evals and saves only at the end), how many the host had not
  waited for when it moved on to the next (the only wait a dispatch needs is the NaN guard's
  read of the previous dispatch's flag). Run the same script with another checkout first on
  PYTHONPATH to see that loop.

Times are wall clock; compare them only within one run (printed as ratios after / before).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps-per-dispatch", type=int, default=8)
    p.add_argument("--chunks", type=int, default=6, help="chunks in the compile sequence")
    p.add_argument("--eval-examples", type=int, default=5000)
    p.add_argument("--eval-batch", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3, help="eval passes of each kind (median)")
    p.add_argument("--dispatches", type=int, default=24, help="of the loop, for syncs")
    p.add_argument("--only", choices=("compile", "eval", "syncs"), default=None)
    p.add_argument("--json", default="", help="also append the results as a JSON line here")
    p.add_argument("--smoke", action="store_true", help="tiny run for CI")
    args = p.parse_args(argv)
    if args.smoke:
        args.model, args.batch, args.steps_per_dispatch, args.chunks = "cifar_resnet8", 8, 2, 2
        args.eval_examples, args.eval_batch, args.repeats, args.dispatches = 40, 16, 1, 6
    return args


def _setup(args):
    import jax
    import ml_collections

    from resnet_jax import create_model, parallel
    from resnet_jax.train import optim, step

    model = create_model(args.model)
    optim_config = ml_collections.ConfigDict(dict(
        name="sgd", lr=0.1, lr_scaling="none", base_batch_size=128, momentum=0.9,
        nesterov=False, weight_decay=1e-4, decay_bn_and_bias=True, schedule="piecewise",
        schedule_unit="steps", boundaries=(), decay_factor=0.1, warmup="none",
        warmup_length=0, warmup_lr=0.0, label_smoothing=0.0))
    tx = optim.make_optimizer(optim_config, steps_per_epoch=1000)
    mesh = parallel.make_mesh(1)
    state = jax.device_get(step.create_train_state(jax.random.key(0), model, tx, (32, 32, 3)))
    return model, tx, mesh, state


def measure_compile(args) -> dict:
    """Compilations and seconds for the chunk sequence k, k/2, k, ... unpadded vs padded."""
    import jax
    import numpy as np

    from resnet_jax import parallel
    from resnet_jax.train import dispatch

    model, tx, mesh, host_state = _setup(args)
    k = args.steps_per_dispatch
    sizes = [k if i % 2 == 0 else max(k // 2, 1) for i in range(args.chunks)]
    rng = np.random.default_rng(0)
    out = {"sizes": sizes}
    for name, steps in (("before", None), ("after", k)):
        traced = []

        def counting(key, images, train):
            traced.append(1)   # once per trace, i.e. per compilation
            return images.astype(np.float32)

        fn = dispatch.make_train_fn(model, tx, mesh, preprocess=counting, loop="scan")
        state = parallel.replicate(host_state, mesh)
        start = time.perf_counter()
        for size in sizes:
            host = {"image": rng.normal(size=(size, args.batch, 32, 32, 3)).astype(np.float32),
                    "label": rng.integers(0, 10, (size, args.batch)).astype(np.int32)}
            state, _ = fn(state, dispatch.put_chunk(host, mesh, "scan", steps=steps),
                          jax.random.key(1))
        jax.block_until_ready(state)
        out[name] = {"compilations": len(traced), "seconds": time.perf_counter() - start}
    out["time_after_over_before"] = out["after"]["seconds"] / out["before"]["seconds"]
    return out


def measure_eval(args) -> dict:
    """Seconds per evaluation pass, host sums per batch vs on the device with prefetch."""
    import jax
    import numpy as np

    from resnet_jax import parallel
    from resnet_jax.data import order
    from resnet_jax.data.prefetch import prefetch
    from resnet_jax.train import dispatch
    from resnet_jax.train import metrics as metrics_lib

    model, _, mesh, host_state = _setup(args)
    state = parallel.replicate(host_state, mesh)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (args.eval_examples, 32, 32, 3), np.uint8)
    labels = rng.integers(0, 10, args.eval_examples).astype(np.int32)

    def batches():
        for idx, mask in order.eval_plan(args.eval_examples, args.eval_batch, 0, 1):
            yield {"image": images[idx][:, None], "label": labels[idx], "mask": mask}

    fn = dispatch.make_eval_fn(model, mesh)

    def before():
        sums = None
        for batch in batches():
            sums = metrics_lib.add_sums(sums, fn(state, parallel.to_global(batch, mesh)))
        return sums

    def after():
        ahead = prefetch(batches(), lambda b: parallel.to_global(b, mesh), size=2)
        return dispatch.eval_sums(fn, state, ahead)

    assert before() == after()       # the same numbers (and both compiled)
    times = {"before": [], "after": []}
    for _ in range(args.repeats):
        for name, run in (("before", before), ("after", after)):
            start = time.perf_counter()
            jax.block_until_ready(run())
            times[name].append(time.perf_counter() - start)
    out = {name: statistics.median(t) for name, t in times.items()}
    out["time_after_over_before"] = out["after"] / out["before"]
    return out


def measure_syncs(args) -> dict:
    """Of the real loop's dispatches between boundaries, how many the host had NOT waited for
    when it finished handling them (it went on to prepare the next one while the device still
    ran this one): a dispatch the host reads back (a sync) is done by then. jax.Array reads
    cannot be counted on CPU (numpy takes them through the buffer protocol), readiness can."""
    import jax

    from resnet_jax.config import load_config
    from resnet_jax.train import dispatch, loop

    steps, k = args.dispatches * args.steps_per_dispatch, args.steps_per_dispatch
    config = load_config("configs/smoke.py", [
        f"--config.train.num_steps={steps}", f"--config.train.steps_per_dispatch={k}",
        f"--config.train.log_every_steps={steps}", f"--config.train.eval_every_steps={steps}",
        f"--config.train.checkpoint_every_steps={steps}", "--config.train.batch_size=8",
        "--config.train.eval_batch_size=8", f"--config.optim.boundaries=({steps},)"])
    last, ahead = [], []
    real = dispatch.make_train_fn

    def recording(*a, **kw):
        fn = real(*a, **kw)

        def call(*args, **kwargs):
            out = fn(*args, **kwargs)
            last[:] = [jax.tree.leaves(out)[-1]]
            return out
        return call

    def on_step(step):
        ahead.append(not last[0].is_ready())

    dispatch.make_train_fn = recording
    try:
        with tempfile.TemporaryDirectory() as workdir:
            loop.train_and_evaluate(config, workdir, on_step=on_step)
    finally:
        dispatch.make_train_fn = real
    # The first dispatch reports its compile time and loss; the last one logs, evaluates
    # and saves: the ones between are the loop's steady state.
    between = ahead[1:-1]
    return {"dispatches": len(ahead), "between_boundaries": len(between),
            "host_ahead": sum(between)}


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax
    device = jax.local_devices()[0]
    kind = getattr(device, "device_kind", device.platform)
    results = {"device": kind, "model": args.model, "batch": args.batch}
    for name, measure in (("compile", measure_compile), ("eval", measure_eval),
                          ("syncs", measure_syncs)):
        if args.only in (None, name):
            results[name] = measure(args)
    if "compile" in results:
        c = results["compile"]
        print(f"{kind} compile, chunks {c['sizes']} of {args.model} b{args.batch}: before "
              f"{c['before']['compilations']} compilations {c['before']['seconds']:.1f} s, "
              f"after {c['after']['compilations']} compilation {c['after']['seconds']:.1f} s "
              f"-> x{c['time_after_over_before']:.2f} the time", flush=True)
    if "eval" in results:
        e = results["eval"]
        print(f"{kind} eval pass, {args.eval_examples} examples in batches of "
              f"{args.eval_batch}: before {e['before']:.3f} s, after {e['after']:.3f} s -> "
              f"x{e['time_after_over_before']:.2f} the time", flush=True)
    if "syncs" in results:
        s = results["syncs"]
        print(f"{kind} loop: the host ran ahead of the device (had not waited for it) after "
              f"{s['host_ahead']} of the {s['between_boundaries']} dispatches between "
              "boundaries", flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A few training steps, run either as one of N processes (`python _mp_worker.py PID N PORT OUT_DIR`,
started by test_multiprocess.py) or in the test process itself (`run_steps`), so both sides train
the same model on the same global batches: one net, and 2 replicas of it in one run
(`train.replicas`: each its own init, batches and key), vmapped and one after the other.

Each process feeds only its own rows of the global batch (`parallel.to_global`); BN statistics
are per device, so the placement of every row on the right device matters.
"""
import os
import sys

NUM_STEPS, GLOBAL_BATCH, HW = 3, 16, 8


def run_steps(process_index: int, process_count: int, replicas: int = 1,
              mode: str = "vmap") -> dict:
    """Train NUM_STEPS steps on all devices, then evaluate; returns host numpy params,
    batch_stats, train losses and eval sums (keys prefixed `r<replicas><mode>_`)."""
    import jax
    import jax.numpy as jnp
    import ml_collections
    import numpy as np

    import resnet_jax
    from resnet_jax import parallel
    from resnet_jax.train import dispatch, optim, step

    mesh = parallel.make_mesh()
    groups = parallel.bn_num_groups("per_device", 1, mesh.size)
    model = resnet_jax.create_model("cifar_resnet8", width=4, bn_num_groups=groups)
    c = ml_collections.ConfigDict(dict(
        name="sgd", lr=0.1, lr_scaling="none", base_batch_size=128, momentum=0.9,
        nesterov=False, weight_decay=1e-4, decay_bn_and_bias=False, schedule="piecewise",
        schedule_unit="steps", boundaries=[2], decay_factor=0.1, warmup="none",
        warmup_length=0, warmup_lr=0.0, label_smoothing=0.0))
    tx = optim.make_optimizer(c, steps_per_epoch=10)
    # rbg: fast to compile on CPU; the init runs replicated, so every device draws the same.
    keys = [jax.random.key(i, impl="rbg") for i in range(replicas)]
    key = keys[0] if replicas == 1 else jnp.stack(keys)
    state = step.create_train_state(key, model, tx, (HW, HW, 3), mesh=mesh, replicas=replicas)
    fn = dispatch.make_train_fn(model, tx, mesh, replicas=replicas, replica_mode=mode)
    step_key = jax.random.key(1) if replicas == 1 else jnp.stack(
        [jax.random.key(1 + i) for i in range(replicas)])
    b = GLOBAL_BATCH // process_count
    losses = []
    for s in range(NUM_STEPS):
        rng = np.random.default_rng(s)
        images = rng.normal(size=(replicas, GLOBAL_BATCH, HW, HW, 3)).astype(np.float32)
        labels = rng.integers(0, 10, (replicas, GLOBAL_BATCH)).astype(np.int32)
        rows = slice(process_index * b, (process_index + 1) * b)
        host = {"image": images[:, rows], "label": labels[:, rows]}  # (replicas, b, ...)
        if replicas == 1:
            host = {k: v[0] for k, v in host.items()}
        chunk = dispatch.put_chunk({k: v[None] for k, v in host.items()}, mesh,
                                   replicas=replicas)
        state, metrics = fn(state, chunk, step_key)
        losses.append(np.asarray(metrics["loss"][0]))
    # Eval over 21 examples in global batches of 8: every process runs the same number of
    # batches, the padded rows are masked out, and each example counts once.
    eval_fn = dispatch.make_eval_fn(model, mesh, replicas=replicas, replica_mode=mode)
    n, eb = 21, 8
    data = np.random.default_rng(99)
    images = data.normal(size=(n, HW, HW, 3)).astype(np.float32)
    labels = data.integers(0, 10, n).astype(np.int32)
    sums = np.zeros((4, replicas) if replicas > 1 else 4)
    for start in range(0, n, eb):
        idx = np.arange(start, start + eb)
        mask = idx < n
        idx = np.where(mask, idx, 0)
        rows = slice(process_index * eb // process_count, (process_index + 1) * eb // process_count)
        out = eval_fn(state, parallel.to_global({"image": images[idx][rows, None],
                                                 "label": labels[idx][rows],
                                                 "mask": mask[rows]}, mesh))
        sums += np.stack([np.asarray(out[k]) for k in ("loss", "top1", "top5", "count")])
    flat = {"eval_sums": sums}
    for name, tree in (("params", state.params), ("batch_stats", state.batch_stats)):
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            flat[name + jax.tree_util.keystr(path)] = np.asarray(leaf)  # fully replicated
    flat["losses"] = np.array(losses)
    tag = f"r{replicas}" + (mode if replicas > 1 else "")
    return {f"{tag}_{k}": v for k, v in flat.items()}


def init_distributed(pid: int, nproc: int, port: int) -> None:
    """This process as `pid` of `nproc` on localhost (8 CPU devices in all, gloo collectives).
    Short timeouts: a dead peer must fail the test in seconds, not hang it for minutes."""
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    jax.config.update("jax_num_cpu_devices", 8 // nproc)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes=nproc, process_id=pid,
                               initialization_timeout=30, heartbeat_timeout_seconds=10,
                               shutdown_timeout_seconds=10)
    assert jax.process_count() == nproc and jax.device_count() == 8


def free_port() -> int:
    """A TCP port free on localhost now (for a coordinator)."""
    import socket
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def load_module(path):
    """The Python file at `path` as a module (the tests' import mode cannot import siblings)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(os.path.basename(str(path))[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_workers(script, *args, nproc: int = 2, timeout: float = 240, cwd=None,
                unoptimized: bool = False) -> None:
    """Runs `python SCRIPT PID NPROC PORT *ARGS` as `nproc` local processes and waits for
    them; fails naming a process that did not exit 0, with the end of its output. The first
    failure ends the others at once (they would wait for it in a collective until the
    timeout).

    `unoptimized`: XLA's unoptimized backend (about half the compile time) for workers whose
    numbers are compared with nothing a user runs; an equivalence (2 processes == 1) must hold
    at the optimization level users run, so it is off by default."""
    import subprocess
    import tempfile
    import time

    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(sys.path))
    if unoptimized:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                            + " --xla_backend_optimization_level=0").strip()
    with tempfile.TemporaryDirectory() as logs:
        files = [open(os.path.join(logs, f"p{i}.log"), "w+") for i in range(nproc)]
        procs = [subprocess.Popen([sys.executable, str(script), str(i), str(nproc), str(port),
                                   *map(str, args)], cwd=cwd, env=env, stdout=files[i],
                                  stderr=subprocess.STDOUT, text=True) for i in range(nproc)]
        deadline = time.monotonic() + timeout
        try:
            while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                if any(p.poll() not in (None, 0) for p in procs):
                    break
                time.sleep(0.05)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
        outputs = []
        for f in files:
            f.seek(0)
            outputs.append(f.read())
            f.close()
    for i, p in enumerate(procs):
        assert p.returncode == 0, (f"process {i} failed (exit {p.returncode}; {timeout} s "
                                   f"allowed):\n{outputs[i][-3000:]}")


def main(argv: list) -> int:
    pid, nproc, port, out_dir = int(argv[1]), int(argv[2]), int(argv[3]), argv[4]
    init_distributed(pid, nproc, port)
    import jax
    import numpy as np

    result = {**run_steps(jax.process_index(), jax.process_count()),
              **run_steps(jax.process_index(), jax.process_count(), 2, "vmap"),
              **run_steps(jax.process_index(), jax.process_count(), 2, "sequential")}
    np.savez(os.path.join(out_dir, f"p{pid}.npz"), **result)
    jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

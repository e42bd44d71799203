"""One of 2 processes (`python _mp_lifecycle_worker.py PID N PORT DIR`, started by
test_multiprocess.py) checking what must be one decision for all processes:

- restore: the checkpoint of step 2 damaged for process 1 only (its read of step 2 fails as a
  torn file does): both processes restore step 1 and step 2 is set aside once; a failure
  worth retrying seen by process 1 alone: both stop with an error, nothing moved; the same
  failure once, then gone: both restore step 2;
- the workdir's lease: held by process 0 alone, a second holder refused on both processes,
  a lost lease stops both, any failure of process 0 to take it stops both;
- fresh or resumed: a new run whose checkpoints/ appears between process 0's look and that
  of a process 1 slow once it has the lease starts fresh on both;
- `eval --data` scoring on a mesh whose device order puts process 1's devices first: every
  prediction is paired with its own label.

Each process writes what it saw to DIR/p<PID>.json; the test compares them.
"""
import json
import os
import sys


def _state(mesh, value: float):
    import jax
    import jax.numpy as jnp
    rep = jax.sharding.NamedSharding(mesh, jax.P())
    tree = {"w": jnp.full((4, 3), value, jnp.float32), "b": jnp.arange(3.0) + value}
    return jax.device_put(tree, rep)


def _rng(mesh, seed: int):
    import jax
    import numpy as np
    from resnet_jax import parallel
    return parallel.replicate(np.asarray(jax.random.PRNGKey(seed)), mesh)  # a global array


def restore_decisions(root: str, mesh) -> dict:
    from jax.experimental import multihost_utils
    from resnet_jax.train import checkpoint as ckpt
    import jax
    pid, out = jax.process_index(), {}
    directory = os.path.join(root, "ck")
    c = ckpt.Checkpointer(directory, keep=5, read_attempts=2, retry_delay_s=0.0)
    for step in (1, 2):
        c.save(step, _state(mesh, float(step)), _rng(mesh, step), {"model": {}})
        c.wait()
    real = c._restore_state

    def failing(error, times):
        left = [times]

        def restore(step, target):
            if pid == 1 and step == 2 and left[0] > 0:
                left[0] -= 1
                raise error
            return real(step, target)
        return restore

    def attempt(name):
        try:
            got = c.restore_latest(_state(mesh, 0.0), _rng(mesh, 0))
            out[name] = {"step": got.step, "w": float(got.state["w"][0, 0])}
        except Exception as err:  # noqa: BLE001 - recorded for the test
            out[name] = {"error": type(err).__name__, "message": str(err)}
        multihost_utils.sync_global_devices(name)
        out[name]["listing"] = sorted(os.listdir(directory))

    # A failure worth retrying, on process 1 only, every time: both stop, nothing moves.
    c._restore_state = failing(ValueError("UNAVAILABLE: connection reset by peer"), 99)
    attempt("transient")
    # The same failure once: the retry reads it, on both processes.
    c._restore_state = failing(ValueError("UNAVAILABLE: connection reset by peer"), 1)
    attempt("transient_once")
    # Damage seen by process 1 alone (its shard torn): both set step 2 aside, restore 1.
    c._restore_state = failing(ValueError("OUT_OF_RANGE: Error reading byte range of "
                                          "local file"), 99)
    attempt("damaged")
    c.close()
    return out


def lease(root: str) -> dict:
    import jax
    from resnet_jax.errors import WorkdirBusyError
    from resnet_jax.train import lease as lease_lib
    workdir, out = os.path.join(root, "run"), {}
    with lease_lib.hold(workdir) as held:
        out["held_by_me"] = held.lease is not None
        out["files"] = sorted(os.listdir(workdir))
        try:
            with lease_lib.hold(workdir):
                out["second"] = "taken"
        except WorkdirBusyError as err:
            out["second"] = str(err)
        held.check()
        if jax.process_index() == 0:  # another run takes the workdir over
            with open(os.path.join(workdir, "lease.1.json"), "w") as f:
                json.dump({"host": "elsewhere", "pid": 9, "since": 0.0, "renewed": 0.0,
                           "heartbeat_s": 1.0, "ttl_s": 1.0, "token": "t"}, f)
            held.lease.renew()
        try:
            held.check()
            out["lost"] = None
        except lease_lib.LeaseLostError as err:
            out["lost"] = str(err)
    return out


def lease_failure(root: str) -> dict:
    """Process 0 fails to take the lease with an error of no kind the lease knows (its store
    broke): both processes raise, neither waits for the other."""
    import jax
    from resnet_jax.train import lease as lease_lib
    from resnet_jax.train import lease_stores
    real = lease_stores.store
    if jax.process_index() == 0:
        def broken(workdir):
            raise KeyError("the store broke")
        lease_stores.store = broken
    try:
        with lease_lib.hold(os.path.join(root, "broken")):
            return {"error": None}
    except Exception as err:  # noqa: BLE001 - recorded for the test
        return {"error": type(err).__name__, "message": str(err)}
    finally:
        lease_stores.store = real


class _Started(Exception):
    """Raised once the run has started fresh or resumed: what is tested here is which."""


def start_decision(root: str) -> dict:
    """A new smoke run on both processes, process 1 slow once it has the lease, and the
    run's checkpoints/ appearing between process 0's look and process 1's (process 1 makes
    it here: process 0 cannot make it that early today, since its fresh state waits for
    process 1 in a collective; a host whose NFS view lags, or any start path without that
    collective, sees the same). Both must start the new run: which each did is recorded, and
    the run is stopped there (nothing is compiled beyond the initialization)."""
    import contextlib
    import time

    import jax
    from resnet_jax.config import load_config
    from resnet_jax.train import lease as lease_lib
    from resnet_jax.train import loop
    from resnet_jax.train import run as run_lib
    workdir, real = os.path.join(root, "start"), (lease_lib.hold, run_lib.fresh_state,
                                                  run_lib.restore)
    took = []

    @contextlib.contextmanager
    def slow_hold(*args, **kwargs):
        with real[0](*args, **kwargs) as held:
            time.sleep(1)
            os.makedirs(os.path.join(workdir, "checkpoints"))
            yield held

    def fresh_state(run):
        real[1](run)
        took.append("fresh")
        raise _Started

    def restore(*args, **kwargs):
        took.append("restore")
        raise _Started
    if jax.process_index() == 1:
        lease_lib.hold = slow_hold
    run_lib.fresh_state, run_lib.restore = fresh_state, restore
    smoke = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "smoke.py")
    try:
        loop.train_and_evaluate(load_config(smoke), workdir)
    except _Started:
        pass
    finally:
        lease_lib.hold, run_lib.fresh_state, run_lib.restore = real
    return {"took": took}


def permuted_eval() -> dict:
    """Scores 20 images whose labels are the model's own predictions (so a correct pairing
    is 0% top-1 error) on the mesh ordered [process 1's devices, process 0's devices]."""
    import jax
    import numpy as np
    from jax.sharding import Mesh

    import resnet_jax
    from resnet_jax.data import views
    from resnet_jax.interop import eval_sources, evaluate
    from resnet_jax.interop.preprocess import Preprocessing

    model = resnet_jax.create_model("cifar_resnet8", width=4, num_classes=10)
    variables = jax.device_get(model.init(jax.random.key(0), np.zeros((1, 8, 8, 3)),
                                          train=False))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    prep = Preprocessing(mean=np.full(3, 120.0), std=np.full(3, 60.0), crop=8)
    x = (images.astype(np.float32) - 120.0) / 60.0
    logits = np.asarray(model.apply(variables, x, train=False))
    top2 = np.sort(logits, axis=1)[:, -2:]
    labels = logits.argmax(axis=1)
    source = eval_sources.Source(
        "test", "folder", None, [str(i) for i in range(10)], 10,
        lambda: iter((f"{i}.png", images[i], int(labels[i])) for i in range(20)), 20)
    loaded = type("Loaded", (), {"model": model, "variables": variables})()
    devices = jax.devices()
    mine = [d for d in devices if d.process_index == 1] + \
        [d for d in devices if d.process_index == 0]
    out = {"margin": float((top2[:, 1] - top2[:, 0]).min())}
    for name, order in (("process_order", devices), ("permuted", mine)):
        mesh = Mesh(np.array(order), ("data",))
        out[name] = evaluate.score(loaded, source, views.Views(prep), batch_size=8, mesh=mesh,
                                   workers=1)
    return out


def main(argv: list) -> int:
    pid, nproc, port, root = int(argv[1]), int(argv[2]), int(argv[3]), argv[4]
    from _mp_worker import init_distributed  # beside this script
    init_distributed(pid, nproc, port)
    import jax

    from resnet_jax import parallel
    mesh = parallel.make_mesh()
    result = {"restore": restore_decisions(root, mesh), "lease": lease(root),
              "lease_failure": lease_failure(root), "eval": permuted_eval(),
              "start": start_decision(root)}  # last: on a wrong decision nothing follows
    with open(os.path.join(root, f"p{pid}.json"), "w") as f:
        json.dump(result, f, indent=1)
    jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""The steps compiled on a device mesh: k training steps per call, and evaluation.

One train factory, `make_train_fn`, for both data paths: a chunk of k steps holds either the
batches themselves or, when the training split lives on the devices (`resident`), the row
indices of each step's batch, gathered inside the compiled program. The host's data becomes
device data in one place, `put_chunk` / `parallel.to_global`, before the call.

How the k steps run (`loop`): 'scan' is one `lax.scan` (no host round trip between steps),
'python' is k calls of one compiled step. 'auto' takes python on CPU, where XLA runs
convolutions inside a while loop (a rolled `lax.scan`) about 9x slower than at the top level
(jax-ml/jax#12868; measured on ResNet-8, batch 32: 711 vs 6141 images/s), and scan elsewhere.
The numbers are the same either way. The scan takes its chunk stacked (leaves (k, B, ...)),
the python loop as a tuple of k per-step batches, split on the host where that is free.

One program per run: `put_chunk(..., steps=K)` pads a scan's chunk to K steps and passes the
real count as data, and the steps past it are computed but not applied, so chunks of every
length up to K run the one compiled scan (its trip count stays static: an XLA:GPU while loop
with a data-dependent count reads its condition back to the host at every iteration).

Replicas (`replicas=N` > 1): N nets in one run, their state stacked on a leading replica axis
((N, ...) leaves), as are the base keys ((N,) keys), the NaN flag `ok` (N,) and the data (each
replica's own rows: chunk leaves (k, N, B, ...)); metrics become (k, N). A replica that turns
non-finite is frozen at its last finite state while the others train on. Every device holds
every replica; each replica's batch is split over the mesh as with one. How the N steps run
(`replica_mode`):
- 'vmap': one program steps all N (`jax.vmap` of the guarded step): each kernel does the work
  of N nets, what a GPU running a CIFAR net needs. vmap makes each convolution over the N
  replicas one grouped convolution, the same arithmetic summed in another order, so a replica
  equals its solo run to float32 rounding, not bitwise.
- 'sequential': one compiled single-replica step, called for replica 0, 1, ... in turn on its
  slice of the stacked state (a traced index, updated in place): bitwise the solo runs. XLA:CPU
  computes grouped convolutions far slower than N plain ones (cifar_resnet20, batch 32: 5
  replicas vmapped took x34 the time of one), so 'auto' takes it on CPU with the python loop,
  and vmap elsewhere.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from resnet_jax import parallel
from resnet_jax.train.step import Preprocess, TrainState, eval_step, select, train_step

LOOPS = ("auto", "scan", "python")
REPLICA_MODES = ("auto", "vmap", "sequential")


class Padded(NamedTuple):
    """A scan chunk padded to a fixed number of steps: `data` leaves (K, ...), of which the
    first `count` (a replicated int32 scalar) are real."""
    data: Any
    count: jax.Array


def loop_kind(loop: str, mesh: Mesh) -> str:
    """'scan' or 'python' (see the module docstring)."""
    if loop not in LOOPS:
        raise ValueError(f"loop={loop!r} is not allowed; choose one of {list(LOOPS)}")
    if loop != "auto":
        return loop
    return "python" if mesh.devices.flat[0].platform == "cpu" else "scan"


def replica_kind(mode: str, mesh: Mesh, loop: str = "auto") -> str:
    """'vmap' or 'sequential' (see the module docstring); 'auto' is sequential where the
    steps run as a python loop on CPU."""
    if mode not in REPLICA_MODES:
        raise ValueError(f"replica_mode={mode!r} is not allowed; choose one of "
                         f"{list(REPLICA_MODES)}")
    if mode != "auto":
        return mode
    cpu = mesh.devices.flat[0].platform == "cpu"
    return "sequential" if cpu and loop_kind(loop, mesh) == "python" else "vmap"


def _pick(tree: Any, i: Any) -> Any:
    """Replica i (a traced index) of stacked leaves."""
    return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), tree)


def _pad(host: dict, steps: int) -> dict:
    k = len(next(iter(host.values())))
    if k > steps:
        raise ValueError(f"a chunk of {k} steps does not fit the {steps} steps per dispatch")
    # Zeros are valid rows (index 0) and images; what the padded steps compute is dropped.
    return {name: np.concatenate([v, np.zeros((steps - k,) + v.shape[1:], v.dtype)])
            for name, v in host.items()}


def put_chunk(host: dict, mesh: Mesh, loop: str = "auto", *, replicas: int = 1,
              steps: Optional[int] = None) -> Any:
    """Process-local host data of k steps -> what `make_train_fn`'s function takes with the
    same `loop` and `replicas`.

    `host` leaves are (k, b, ...) (this process's b rows of each step), or (k, N, b, ...) with
    `replicas=N` > 1. Returns global arrays (k, B, ...) for a scan (a `Padded` chunk of `steps`
    steps when `steps` is given), a tuple of k global per-step batches for the python loop
    (which needs no padding: it compiles one step)."""
    batch_axis = 2 if replicas > 1 else 1
    if loop_kind(loop, mesh) == "scan":
        if steps is None:
            return parallel.to_global(host, mesh, batch_axis=batch_axis)
        k = len(next(iter(host.values())))
        count = jax.device_put(np.int32(k), parallel.replicated(mesh))
        return Padded(parallel.to_global(_pad(host, steps), mesh, batch_axis=batch_axis), count)
    k = len(next(iter(host.values())))
    return tuple(parallel.to_global({name: v[i] for name, v in host.items()}, mesh,
                                    batch_axis=batch_axis - 1)
                 for i in range(k))


def _guarded(step_fn: Callable, state: TrainState, x: Any, ok: jax.Array,
             active: Optional[jax.Array] = None):
    """One step, applied only if it and every earlier step were finite (`ok`) and it is a real
    step of its chunk (`active`; None: it is). A padded step can neither fail nor apply."""
    new_state, metrics = step_fn(state, x)
    if active is None:
        ok = ok & metrics["finite"]
        apply = ok
    else:
        ok = ok & (metrics["finite"] | ~active)
        apply = ok & active
    return select(apply, new_state, state), dict(metrics, finite=ok), ok


def make_train_fn(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh, *,
                  resident: Optional[tuple] = None, preprocess: Optional[Preprocess] = None,
                  label_smoothing: float = 0.0, loop: str = "auto",
                  donate: bool = True, replicas: int = 1,
                  replica_mode: str = "auto") -> Callable:
    """Compiled `fn(state, chunk, rng, ok=None, stop=None) -> (state, metrics)`: the k steps of
    a chunk.

    Args:
      resident: (images (N, H, W, 3), labels (N,)) host arrays of the whole training split,
        the same on every process, put on the devices (replicated) once, here; chunks then
        hold {'index': (k, B)} row indices instead of {'image', 'label'} batches.
      preprocess: (rng, images, train) -> float32 images inside the step (the pipeline's
        `device_preprocess`); default: cast to float32.
      loop: 'auto' | 'scan' | 'python' (module docstring).
      donate: the state's buffers are donated (the input state must not be used again).
      replicas: N > 1 trains N nets at once (module docstring): state, rng and `ok` carry a
        leading replica axis, chunks (k, N, B, ...) leaves, metrics (k, N).
      replica_mode: 'auto' | 'vmap' | 'sequential' (module docstring; 'sequential' needs the
        python loop).
    `chunk` comes from `put_chunk(host, mesh, loop, replicas=...)`; `rng` is the run's base key
    (step s uses fold_in(rng, s)); the state lives replicated on the mesh (`create_train_state(..,
    mesh=mesh)`). Metrics are stacked over the k steps (over all K steps of a `Padded` chunk:
    only the first `count` are real). `finite` is cumulative: False from the first non-finite
    step on, and no update is applied after it. `ok` (a replicated bool, the last `finite` of
    the previous call) carries that across calls without a host round trip: given False, a
    call applies nothing, so a loop that looks only now and then never trains past a NaN.
    `stop` (python loop only): asked after each step, once it has run (the call then returns
    when its steps are done, not queued); True ends the call early, and the metrics then cover
    the steps done (a preemption on CPU waits for one step, not for the whole chunk).
    """
    kind = loop_kind(loop, mesh)
    mode = replica_kind(replica_mode, mesh, kind) if replicas > 1 else "vmap"
    if mode == "sequential" and kind == "scan":
        raise ValueError("replica_mode='sequential' steps the replicas one by one from the "
                         "host: it needs loop='python'")
    rep, rows = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    step = functools.partial(train_step, model=model, tx=tx, preprocess=preprocess,
                             label_smoothing=label_smoothing)
    arrays = parallel.replicate(tuple(resident), mesh) if resident is not None else ()
    lead = 1 if replicas > 1 else 0  # the replica axis, before each step's batch axis

    def one(state, x, rng, ok, active, arrays):
        """One replica's guarded step."""
        def apply(state, x):
            if arrays:
                idx = jax.lax.with_sharding_constraint(x["index"], rows)
                x = {"image": jnp.take(arrays[0], idx, axis=0),
                     "label": jnp.take(arrays[1], idx, axis=0)}
            return step(state, jax.lax.with_sharding_constraint(x, rows), rng)
        return _guarded(apply, state, x, ok, active)

    # vmap: replica axis 0 of the state, the step's data, the key and the flag; the resident
    # split and the padding mask are shared.
    stepper = jax.vmap(one, in_axes=(0, 0, 0, 0, None, None)) if replicas > 1 else one

    def python_step(state, x, rng, ok, arrays):
        return stepper(state, x, rng, ok, None, arrays)

    def replica_step(state, i, x, rng, ok, arrays):
        """Replica i's step on its slice of the stacked state, written back in place."""
        new, metrics, ok_i = one(_pick(state, i), _pick(x, i), _pick(rng, i), ok[i], None,
                                 arrays)
        state = jax.tree.map(lambda a, b: jax.lax.dynamic_update_index_in_dim(a, b, i, 0),
                             state, new)
        return state, metrics, ok.at[i].set(ok_i)

    def scan_steps(state, xs, count, rng, ok, arrays):
        xs = jax.lax.with_sharding_constraint(xs, parallel.batch_sharding(mesh, 1 + lead))
        k = len(jax.tree.leaves(xs)[0])

        def body(carry, item):
            i, x = item
            active = None if count is None else i < count
            state, metrics, ok = stepper(carry[0], x, rng, carry[1], active, arrays)
            return (state, ok), metrics

        (state, _), metrics = jax.lax.scan(body, (state, ok), (jnp.arange(k), xs))
        return state, metrics

    donated = (0,) if donate else ()
    # jit compiles lazily: only the kind that is called is ever compiled.
    body = {"scan": scan_steps, "python": python_step}[kind]
    if replicas > 1 and mode == "sequential":
        body = replica_step
    compiled = jax.jit(body, out_shardings=rep, donate_argnums=donated)

    def python_call(state, x, rng, ok):
        if body is not replica_step:
            return compiled(state, x, rng, ok, arrays)
        each = []
        for i in range(replicas):
            state, metrics, ok = compiled(state, np.int32(i), x, rng, ok, arrays)
            each.append(metrics)
        return state, jax.tree.map(lambda *m: jnp.stack(m), *each), ok
    true = []

    def fn(state: TrainState, chunk: Any, rng: Any, ok: Optional[jax.Array] = None,
           stop: Optional[Callable[[], bool]] = None) -> tuple[TrainState, dict]:
        rng = parallel.replicate_key(rng, mesh)
        if ok is None:
            if not true:
                flag = np.ones((replicas,), bool) if replicas > 1 else np.array(True)
                true.append(jax.device_put(flag, rep))
            ok = true[0]
        if kind == "scan":
            if isinstance(chunk, Padded):
                return compiled(state, chunk.data, chunk.count, rng, ok, arrays)
            return compiled(state, chunk, None, rng, ok, arrays)
        out = []
        for x in chunk:
            state, metrics, ok = python_call(state, x, rng, ok)
            out.append(metrics)
            if stop is not None:
                # A call returns before its step has run (JAX dispatches asynchronously, and
                # XLA:CPU queues tens of steps): asked now, `stop` would be answered only
                # once all those queued steps had run, a minute on a slow CPU.
                jax.block_until_ready(ok)
                if stop():
                    break  # the steps done so far are the chunk
        return state, jax.tree.map(lambda *xs: jnp.stack(xs), *out)

    return fn


def make_eval_fn(model: nn.Module, mesh: Mesh, *, preprocess: Optional[Preprocess] = None,
                 replicas: int = 1, replica_mode: str = "auto") -> Callable:
    """Compiled `fn(state, batch) -> sums` (see `step.eval_step`); `batch` holds global arrays
    (`parallel.to_global` of each process's rows). Every process must call it the same number
    of times (the pipelines pad the last batches). With `replicas` N > 1 the state has a
    leading replica axis, every replica scores the same batch, and each sum is (N,) (vmapped,
    or replica by replica with `replica_mode` as `make_train_fn`'s)."""
    step = functools.partial(eval_step, model=model, preprocess=preprocess)
    rep, rows = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    if replicas == 1 or replica_kind(replica_mode, mesh) == "vmap":
        if replicas > 1:
            step = jax.vmap(step, in_axes=(0, None))
        return jax.jit(step, in_shardings=(rep, rows), out_shardings=rep)
    compiled = jax.jit(lambda state, i, batch: step(_pick(state, i), batch),
                       in_shardings=(rep, rep, rows), out_shardings=rep)

    def fn(state, batch):
        each = [compiled(state, np.int32(i), batch) for i in range(replicas)]
        return jax.tree.map(lambda *s: jnp.stack(s), *each)
    return fn


def eval_sums(eval_fn: Callable, state: TrainState, batches: Any) -> dict:
    """Sums of `eval_fn` over `batches` (global arrays, e.g. put on the devices ahead by
    `data.prefetch`): each batch's sums stay on the device and all come back in one transfer
    at the end, summed on the host in float64 in batch order (exact counts for any split;
    no host round trip between batches). Leaves: float, or (N,) float64 arrays with replicas."""
    on_device = [eval_fn(state, batch) for batch in batches]
    if not on_device:
        raise ValueError("evaluation got no batch")
    total = None
    for sums in jax.device_get(on_device):
        sums = {k: np.asarray(v, np.float64) for k, v in sums.items()}
        total = sums if total is None else {k: total[k] + sums[k] for k in sums}
    return {k: float(v) if v.ndim == 0 else v for k, v in total.items()}

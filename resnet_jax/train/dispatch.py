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
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from resnet_jax import parallel
from resnet_jax.train.step import Preprocess, TrainState, eval_step, select, train_step

LOOPS = ("auto", "scan", "python")


def loop_kind(loop: str, mesh: Mesh) -> str:
    """'scan' or 'python' (see the module docstring)."""
    if loop not in LOOPS:
        raise ValueError(f"loop={loop!r} is not allowed; choose one of {list(LOOPS)}")
    if loop != "auto":
        return loop
    return "python" if mesh.devices.flat[0].platform == "cpu" else "scan"


def put_chunk(host: dict, mesh: Mesh, loop: str = "auto") -> Any:
    """Process-local host data of k steps (leaves (k, b, ...)) -> what `make_train_fn`'s
    function takes with the same `loop`: global arrays (k, B, ...) for a scan, a tuple of k
    global per-step batches for the python loop."""
    if loop_kind(loop, mesh) == "scan":
        return parallel.to_global(host, mesh, batch_axis=1)
    k = len(next(iter(host.values())))
    return tuple(parallel.to_global({name: v[i] for name, v in host.items()}, mesh)
                 for i in range(k))


def _guarded(step_fn: Callable, state: TrainState, x: Any, ok: jax.Array):
    """One step, applied only if it and every earlier step were finite (`ok`)."""
    new_state, metrics = step_fn(state, x)
    ok = ok & metrics["finite"]
    return select(ok, new_state, state), dict(metrics, finite=ok), ok


def make_train_fn(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh, *,
                  resident: Optional[tuple] = None, preprocess: Optional[Preprocess] = None,
                  label_smoothing: float = 0.0, loop: str = "auto",
                  donate: bool = True) -> Callable:
    """Compiled `fn(state, chunk, rng, ok=None) -> (state, metrics)`: the k steps of a chunk.

    Args:
      resident: (images (N, H, W, 3), labels (N,)) host arrays of the whole training split,
        the same on every process, put on the devices (replicated) once, here; chunks then
        hold {'index': (k, B)} row indices instead of {'image', 'label'} batches.
      preprocess: (rng, images, train) -> float32 images inside the step (the pipeline's
        `device_preprocess`); default: cast to float32.
      loop: 'auto' | 'scan' | 'python' (module docstring).
      donate: the state's buffers are donated (the input state must not be used again).
    `chunk` comes from `put_chunk(host, mesh, loop)`; `rng` is the run's base key (step s uses
    fold_in(rng, s)); the state lives replicated on the mesh (`create_train_state(..,
    mesh=mesh)`). Metrics are stacked over the k steps. `finite` is cumulative: False from the
    first non-finite step on, and no update is applied after it. `ok` (a replicated bool, the
    last `finite` of the previous call) carries that across calls without a host round trip:
    given False, a call applies nothing, so a loop that looks only now and then never trains
    past a NaN. `stop` (python loop only): asked before each step after the first; True ends
    the call early, and the metrics then cover the steps done (a preemption on CPU need not
    wait for the whole chunk).
    """
    kind = loop_kind(loop, mesh)
    rep, rows = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    step = functools.partial(train_step, model=model, tx=tx, preprocess=preprocess,
                             label_smoothing=label_smoothing)
    arrays = parallel.replicate(tuple(resident), mesh) if resident is not None else ()

    def one(state, x, rng, arrays):
        if arrays:
            idx = jax.lax.with_sharding_constraint(x["index"], rows)
            x = {"image": jnp.take(arrays[0], idx, axis=0),
                 "label": jnp.take(arrays[1], idx, axis=0)}
        return step(state, jax.lax.with_sharding_constraint(x, rows), rng)

    def python_step(state, x, rng, ok, arrays):
        return _guarded(lambda s, b: one(s, b, rng, arrays), state, x, ok)

    def scan_steps(state, xs, rng, ok, arrays):
        xs = jax.lax.with_sharding_constraint(xs, parallel.batch_sharding(mesh, 1))

        def body(carry, x):
            state, metrics, ok = _guarded(lambda s, b: one(s, b, rng, arrays), carry[0], x,
                                          carry[1])
            return (state, ok), metrics

        (state, _), metrics = jax.lax.scan(body, (state, ok), xs)
        return state, metrics

    donated = (0,) if donate else ()
    # jit compiles lazily: only the kind that is called is ever compiled.
    compiled = jax.jit(python_step if kind == "python" else scan_steps, out_shardings=rep,
                       donate_argnums=donated)
    true = []

    def fn(state: TrainState, chunk: Any, rng: Any, ok: Optional[jax.Array] = None,
           stop: Optional[Callable[[], bool]] = None) -> tuple[TrainState, dict]:
        rng = parallel.replicate_key(rng, mesh)
        if ok is None:
            if not true:
                true.append(jax.device_put(np.array(True), rep))
            ok = true[0]
        if kind == "scan":
            return compiled(state, chunk, rng, ok, arrays)
        out = []
        for x in chunk:
            if out and stop is not None and stop():
                break  # the steps done so far are the chunk
            state, metrics, ok = compiled(state, x, rng, ok, arrays)
            out.append(metrics)
        return state, jax.tree.map(lambda *xs: jnp.stack(xs), *out)

    return fn


def make_eval_fn(model: nn.Module, mesh: Mesh, *,
                 preprocess: Optional[Preprocess] = None) -> Callable:
    """Compiled `fn(state, batch) -> sums` (see `step.eval_step`); `batch` holds global arrays
    (`parallel.to_global` of each process's rows). Every process must call it the same number
    of times (the pipelines pad the last batches)."""
    step = functools.partial(eval_step, model=model, preprocess=preprocess)
    rep = parallel.replicated(mesh)
    return jax.jit(step, in_shardings=(rep, parallel.batch_sharding(mesh)), out_shardings=rep)

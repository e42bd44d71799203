"""The pure train and eval steps, and their compiled forms on a device mesh.

Parallelism: the state is replicated and the batch sharded along the mesh axis `data`; `jit`
compiles one program for all devices and XLA inserts the gradient all-reduce. BatchNorm
statistics follow the model's `bn_num_groups` (see `resnet_jax.parallel.bn_num_groups`):
1 group = global (sync) BN; more groups = each group of devices normalizes its own examples.
Running statistics are one replicated array (the mean of the groups' statistics), so every
device holds the same values by construction.

Metrics of `train_step` (global-batch means, float32 scalars): `loss` (cross-entropy, with
label smoothing if set), `top1`, `top5` (fractions correct, in [0, 1]), `lr` (of this update),
`grad_norm` (global L2 norm of the loss gradient, before weight decay), `finite` (bool).
`eval_step` returns sums over the unmasked examples: `loss`, `top1`, `top5` (numbers
correct), `count`; `resnet_jax.train.metrics.eval_summary` turns them into errors in percent.

Mixed precision: a model built with `dtype=bfloat16` computes in bf16 with float32 parameters;
logits are cast to float32 before the loss, and the optimizer state stays float32.

rng: the `rng` handed to the step functions is the run's base key; step s uses
`jax.random.fold_in(rng, s)` (s = state.step), so results do not depend on `steps_per_dispatch`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh

from resnet_jax import parallel
from resnet_jax.train.optim import current_lr

Preprocess = Callable[[jax.Array, jax.Array, bool], jax.Array]


class TrainState(struct.PyTreeNode):
    """step: int32 scalar (updates done); params, batch_stats: the model's variables;
    opt_state: the optax state (float32)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def _as_float(rng: jax.Array, images: jax.Array, train: bool) -> jax.Array:
    del rng, train
    return images.astype(jnp.float32)


def _global_key(rng: Any, mesh: Mesh) -> jax.Array:
    """The key replicated over the mesh (the same key on every process); no-op if already so.

    A typed key is moved as its raw uint32 data (device_put onto devices of other processes
    takes host values only) and re-wrapped with its own impl (threefry, rbg, ...).
    """
    sharding = parallel.replicated(mesh)
    if isinstance(rng, jax.Array) and rng.sharding == sharding:
        return rng
    if isinstance(rng, jax.Array) and jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        data = jax.device_put(np.asarray(jax.random.key_data(rng)), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(rng))
    return jax.device_put(np.asarray(rng), sharding)


def create_train_state(rng: Any, model: nn.Module, tx: optax.GradientTransformation,
                       image_shape: tuple, *, mesh: Optional[Mesh] = None) -> TrainState:
    """Initialize the model (He init, BN scale 1) and the optimizer; step 0.

    Args:
      rng: a PRNG key (typed, any impl, or raw uint32); the same on every process.
      image_shape: (H, W, 3) of one training image.
      mesh: if given, the state is created replicated on the mesh (what `make_train_fn` and
        the other compiled functions expect; needed with several processes).
    """
    def init(key):
        images = jnp.zeros((1, *image_shape), jnp.float32)
        variables = model.init(key, images, train=False)
        params = variables["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))

    if mesh is None:
        return jax.jit(init)(rng)
    sharding = parallel.replicated(mesh)
    return jax.jit(init, out_shardings=sharding)(_global_key(rng, mesh))


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy in float32: logits (B, C), int labels (B,) -> (B,)."""
    logits = logits.astype(jnp.float32)
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def topk_correct(scores: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """(B,) float 1.0 where the label is among the k highest scores (B, C).

    Counts the other classes scored at least as high as the label (cheaper than a sort): a tie
    counts against the label, so a constant output is never "correct". A row whose label score
    is not finite, or that holds a NaN anywhere, is never correct (a diverged model reports
    100% error, not 0%).
    """
    label_score = jnp.take_along_axis(scores, labels[:, None], axis=-1)
    rivals = jnp.sum(scores >= label_score, axis=-1) - 1
    valid = jnp.isfinite(label_score[:, 0]) & ~jnp.any(jnp.isnan(scores), axis=-1)
    return (valid & (rivals < k)).astype(jnp.float32)


def _select(pred: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def train_step(state: TrainState, batch: dict, rng: jax.Array, *, model: nn.Module,
               tx: optax.GradientTransformation, preprocess: Optional[Preprocess] = None,
               label_smoothing: float = 0.0) -> tuple[TrainState, dict]:
    """One SGD update on a (global) batch; pure, so it runs under jit on any mesh.

    Args:
      batch: {'image': (B, H, W, 3) uint8 or float, 'label': int32 (B,)}.
      rng: the base key; this step uses fold_in(rng, state.step) for its augmentation.
      preprocess: (rng, images, train) -> float32 images, e.g. the data pipeline's
        `device_preprocess`; default: cast to float32.
    Returns (new_state, metrics) (see the module docstring). If the loss or the gradient is not
    finite, the input state is returned unchanged and metrics['finite'] is False.
    """
    preprocess = preprocess or _as_float
    images = preprocess(jax.random.fold_in(rng, state.step), batch["image"], True)
    labels = batch["label"]

    def loss_fn(params):
        logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                      images, train=True, mutable=["batch_stats"])
        logits = logits.astype(jnp.float32)
        return jnp.mean(cross_entropy(logits, labels, label_smoothing)), (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optax.tree.norm(grads)
    deltas, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, deltas),
                              batch_stats=updates.get("batch_stats", {}), opt_state=opt_state)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    metrics = {"loss": loss, "top1": jnp.mean(topk_correct(logits, labels, 1)),
               "top5": jnp.mean(topk_correct(logits, labels, min(5, logits.shape[-1]))),
               "lr": current_lr(opt_state), "grad_norm": grad_norm, "finite": finite}
    return _select(finite, new_state, state), metrics


def eval_step(state: TrainState, batch: dict, *, model: nn.Module,
              preprocess: Optional[Preprocess] = None) -> dict:
    """Sums over the unmasked examples of a batch: {'loss', 'top1', 'top5', 'count'} (float32).

    Args:
      batch: {'image': (B, V, H, W, 3) (V views per example) or (B, H, W, 3), or a tuple of
        such arrays of different sizes (multi-scale testing: the views of each scale),
        'label': (B,), 'mask': bool (B,), optional: False rows are padding and count for
        nothing}.
    The softmax probabilities of all views (of all scales) are averaged (the paper's 10-crop and
    multi-scale testing); the loss is the cross-entropy of that average.
    """
    preprocess = preprocess or _as_float
    stacks, labels = batch["image"], batch["label"]
    if not isinstance(stacks, (tuple, list)):
        stacks = (stacks,)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    per_view = []
    for images in stacks:
        if images.ndim == 4:
            images = images[:, None]
        b, v = images.shape[:2]
        # Eval preprocessing is deterministic; the key is only there to fill the signature.
        flat = preprocess(jax.random.key(0), images.reshape((b * v,) + images.shape[2:]),
                          False)
        logits = model.apply(variables, flat, train=False).astype(jnp.float32)
        per_view.append(jax.nn.log_softmax(logits).reshape(b, v, -1))
    logp = jnp.concatenate(per_view, axis=1)
    # log of the mean over views of the probabilities, stably.
    logp = jax.nn.logsumexp(logp, axis=1) - jnp.log(float(logp.shape[1]))
    loss = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
    mask = batch.get("mask")
    keep = jnp.ones(labels.shape, bool) if mask is None else mask.astype(bool)
    # where, not a product: a padded row may hold anything, even a NaN.
    total = lambda x: jnp.sum(jnp.where(keep, x, 0.0))  # noqa: E731
    return {"loss": total(loss), "top1": total(topk_correct(logp, labels, 1)),
            "top5": total(topk_correct(logp, labels, min(5, logp.shape[-1]))),
            "count": total(jnp.ones(labels.shape, jnp.float32))}


LOOPS = ("auto", "scan", "python")


def _loop_kind(loop: str, mesh: Mesh) -> str:
    """'scan' or 'python' for the k steps of one dispatch.

    XLA:CPU runs convolutions inside a while loop (a rolled `lax.scan`) about 9x slower than at
    the top level of a program (jax-ml/jax#12868; measured on ResNet-8, batch 32: 711 vs 6141
    images/s), so on CPU `auto` makes the k steps k calls of one compiled step; accelerators
    get one `lax.scan` (no host round trip between steps). Results are the same either way.
    """
    if loop not in LOOPS:
        raise ValueError(f"loop={loop!r} is not allowed; choose one of {list(LOOPS)}")
    if loop != "auto":
        return loop
    return "python" if mesh.devices.flat[0].platform == "cpu" else "scan"


def _guarded(step_fn: Callable, state: TrainState, x: Any, ok: jax.Array):
    """One step, applied only if it and every earlier step of the dispatch were finite."""
    new_state, metrics = step_fn(state, x)
    ok = ok & metrics["finite"]
    return _select(ok, new_state, state), dict(metrics, finite=ok), ok


def _scan_steps(step_fn: Callable, state: TrainState, xs: Any,
                ok: jax.Array) -> tuple[TrainState, dict]:
    """Run `step_fn(state, x)` over the leading axis of xs; after the first non-finite step
    (or from the start if `ok` is False), no update is applied (and those steps report
    finite=False)."""
    def body(carry, x):
        state, metrics, ok = _guarded(step_fn, carry[0], x, carry[1])
        return (state, ok), metrics

    (state, _), metrics = jax.lax.scan(body, (state, ok), xs)
    return state, metrics


def _stack(metrics: list) -> dict:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *metrics)


def _to_global_if_host(batch: dict, mesh: Mesh, batch_axis: int) -> dict:
    if any(isinstance(v, np.ndarray) for v in jax.tree.leaves(batch)):
        return parallel.to_global(batch, mesh, batch_axis)
    return batch


def make_train_fn(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh, *,
                  preprocess: Optional[Preprocess] = None, label_smoothing: float = 0.0,
                  steps_per_dispatch: int = 1, donate: bool = True,
                  loop: str = "auto") -> Callable:
    """Compiled `fn(state, batch, rng, ok=None) -> (state, metrics)` on `mesh`, state buffers
    donated.

    steps_per_dispatch=1: batch leaves (B, ...), metrics scalars. k > 1: batch leaves stacked
    (k, B, ...), k steps per call (`loop`: 'scan' one `lax.scan`, 'python' k calls of one
    compiled step, 'auto' python on CPU, scan elsewhere), metrics stacked (k,). A batch of
    process-local numpy arrays is turned into global arrays (`parallel.to_global`); the state
    must live replicated on the mesh (`create_train_state(..., mesh=mesh)`).

    `finite` in the metrics is cumulative: False from the first non-finite step on, and no
    update is applied after it. `ok` (a replicated bool, e.g. the last `finite` of the previous
    call) carries that across calls without a host round trip: given False, the call applies
    nothing, so a loop that checks the flag only now and then never trains past a NaN.
    """
    if steps_per_dispatch < 1:
        raise ValueError(f"train.steps_per_dispatch={steps_per_dispatch} must be >= 1")
    kind = _loop_kind(loop, mesh)
    step = functools.partial(train_step, model=model, tx=tx, preprocess=preprocess,
                             label_smoothing=label_smoothing)
    rep, rows, stacked = (parallel.replicated(mesh), parallel.batch_sharding(mesh),
                          parallel.batch_sharding(mesh, 1))
    donated = (0,) if donate else ()

    def once(state, batch, rng, ok):
        batch = jax.lax.with_sharding_constraint(batch, rows)
        return _guarded(lambda s, b: step(s, b, rng), state, batch, ok)

    def scan(state, batch, rng, ok):
        batch = jax.lax.with_sharding_constraint(batch, stacked)
        return _scan_steps(lambda s, b: step(s, b, rng), state, batch, ok)

    # jit compiles lazily: only the variant that is called is ever compiled.
    once_c = jax.jit(once, in_shardings=(rep, rows, rep, rep), out_shardings=rep,
                     donate_argnums=donated)
    scan_c = jax.jit(scan, in_shardings=(rep, stacked, rep, rep), out_shardings=rep,
                     donate_argnums=donated)
    true = []

    def fn(state: TrainState, batch: dict, rng: Any,
           ok: Optional[jax.Array] = None) -> tuple[TrainState, dict]:
        rng = _global_key(rng, mesh)
        if not true:
            true.append(jax.device_put(np.array(True), rep))
        ok = true[0] if ok is None else ok
        if steps_per_dispatch == 1:
            state, metrics, _ = once_c(state, _to_global_if_host(batch, mesh, 0), rng, ok)
            return state, metrics
        if kind == "scan":
            return scan_c(state, _to_global_if_host(batch, mesh, 1), rng, ok)
        out = []
        for i in range(steps_per_dispatch):
            one = _to_global_if_host({k: v[i] for k, v in batch.items()}, mesh, 0)
            state, metrics, ok = once_c(state, one, rng, ok)
            out.append(metrics)
        return state, _stack(out)

    return fn


def make_indexed_train_fn(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh, *,
                          preprocess: Optional[Preprocess] = None, label_smoothing: float = 0.0,
                          donate: bool = True, loop: str = "auto") -> Callable:
    """The device-resident fast path: `fn(state, images_all, labels_all, indices, rng, ok=None)`.

    images_all (N, H, W, 3) uint8 and labels_all (N,) int32: the whole training split,
    replicated on the mesh (put them once with `parallel.replicate`); indices int32 (k, B): row
    indices of each of k steps' global batches, sharded along `data` on axis 1 (process-local
    numpy (k, b) is converted with `parallel.to_global`). The k steps each gather their batch
    on the devices (`loop` and `ok` as in `make_train_fn`). Returns (state, metrics stacked
    over k).
    """
    kind = _loop_kind(loop, mesh)
    step = functools.partial(train_step, model=model, tx=tx, preprocess=preprocess,
                             label_smoothing=label_smoothing)
    rep, rows, stacked = (parallel.replicated(mesh), parallel.batch_sharding(mesh),
                          parallel.batch_sharding(mesh, 1))
    donated = (0,) if donate else ()

    def gather_step(images_all, labels_all, rng):
        def one(state, idx):
            idx = jax.lax.with_sharding_constraint(idx, rows)
            batch = {"image": jnp.take(images_all, idx, axis=0),
                     "label": jnp.take(labels_all, idx, axis=0)}
            return step(state, jax.lax.with_sharding_constraint(batch, rows), rng)
        return one

    def once(state, images_all, labels_all, idx, rng, ok):
        return _guarded(gather_step(images_all, labels_all, rng), state, idx, ok)

    def scan(state, images_all, labels_all, indices, rng, ok):
        return _scan_steps(gather_step(images_all, labels_all, rng), state, indices, ok)

    once_c = jax.jit(once, in_shardings=(rep, rep, rep, rows, rep, rep), out_shardings=rep,
                     donate_argnums=donated)
    scan_c = jax.jit(scan, in_shardings=(rep, rep, rep, stacked, rep, rep), out_shardings=rep,
                     donate_argnums=donated)
    true = []

    def fn(state, images_all, labels_all, indices, rng, ok=None):
        rng = _global_key(rng, mesh)
        if not true:
            true.append(jax.device_put(np.array(True), rep))
        ok = true[0] if ok is None else ok
        if kind == "scan":
            if isinstance(indices, np.ndarray):
                indices = parallel.to_global({"i": indices}, mesh, batch_axis=1)["i"]
            return scan_c(state, images_all, labels_all, indices, rng, ok)
        out = []
        for i in range(indices.shape[0]):
            idx = _to_global_if_host({"i": indices[i]}, mesh, 0)["i"]
            state, metrics, ok = once_c(state, images_all, labels_all, idx, rng, ok)
            out.append(metrics)
        return state, _stack(out)

    return fn


def make_eval_fn(model: nn.Module, mesh: Mesh, *,
                 preprocess: Optional[Preprocess] = None) -> Callable:
    """Compiled `fn(state, batch) -> sums` (see `eval_step`); numpy batches are process-local.

    Every process must call it the same number of times (the pipelines pad the last batches).
    """
    step = functools.partial(eval_step, model=model, preprocess=preprocess)
    rep = parallel.replicated(mesh)
    compiled = jax.jit(step, in_shardings=(rep, parallel.batch_sharding(mesh)), out_shardings=rep)

    def fn(state: TrainState, batch: dict) -> dict:
        return compiled(state, _to_global_if_host(batch, mesh, 0))

    return fn

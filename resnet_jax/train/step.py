"""The pure train and eval steps (their compiled forms on a mesh: `resnet_jax.train.dispatch`).

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
`jax.random.fold_in(rng, s)` (s = state.step), so results do not depend on how many steps a
dispatch runs, and a resumed run draws what the uninterrupted one drew. The augmentation takes
that key itself and the model's 'dropout' rng collection (the dropout shortcut) a key folded
from it (`dropout_key`).
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh

from resnet_jax import parallel
from resnet_jax.data.pipeline import Preprocess
from resnet_jax.train.optim import current_lr



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


def create_train_state(rng: Any, model: nn.Module, tx: optax.GradientTransformation,
                       image_shape: tuple, *, mesh: Optional[Mesh] = None,
                       replicas: int = 1) -> TrainState:
    """Initialize the model (He init, BN scale 1) and the optimizer; step 0.

    Args:
      rng: a PRNG key (typed, any impl, or raw uint32); the same on every process. With
        `replicas` > 1, one key per replica stacked on a leading axis ((N,) typed or (N, 2)
        raw).
      image_shape: (H, W, 3) of one training image.
      mesh: if given, the state is created replicated on the mesh (what the compiled functions
        of `resnet_jax.train.dispatch` expect; needed with several processes).
      replicas: N > 1 initializes N independent nets in one program (vmap over the keys): every
        leaf gets a leading replica axis (N, ...), replica i exactly the state of a
        `replicas=1` call with key i (the initializers draw element-wise).
    """
    def init(key):
        images = jnp.zeros((1, *image_shape), jnp.float32)
        variables = model.init(key, images, train=False)
        params = variables["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))

    if replicas > 1:
        init = jax.vmap(init)
    if mesh is None:
        return jax.jit(init)(rng)
    sharding = parallel.replicated(mesh)
    return jax.jit(init, out_shardings=sharding)(parallel.replicate_key(rng, mesh))


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


def select(pred: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


# Folded into a step's key for the model's own randomness: a stream apart from the
# augmentation's, which uses the step's key as it is.
_DROPOUT_STREAM = 1


def dropout_key(step_key: jax.Array) -> jax.Array:
    """The 'dropout' rng of the step whose key is `step_key` (= fold_in(base, step))."""
    return jax.random.fold_in(step_key, _DROPOUT_STREAM)


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
    step_key = jax.random.fold_in(rng, state.step)
    images = preprocess(step_key, batch["image"], True)
    labels = batch["label"]

    def loss_fn(params):
        logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                      images, train=True, mutable=["batch_stats"],
                                      rngs={"dropout": dropout_key(step_key)})
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
    return select(finite, new_state, state), metrics


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

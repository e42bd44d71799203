"""Optimizers and learning-rate schedules of the paper (and of large-batch follow-ups), from optax.

Reads the `optim` section of the config (see docs/ARCHITECTURE.md, "Config schema"):

- `name`: 'sgd' (momentum SGD, Nesterov optional) or 'lars' (You et al. 2017, very large batches).
- `lr`, `lr_scaling` ('none' | 'linear': lr * batch_size / base_batch_size, Goyal et al. 2017).
- `weight_decay`: L2 "as in the paper": `weight_decay * w` is added to the gradient before the
  momentum (`optax.add_decayed_weights` before `optax.sgd`), which is exactly Caffe's and
  PyTorch's SGD weight decay. `decay_bn_and_bias=False` leaves every per-layer vector (BN
  scale and bias, dense/conv biases; also when `scan_blocks` stacks them) undecayed (and, for
  LARS, out of the trust ratio, which is taken per layer).
- `schedule`: 'piecewise' (multiply by `decay_factor` at each of `boundaries`) or 'cosine'
  (to 0 at `num_steps`); `schedule_unit`: 'steps' or 'epochs' (boundaries and warmup_length).
- `warmup`: 'none' | 'linear' (from `warmup_lr` to the base lr over `warmup_length`) |
  'constant' (`warmup_lr` for `warmup_length`, e.g. the paper's ResNet-110: 0.01 for 400
  iterations, then 0.1).

The schedule is indexed by the number of updates already done, so `schedule(s)` is the lr of
the update that takes the state from step s to s+1, and a boundary b means "from the update
after b updates on" (the paper's "divide by 10 at 32k iterations": steps 0..31999 at 0.1).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from resnet_jax import schema
from resnet_jax.models.layout import is_stacked, layer_ndim

def _choice(field: str, value: Any) -> None:
    schema.check_choice(f"optim.{field}", value)


def _to_steps(value: float, unit: str, steps_per_epoch: int) -> int:
    """A length in `unit` ('steps' | 'epochs') as a whole number of steps."""
    return int(round(value * steps_per_epoch)) if unit == "epochs" else int(round(value))


def base_learning_rate(optim_config: Any, batch_size: Optional[int] = None) -> float:
    """The peak lr: `lr`, times `batch_size / base_batch_size` under the linear scaling rule."""
    _choice("lr_scaling", optim_config.lr_scaling)
    if optim_config.lr_scaling == "none":
        return float(optim_config.lr)
    if batch_size is None:
        raise ValueError("optim.lr_scaling='linear' needs the global batch_size")
    return float(optim_config.lr) * batch_size / float(optim_config.base_batch_size)


def make_schedule(optim_config: Any, steps_per_epoch: int, *, batch_size: Optional[int] = None,
                  num_steps: Optional[int] = None) -> optax.Schedule:
    """The learning rate as a function of the number of updates done (an optax schedule).

    Args:
      optim_config: the config's `optim` section (fields listed in the module docstring).
      steps_per_epoch: converts `boundaries` / `warmup_length` when `schedule_unit='epochs'`.
      batch_size: global batch size, needed only for `lr_scaling='linear'`.
      num_steps: total training steps, needed only for `schedule='cosine'` (decays to 0 there).
    """
    c = optim_config
    _choice("schedule", c.schedule)
    _choice("schedule_unit", c.schedule_unit)
    _choice("warmup", c.warmup)
    peak = base_learning_rate(c, batch_size)
    warm = 0 if c.warmup == "none" else _to_steps(c.warmup_length, c.schedule_unit, steps_per_epoch)

    if c.schedule == "piecewise":
        bounds = [_to_steps(b, c.schedule_unit, steps_per_epoch) for b in c.boundaries]
        if bounds != sorted(bounds):
            raise ValueError(f"optim.boundaries={list(c.boundaries)} must be increasing")
        main = optax.piecewise_constant_schedule(peak, {b: float(c.decay_factor) for b in bounds})
    else:
        if num_steps is None:
            raise ValueError("optim.schedule='cosine' needs num_steps (train.num_steps)")
        cosine = optax.cosine_decay_schedule(peak, decay_steps=max(1, num_steps - warm))
        main = lambda step: cosine(jnp.maximum(step - warm, 0))  # noqa: E731

    if c.warmup == "none" or warm <= 0:
        return main
    if c.warmup == "constant":
        head = optax.constant_schedule(float(c.warmup_lr))
    else:
        head = optax.linear_schedule(float(c.warmup_lr), peak, transition_steps=warm)
    # Boundaries of the main schedule stay absolute: warmup replaces its first `warm` steps.
    return lambda step: jnp.where(step < warm, head(step), main(step))


def decay_mask(params: Any, decay_bn_and_bias: bool) -> Any:
    """Which parameters get weight decay: all, or only the layers' matrices (conv and dense
    kernels).

    Decided per layer, by role: a parameter whose layer's own rank is 1 (BN scale and bias,
    biases) is a vector even when `scan_blocks` stacked it to (blocks, C)
    (`resnet_jax.models.layer_ndim`), so the mask is the same with and without scanning.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, p: bool(decay_bn_and_bias) or layer_ndim(path, p) > 1, params)


def scale_by_layer_trust_ratio(trust_coefficient: float = 0.001,
                               eps: float = 0.0) -> optax.GradientTransformation:
    """`optax.scale_by_trust_ratio` with one ratio per layer: a variable that `scan_blocks`
    stacked gets one ratio per block (norms over all but its leading axis), not one for the
    whole stage. Otherwise the same arithmetic (and the same empty state) as optax's."""
    def norm(x, stacked):
        if not stacked:
            return optax.safe_norm(x, 0.0)
        rows = optax.safe_norm(x.reshape(x.shape[0], -1), 0.0, axis=1)
        return rows.reshape((x.shape[0],) + (1,) * (x.ndim - 1))

    def scale(path, update, param):
        stacked = is_stacked(path)
        param_norm, update_norm = norm(param, stacked), norm(update, stacked)
        ratio = trust_coefficient * param_norm / (update_norm + eps)
        zero = jnp.logical_or(param_norm == 0.0, update_norm == 0.0)
        return update * jnp.where(zero, jnp.array(1.0, dtype=param.dtype), ratio)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("scale_by_layer_trust_ratio needs the params")
        return jax.tree_util.tree_map_with_path(scale, updates, params), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def _sgd(learning_rate: Any, *, momentum: float, nesterov: bool, weight_decay: float,
         mask: Callable) -> optax.GradientTransformation:
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=mask),
        optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov))


def _lars(learning_rate: Any, *, momentum: float, nesterov: bool, weight_decay: float,
          mask: Callable) -> optax.GradientTransformation:
    # optax.lars's chain (same state structure, so older LARS checkpoints restore) with the
    # per-layer trust ratio.
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=mask),
        optax.masked(scale_by_layer_trust_ratio(trust_coefficient=0.001), mask),
        optax.scale_by_learning_rate(learning_rate),
        optax.trace(decay=momentum, nesterov=nesterov))


def make_optimizer(optim_config: Any, steps_per_epoch: int, *, batch_size: Optional[int] = None,
                   num_steps: Optional[int] = None) -> optax.GradientTransformation:
    """SGD or LARS with weight decay (mask included) and the schedule of `make_schedule`.

    Wrapped in `optax.inject_hyperparams`, so the lr of the last update can be read back from the
    optimizer state with `current_lr(opt_state)`.
    """
    c = optim_config
    _choice("name", c.name)
    schedule = make_schedule(c, steps_per_epoch, batch_size=batch_size, num_steps=num_steps)
    build = _sgd if c.name == "sgd" else _lars
    mask = lambda params: decay_mask(params, c.decay_bn_and_bias)  # noqa: E731

    def factory(learning_rate):
        return build(learning_rate, momentum=float(c.momentum), nesterov=bool(c.nesterov),
                     weight_decay=float(c.weight_decay), mask=mask)

    return optax.inject_hyperparams(factory)(learning_rate=schedule)


def current_lr(opt_state: Any) -> jax.Array:
    """The lr of the most recent update (schedule(0) before any), or NaN if not injected."""
    # optax has had several injected-state classes (InjectHyperparamsState,
    # InjectStatefulHyperparamsState): match on the `hyperparams` dict, not the class.
    injected = lambda x: isinstance(getattr(x, "hyperparams", None), dict)  # noqa: E731
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=injected) if injected(s)]
    if not found or "learning_rate" not in found[0].hyperparams:
        return jnp.asarray(jnp.nan, jnp.float32)
    return jnp.asarray(found[0].hyperparams["learning_rate"], jnp.float32)

"""Batch normalization whose statistics can be global, per device, or per group of devices.

Under `jax.jit` with the batch sharded along a mesh axis, reducing over the whole batch already
gives global ("sync") statistics: XLA inserts the cross-device reductions. To normalize each
device's examples by their own statistics (the paper's multi-GPU training, the flax TPU example)
or groups of k devices (large TPU runs), this BatchNorm splits the batch into `num_groups`
contiguous groups and reduces within each. Because the batch is sharded contiguously, group g is
exactly the examples of devices [g*k, (g+1)*k): no per-device code is needed.

Running statistics are one array (replicated), updated with the mean over groups of the group
statistics, so they are identical on every device by construction.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


class BatchNorm(nn.Module):
    """BatchNorm over all axes but the last (channels), with optional group statistics.

    Attributes:
      use_running_average: eval mode (normalize with `batch_stats`) if True.
      momentum: running-average decay (0.9, as flax and the TF/TPU reference use).
      epsilon: added to the variance.
      dtype: output dtype (compute dtype); statistics are always reduced in float32.
      param_dtype: dtype of `scale` and `bias`.
      scale_init: initializer of `scale` (zeros for the zero-init-residual trick).
      num_groups: split the batch (axis 0) into this many contiguous groups, each normalized by
        its own statistics. 1 = statistics over the whole (possibly sharded) batch.
      axis_name, axis_index_groups: additionally average the statistics over a named axis
        (for code running inside `shard_map`/`pmap`), as flax's BatchNorm does.

    Shapes: x (B, ..., C) -> (B, ..., C). Variables: params `scale`, `bias` (C,);
    batch_stats `mean`, `var` (C,), float32.
    """

    use_running_average: Optional[bool] = None
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32
    scale_init: Callable = nn.initializers.ones
    num_groups: int = 1
    axis_name: Optional[str] = None
    axis_index_groups: Optional[Sequence[Sequence[int]]] = None

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: Optional[bool] = None) -> jax.Array:
        use_ra = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        channels = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32)
        scale = self.param("scale", self.scale_init, (channels,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (channels,), self.param_dtype)

        if use_ra:
            mean, var = ra_mean.value, ra_var.value
            mul = scale.astype(jnp.float32) * jax.lax.rsqrt(var + self.epsilon)
            add = bias.astype(jnp.float32) - mean * mul
            y = x.astype(jnp.float32) * mul + add
            return y.astype(self.dtype or x.dtype)

        groups = self.num_groups
        batch = x.shape[0]
        if groups < 1 or batch % groups:
            raise ValueError(
                f"BatchNorm num_groups={groups} must be >= 1 and divide the batch size {batch}")
        xg = x.astype(jnp.float32).reshape((groups, batch // groups) + x.shape[1:])
        axes = tuple(range(1, xg.ndim - 1))
        mean = jnp.mean(xg, axis=axes)  # (G, C)
        mean2 = jnp.mean(jnp.square(xg), axis=axes)
        if self.axis_name is not None:
            mean, mean2 = jax.lax.pmean((mean, mean2), self.axis_name,
                                        axis_index_groups=self.axis_index_groups)
        # E[x^2] - E[x]^2 in float32, as flax does: one pass over the activations.
        var = jnp.maximum(mean2 - jnp.square(mean), 0.0)

        if not self.is_initializing():
            m = self.momentum
            ra_mean.value = m * ra_mean.value + (1.0 - m) * jnp.mean(mean, axis=0)
            ra_var.value = m * ra_var.value + (1.0 - m) * jnp.mean(var, axis=0)

        mul = scale.astype(jnp.float32) * jax.lax.rsqrt(var + self.epsilon)  # (G, C)
        add = bias.astype(jnp.float32) - mean * mul
        bshape = (groups,) + (1,) * (xg.ndim - 2) + (channels,)
        y = xg * mul.reshape(bshape) + add.reshape(bshape)
        return y.reshape(x.shape).astype(self.dtype or x.dtype)

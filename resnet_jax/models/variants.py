"""The shortcut variants of He et al. 2016, "Identity Mappings in Deep Residual Networks"
(Fig. 2, Table 1): how a unit's residual F(x) and shortcut h(x) are added.

  'identity'        F + h                                  (the 2015 paper; default)
  'scale'           residual_scale * F + shortcut_scale * h  (constant scaling, lambda)
  'exclusive_gate'  g * F + (1 - g) * h                    (highway-style gating)
  'shortcut_gate'   F + (1 - g) * h                        (gating the shortcut only)
  'dropout'         F + m * h, m ~ Bernoulli(1 - rate)      (training; F + (1 - rate) h at eval)

g(x) = sigmoid(1x1 conv(x) + b_g) has the unit's output channels and stride, reads the unit's
input x, and its bias starts at `gate_bias` (b_g: very negative opens the shortcut, very
positive the residual branch). The paper's 1x1-conv shortcut on every unit is option C
(`shortcut='C'`), a shortcut option rather than a variant here.

The dropout shortcut is the paper's (Sec. 3.1, Table 1 "dropout shortcut 1-0.5"): a scale
lambda on h with expectation 1 - rate (0.5), which it compares to constant scaling by 0.5.
So the kept values are not rescaled by 1 / (1 - rate) as `nn.Dropout` does (that would keep
the expectation at 1), and evaluation scales h by 1 - rate (the net of 'scale' with
shortcut_scale = 1 - rate, bitwise). Its mask comes from the 'dropout' rng collection:
`apply(..., rngs={'dropout': key})`, which the training step derives from the step's own key
(`resnet_jax.train.step`), so a resumed run draws the same masks (those `nn.Dropout` drew
before the paper's scaling, from the same submodule name).
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax import schema

SHORTCUT_VARIANTS = schema.ENUMS["model.shortcut_variant"]


class ShortcutMerge(nn.Module):
    """residual (B, H, W, C), shortcut (B, H, W, C), x (B, H*stride, W*stride, C_in) ->
    the variant's sum (B, H, W, C). Parameters: the gate's 1x1 conv (kernel and bias) for
    the gating variants, none otherwise."""

    variant: str
    stride: int
    conv: Callable[..., nn.Module]
    shortcut_scale: float = 1.0
    residual_scale: float = 1.0
    gate_bias: float = 0.0
    dropout_rate: float = 0.5
    deterministic: bool = True

    @nn.compact
    def __call__(self, residual: jax.Array, shortcut: jax.Array, x: jax.Array) -> jax.Array:
        if self.variant == "scale":
            return residual * self.residual_scale + shortcut * self.shortcut_scale
        if self.variant == "dropout":
            return residual + ShortcutDropout(self.dropout_rate, self.deterministic,
                                              name="dropout")(shortcut)
        if self.variant not in ("exclusive_gate", "shortcut_gate"):
            raise ValueError(f"shortcut_variant must be one of {SHORTCUT_VARIANTS}, got "
                             f"{self.variant!r}")
        s = (self.stride, self.stride)
        g = nn.sigmoid(self.conv(residual.shape[-1], (1, 1), strides=s, use_bias=True,
                                 bias_init=nn.initializers.constant(self.gate_bias),
                                 name="gate")(x))
        if self.variant == "exclusive_gate":
            return g * residual + (1.0 - g) * shortcut
        return residual + (1.0 - g) * shortcut


class ShortcutDropout(nn.Module):
    """h * m, m ~ Bernoulli(1 - rate) per value, at training; h * (1 - rate) at evaluation:
    a scale of expectation 1 - rate, the paper's (module docstring). The mask is
    `nn.Dropout`'s draw (its rng, probability and shape), without its rescaling."""

    rate: float
    deterministic: bool

    @nn.compact
    def __call__(self, shortcut: jax.Array) -> jax.Array:
        keep = 1.0 - self.rate
        if self.deterministic:
            return shortcut * keep
        mask = jax.random.bernoulli(self.make_rng("dropout"), p=keep, shape=shortcut.shape)
        return jnp.where(mask, shortcut, jnp.zeros_like(shortcut))

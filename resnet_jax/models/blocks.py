"""Residual blocks (basic, bottleneck), their plain twins, and shortcut options A, B, C.

Every conv is followed by BN (paper Sec. 3.4); a block's output is ReLU(F(x) + shortcut(x)),
or ReLU(F(x)) for a plain block. Convs and BNs are passed in as factories (flax
examples/imagenet style), so one block serves every dtype, init and BN mode.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax import schema

SHORTCUTS = schema.ENUMS["model.shortcut"]
BOTTLENECK_STRIDES = schema.ENUMS["model.bottleneck_stride"]

ModuleFactory = Callable[..., nn.Module]


def zero_pad_shortcut(x: jax.Array, out_channels: int, stride: int) -> jax.Array:
    """Option A: identity subsampled by `stride`, extra channels filled with zeros.

    x (B, H, W, C) -> (B, ceil(H/stride), ceil(W/stride), out_channels); no parameters.
    """
    if stride > 1:
        x = x[:, ::stride, ::stride, :]
    extra = out_channels - x.shape[-1]
    if extra < 0:
        raise ValueError(f"option A cannot reduce channels ({x.shape[-1]} -> {out_channels})")
    if extra:
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))
    return x


class Shortcut(nn.Module):
    """The shortcut branch of a residual block.

    option 'A': identity, or subsample + zero channels where the shape changes.
    option 'B': identity, or 1x1 conv (stride) + BN where the shape changes.
    option 'C': 1x1 conv (stride) + BN on every block.
    """

    out_channels: int
    stride: int
    option: str
    conv: ModuleFactory
    norm: ModuleFactory

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        changes = self.stride != 1 or x.shape[-1] != self.out_channels
        if self.option == "C" or (self.option == "B" and changes):
            y = self.conv(self.out_channels, (1, 1), strides=(self.stride, self.stride),
                          name="conv")(x)
            return self.norm(name="bn")(y)
        if self.option == "A" and changes:
            return zero_pad_shortcut(x, self.out_channels, self.stride)
        if changes:  # only reachable with an unknown option: keep the error loud
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {self.option!r}")
        return x


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34 and the CIFAR nets). Output channels = `width`."""

    width: int
    stride: int
    conv: ModuleFactory
    norm: ModuleFactory
    shortcut: str = "B"
    plain: bool = False
    zero_init_residual: bool = False
    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = (self.stride, self.stride)
        y = self.conv(self.width, (3, 3), strides=s, name="conv1")(x)
        y = self.norm(name="bn1")(y)
        self.sow("intermediates", "bn3x3", y)
        y = nn.relu(y)
        y = self.conv(self.width, (3, 3), name="conv2")(y)
        last_init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        y = self.norm(name="bn2", scale_init=last_init)(y)
        self.sow("intermediates", "bn3x3", y)
        if not self.plain:
            y = y + Shortcut(self.width, self.stride, self.shortcut, self.conv, self.norm,
                             name="downsample")(x)
        return nn.relu(y)


class Bottleneck(nn.Module):
    """1x1 (reduce) -> 3x3 -> 1x1 (expand x4) (ResNet-50/101/152). Output = 4 * `width`.

    `stride_on`: 'v1' puts the stride on the first 1x1 conv (the paper); 'v1.5' on the 3x3.
    """

    width: int
    stride: int
    conv: ModuleFactory
    norm: ModuleFactory
    shortcut: str = "B"
    plain: bool = False
    zero_init_residual: bool = False
    stride_on: str = "v1"
    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = (self.stride, self.stride)
        first, middle = (s, (1, 1)) if self.stride_on == "v1" else ((1, 1), s)
        y = self.conv(self.width, (1, 1), strides=first, name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.width, (3, 3), strides=middle, name="conv2")(y)
        y = self.norm(name="bn2")(y)
        self.sow("intermediates", "bn3x3", y)
        y = nn.relu(y)
        out = self.width * self.expansion
        y = self.conv(out, (1, 1), name="conv3")(y)
        last_init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        y = self.norm(name="bn3", scale_init=last_init)(y)
        if not self.plain:
            y = y + Shortcut(out, self.stride, self.shortcut, self.conv, self.norm,
                             name="downsample")(x)
        return nn.relu(y)


BLOCKS: dict[str, Any] = {"basic": BasicBlock, "bottleneck": Bottleneck}

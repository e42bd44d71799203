"""Residual units (basic, bottleneck), their plain twins, shortcut options A, B, C, and the unit
variants of He et al. 2016, "Identity Mappings in Deep Residual Networks" (Fig. 4).

A unit computes y = F(x) + h(x), then x_next = f(y) (2016 paper, Eq. 1); F is two 3x3 convs
(basic) or 1x1, 3x3, 1x1 x4 (bottleneck), h the shortcut, f the after-addition activation.
Where BN and ReLU go is the `unit`:

  'post'             conv-BN-ReLU-conv-BN, add, ReLU        (the 2015 paper's unit; default)
  'bn_after_add'     conv-BN-ReLU-conv, add, BN-ReLU        (its last BN moved after the add)
  'relu_before_add'  conv-BN-ReLU-conv-BN-ReLU, add         (f = identity)
  'relu_preact'      ReLU-conv-BN-ReLU-conv-BN, add         (ReLU-only pre-activation)
  'preact'           BN-ReLU-conv-BN-ReLU-conv, add         (full pre-activation)

(a bottleneck has three convs, the same pattern). As the 2016 paper describes for its
pre-activation nets, the net's first unit takes the stem's activation as its own (the stem's
BN-ReLU is computed once, before the split into the two paths), and a projection shortcut
reads the pre-activated input; in a 'preact' unit it is a bare 1x1 conv (no BN), as in the
paper's code (KaimingHe/resnet-1k-layers). The ResNet adds the extra activation such nets
need before the global pool. A plain unit is the same without h. Convs and BNs are passed in
as factories (flax examples/imagenet style), so one unit serves every dtype, init and BN mode.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax import schema

SHORTCUTS = schema.ENUMS["model.shortcut"]
BOTTLENECK_STRIDES = schema.ENUMS["model.bottleneck_stride"]
UNITS = schema.ENUMS["model.unit"]

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


def projects(option: str, stride: int, in_channels: int, out_channels: int) -> bool:
    """Whether the shortcut of option `option` is a 1x1 conv for this shape change."""
    changes = stride != 1 or in_channels != out_channels
    return option == "C" or (option == "B" and changes)


class Shortcut(nn.Module):
    """The shortcut branch of a residual block.

    option 'A': identity, or subsample + zero channels where the shape changes.
    option 'B': identity, or 1x1 conv (stride) + BN where the shape changes.
    option 'C': 1x1 conv (stride) + BN on every block.
    normalize: False leaves the BN out of the projection (full pre-activation units).
    """

    out_channels: int
    stride: int
    option: str
    conv: ModuleFactory
    norm: ModuleFactory
    normalize: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if projects(self.option, self.stride, x.shape[-1], self.out_channels):
            y = self.conv(self.out_channels, (1, 1), strides=(self.stride, self.stride),
                          name="conv")(x)
            return self.norm(name="bn")(y) if self.normalize else y
        changes = self.stride != 1 or x.shape[-1] != self.out_channels
        if self.option == "A" and changes:
            return zero_pad_shortcut(x, self.out_channels, self.stride)
        if changes:  # only reachable with an unknown option: keep the error loud
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {self.option!r}")
        return x


class _Unit(nn.Module):
    """What BasicBlock and Bottleneck share: the unit variant around their convs.

    `layers()` gives the residual branch's convs as (features, kernel size, stride); the
    variables keep torchvision's names (conv1, bn1, ..., downsample), with bn{i} before
    conv{i} in a 'preact' unit. `first`: the net's first unit (its pre-activation is the
    stem's). `merge`: a `variants.ShortcutMerge` factory for the shortcut variants of the
    2016 paper's Fig. 2, None for the identity (plain addition).
    """

    width: int
    stride: int
    conv: ModuleFactory
    norm: ModuleFactory
    shortcut: str = "B"
    plain: bool = False
    zero_init_residual: bool = False
    unit: str = "post"
    first: bool = False
    merge: Optional[ModuleFactory] = None

    def layers(self) -> list[tuple[int, int, int]]:
        raise NotImplementedError

    def _sow(self, y: jax.Array) -> None:
        self.sow("intermediates", "bn3x3", y)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        layers, unit = self.layers(), self.unit
        y = pre = x
        # Fig. 7's response of a 3x3 layer: after the BN that normalizes it, or as it is where
        # none does before the addition (the last conv of 'preact' and 'bn_after_add').
        for i, (features, k, stride) in enumerate(layers, start=1):
            last = i == len(layers)
            activate = i > 1 or not self.first
            if unit == "preact" and activate:
                y = self.norm(name=f"bn{i}")(y)
                if i > 1 and layers[i - 2][1] == 3:
                    self._sow(y)
                y = nn.relu(y)
            elif unit == "relu_preact" and activate:
                y = nn.relu(y)
            if i == 1:
                pre = y
            y = self.conv(features, (k, k), strides=(stride, stride), name=f"conv{i}")(y)
            if unit == "preact" or (last and unit == "bn_after_add"):  # no BN after this conv
                if last and k == 3:
                    self._sow(y)
                continue
            zero = last and self.zero_init_residual
            y = self.norm(name=f"bn{i}", scale_init=nn.initializers.zeros if zero
                          else nn.initializers.ones)(y)
            if k == 3:
                self._sow(y)
            if (unit != "relu_preact" and not last) or (last and unit == "relu_before_add"):
                y = nn.relu(y)
        if not self.plain:
            out = layers[-1][0]
            # A projection reads the pre-activated input (2016 paper, appendix); an identity
            # keeps the raw one: that is the clean path pre-activation is for.
            source = pre if projects(self.shortcut, self.stride, x.shape[-1], out) else x
            h = Shortcut(out, self.stride, self.shortcut, self.conv, self.norm,
                         normalize=unit != "preact", name="downsample")(source)
            y = y + h if self.merge is None else self.merge(
                stride=self.stride, name="merge")(y, h, x)
        if unit == "post":
            return nn.relu(y)
        if unit == "bn_after_add":
            return nn.relu(self.norm(name=f"bn{len(layers)}")(y))
        return y


class BasicBlock(_Unit):
    """Two 3x3 convs (ResNet-18/34 and the CIFAR nets). Output channels = `width`.

    (B, H, W, C) -> (B, H/stride, W/stride, width).
    """

    expansion = 1

    def layers(self) -> list[tuple[int, int, int]]:
        return [(self.width, 3, self.stride), (self.width, 3, 1)]


class Bottleneck(_Unit):
    """1x1 (reduce) -> 3x3 -> 1x1 (expand x4) (ResNet-50/101/152/200, CIFAR 9n+2).

    (B, H, W, C) -> (B, H/stride, W/stride, 4 * width). `stride_on`: 'v1' puts the stride on
    the first 1x1 conv (the 2015 paper, and the 2016 paper's CIFAR code); 'v1.5' on the 3x3.
    """

    stride_on: str = "v1"
    expansion = 4

    def layers(self) -> list[tuple[int, int, int]]:
        first, middle = (self.stride, 1) if self.stride_on == "v1" else (1, self.stride)
        return [(self.width, 1, first), (self.width, 3, middle),
                (self.width * self.expansion, 1, 1)]


BLOCKS: dict[str, Any] = {"basic": BasicBlock, "bottleneck": Bottleneck}

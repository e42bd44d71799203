"""The baseline: a minimal Flax ResNet in the style of flax's examples/imagenet/models.py.

Kept deliberately plain (nn.Conv, nn.BatchNorm, jit, optax SGD) so that
`throughput.py` measures this codebase against what a reader would write in an afternoon.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

ModuleDef = Any


class ResNetBlock(nn.Module):
    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: tuple = (1, 1)

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.filters, (3, 3), self.strides)(x)
        y = self.act(self.norm()(y))
        y = self.conv(self.filters, (3, 3))(y)
        y = self.norm(scale_init=nn.initializers.zeros_init())(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class BottleneckResNetBlock(nn.Module):
    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: tuple = (1, 1)

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.filters, (1, 1))(x)
        y = self.act(self.norm()(y))
        y = self.conv(self.filters, (3, 3), self.strides)(y)
        y = self.act(self.norm()(y))
        y = self.conv(self.filters * 4, (1, 1))(y)
        y = self.norm(scale_init=nn.initializers.zeros_init())(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters * 4, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class ResNet(nn.Module):
    stage_sizes: Sequence[int]
    block_cls: ModuleDef
    num_classes: int = 1000
    num_filters: int = 64
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                                 epsilon=1e-5, dtype=self.dtype)
        x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="conv_init")(x)
        x = nn.relu(norm(name="bn_init")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for i, block_size in enumerate(self.stage_sizes):
            for j in range(block_size):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = self.block_cls(self.num_filters * 2**i, strides=strides, conv=conv,
                                   norm=norm, act=nn.relu)(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
        return jnp.asarray(x, jnp.float32)


REFERENCE = {
    "resnet18": functools.partial(ResNet, stage_sizes=[2, 2, 2, 2], block_cls=ResNetBlock),
    "resnet34": functools.partial(ResNet, stage_sizes=[3, 4, 6, 3], block_cls=ResNetBlock),
    "resnet50": functools.partial(ResNet, stage_sizes=[3, 4, 6, 3], block_cls=BottleneckResNetBlock),
    "resnet101": functools.partial(ResNet, stage_sizes=[3, 4, 23, 3], block_cls=BottleneckResNetBlock),
    "resnet152": functools.partial(ResNet, stage_sizes=[3, 8, 36, 3], block_cls=BottleneckResNetBlock),
}


def make_reference(name: str, dtype: Any, num_classes: int, batch: int, image_size: int,
                   seed: int = 0):
    """Returns (step, state): `state = step(state, images, labels)`, jitted, buffers donated."""
    model = REFERENCE[name](num_classes=num_classes, dtype=dtype)
    x = jnp.zeros((batch, image_size, image_size, 3), jnp.float32)
    variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(seed), x)
    tx = optax.sgd(0.1, momentum=0.9)
    state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))

    def step(state, images, labels):
        params, batch_stats, opt_state = state

        def loss_fn(p):
            logits, new = model.apply({"params": p, "batch_stats": batch_stats}, images,
                                      mutable=["batch_stats"])
            onehot = jax.nn.one_hot(labels, num_classes)
            loss = optax.softmax_cross_entropy(logits, onehot).mean()
            l2 = sum(jnp.sum(w ** 2) for w in jax.tree.leaves(p) if w.ndim > 1)
            return loss + 0.5e-4 * l2, new["batch_stats"]

        grads, new_stats = jax.grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, opt_state

    return jax.jit(step, donate_argnums=0), state

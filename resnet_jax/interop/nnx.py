"""Our linen ResNets as `flax.nnx` modules (through `nnx.bridge.ToNNX`).

    model = resnet_jax.nnx_model("resnet18", rngs=nnx.Rngs(0), input_shape=(1, 224, 224, 3))
    model = resnet_jax.nnx_model(resnet_jax.load("r50"))        # an imported / exported model
    logits = model(x)                   # eval mode (running BN statistics) by default
    model.train(); logits = model(x)    # batch statistics; updates model's BatchStat variables
    model.eval()

The wrapped linen module computes everything, so logits and the batch-statistics update are
those of `linen_module.apply(variables, x, train=..., mutable=['batch_stats'])`.
Parameters are `nnx.Param`, running statistics `nnx.BatchStat`: `nnx.Optimizer(model, tx,
wrt=nnx.Param)` trains the former, and a train-mode call inside `nnx.value_and_grad` /
`nnx.jit` carries the latter out. `linen_variables(model)` gives the linen dict back.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import bridge

from resnet_jax.models.resnet import ResNet, create_model


class NNXResNet(nnx.Module):
    """An nnx Module around a linen `ResNet`. `use_running_average` (True = eval mode) is set by
    `model.train()` / `model.eval()`; `model(x, train=...)` overrides it for one call."""

    def __init__(self, module: ResNet, variables: Optional[Mapping[str, Any]] = None, *,
                 rngs: Optional[nnx.Rngs] = None,
                 input_shape: Sequence[int] = (1, 224, 224, 3)):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        if variables is None:  # one compiled init (eager init compiles every op and shape)
            init = jax.jit(functools.partial(module.init, train=False))
            variables = init(rngs.params(), jnp.zeros(tuple(input_shape), jnp.float32))
        self.linen = bridge.ToNNX(module, rngs=rngs)
        attrs = bridge.variables.linen_vars_to_nnx_attrs(
            {c: variables[c] for c in ("params", "batch_stats")})
        for name, value in attrs.items():
            setattr(self.linen, name, nnx.data(value))
        self.use_running_average = True

    @property
    def module(self) -> ResNet:
        """The wrapped linen module."""
        return self.linen.to_nnx__module

    def __call__(self, x: Any, train: Optional[bool] = None) -> Any:
        train = (not self.use_running_average) if train is None else train
        if train:
            return self.linen(x, train=True, mutable=["batch_stats"])
        return self.linen(x, train=False)


def nnx_model(model: Any, variables: Optional[Mapping[str, Any]] = None, *,
              rngs: Optional[nnx.Rngs] = None, input_shape: Sequence[int] = (1, 224, 224, 3),
              **overrides: Any) -> NNXResNet:
    """An nnx Module of a ResNet, in eval mode (call `.train()` to train it).

    model: a name (`create_model(name, **overrides)`), a linen `ResNet`, or a `LoadedModel`
    (`resnet_jax.load(dir)`; its variables are used). variables: linen {'params',
    'batch_stats'} to start from; without them the variables are initialized from `rngs`
    (default nnx.Rngs(0)) on zeros of `input_shape` (only its channels matter).
    """
    if isinstance(model, str):
        model = create_model(model, **overrides)
    elif overrides:
        raise TypeError("overrides apply to a model name")
    if not isinstance(model, ResNet) and hasattr(model, "model"):  # a LoadedModel
        variables = model.variables if variables is None else variables
        model = model.model
    if not isinstance(model, ResNet):
        raise TypeError(f"expected a model name, a ResNet or a LoadedModel, got {type(model)}")
    return NNXResNet(model, variables, rngs=rngs, input_shape=input_shape)


def linen_variables(model: NNXResNet) -> dict:
    """The linen {'params', 'batch_stats'} of an `NNXResNet` (its current values)."""
    attrs = {k: v for k, v in vars(model.linen).items()
             if not k.startswith("to_nnx__") and not k.startswith("_pytree__")}
    return bridge.variables.nnx_attrs_to_linen_vars(attrs)

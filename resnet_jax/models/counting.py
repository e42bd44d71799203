"""Exact parameter and multiply-add counts, and shapes, for any model and input size.

Multiply-adds are read off the jaxpr of the forward pass (every convolution and every
matrix product), so they follow the model's code rather than a hand-written formula.
BN, ReLU, pooling and additions are not counted, as in the paper's FLOPs column.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp


def count_params(params: Any) -> int:
    """Number of scalars in a pytree of parameters (arrays or ShapeDtypeStructs)."""
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(params)))


def count_bn_params(params: Any) -> int:
    """Scalars of the BatchNorm scales and shifts in `params` (every `scale` leaf and the
    `bias` beside it: the only scales in these nets are BN's)."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    bn_modules = {tuple(str(p) for p in path[:-1]) for path, _ in leaves
                  if getattr(path[-1], "key", None) == "scale"}
    return count_params([leaf for path, leaf in leaves
                         if tuple(str(p) for p in path[:-1]) in bn_modules])


def abstract_variables(model: nn.Module, input_shape: Sequence[int]) -> Any:
    """The model's variables as ShapeDtypeStructs, without allocating or computing them."""
    images = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)


def _eqn_macs(eqn) -> int:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval
        out = eqn.outvars[0].aval
        rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out_feat, in_feat, *spatial)
        per_output = rhs.shape[rhs_spec[1]] * math.prod(rhs.shape[d] for d in rhs_spec[2:])
        return math.prod(out.shape) * per_output
    if name == "dot_general":
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval
        out = eqn.outvars[0].aval
        return math.prod(out.shape) * math.prod(lhs.shape[d] for d in lhs_contract)
    return 0


def _jaxpr_macs(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        total += _eqn_macs(eqn)
        # A scan's body runs `length` times (the `scan_blocks` stages).
        repeat = eqn.params["length"] if eqn.primitive.name == "scan" else 1
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            total += repeat * _jaxpr_macs(sub)
    return total


def count_macs(model: nn.Module, input_shape: Sequence[int] = (1, 224, 224, 3)) -> int:
    """Multiply-adds of all convs and dense layers for ONE image of `input_shape[1:3]`."""
    shape = (1,) + tuple(input_shape[1:])
    variables = abstract_variables(model, shape)
    closed = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(
        variables, jax.ShapeDtypeStruct(shape, jnp.float32))
    return _jaxpr_macs(closed.jaxpr)


def stage_shapes(model: nn.Module, input_shape: Sequence[int]) -> dict[str, tuple]:
    """Output shape of the stem and of every stage, e.g. {'stem': (1, 56, 56, 64), ...}."""
    variables = abstract_variables(model, input_shape)

    def forward(v, x):
        _, state = model.apply(v, x, train=False, mutable=["intermediates"])
        return state["intermediates"]

    inter = jax.eval_shape(forward, variables, jax.ShapeDtypeStruct(tuple(input_shape),
                                                                     jnp.float32))
    # top-level tuples are the stage outputs; dicts are blocks (their 3x3 responses)
    return {name: tuple(value[0].shape) for name, value in inter.items()
            if name == "stem" or (name.startswith("layer") and "_" not in name)}


def conv3x3_responses(model: nn.Module, variables: Any, images: jax.Array) -> list[jax.Array]:
    """Each 3x3 conv layer's response after BN and before ReLU (paper Fig. 7), in network order.

    Runs the model in evaluation mode (running BN statistics). Returns a list of arrays, one
    per 3x3 conv layer, each (B, H, W, C).
    """
    _, state = model.apply(variables, images, train=False, mutable=["intermediates"])
    responses = state["intermediates"]
    out = list(responses.get("bn3x3", ()))  # the CIFAR stem's 3x3 conv comes first

    def block_order(name: str) -> tuple[int, int]:
        # 'layer2_10' -> (2, 10): numeric, since jit/pytree code sorts keys as strings;
        # 'layer2_rest' (the scanned blocks 1.. of a `scan_blocks` stage) follows block 0.
        stage, block = name[len("layer"):].split("_")
        return int(stage), 1 if block == "rest" else int(block)

    for name in sorted((k for k in responses if k.startswith("layer") and "_" in k), key=block_order):
        if name.endswith("_rest"):  # each response stacked over the scanned blocks
            per_layer = responses[name]["block"]["bn3x3"]
            for k in range(per_layer[0].shape[0]):
                out.extend(r[k] for r in per_layer)
        else:
            out.extend(responses[name]["bn3x3"])
    return out

"""Where a ResNet's variables live, for code that treats parameters by role (weight decay,
LARS trust ratios) or moves them between the unrolled and the `scan_blocks` layouts.

With `scan_blocks=True`, blocks 1.. of a stage of more than two blocks are one `nn.scan`
whose variables sit under `layer{i}_rest/block`, stacked on a new leading axis (one row per
block). A per-layer rule must look through that axis: a stacked BN scale is (L, C) but still
a vector per layer.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

SCAN_SUFFIX = "_rest"


def _key(entry: Any) -> str:
    return str(getattr(entry, "key", getattr(entry, "name", entry)))


def is_stacked(path: Sequence[Any]) -> bool:
    """True for a variable (given by its `jax.tree_util` key path) that `scan_blocks` stacked:
    its leading axis indexes blocks, not the layer's own dimensions."""
    return any(_key(p).endswith(SCAN_SUFFIX) for p in path)


def layer_ndim(path: Sequence[Any], leaf: Any) -> int:
    """The rank of one layer's variable: the leaf's rank without the stacking axis."""
    return leaf.ndim - (1 if is_stacked(path) else 0)


def stack_blocks(variables: dict, stage_sizes: Sequence[int]) -> dict:
    """Unrolled variables (any collections: params, batch_stats, ...) -> the `scan_blocks`
    layout of the same network: `layer{i}_{1..n-1}` stacked into `layer{i}_rest/block` for
    every stage of n > 2 blocks."""
    out = {}
    for col, tree in variables.items():
        tree = dict(tree)
        for i, n in enumerate(stage_sizes, start=1):
            if n > 2:
                rest = [tree.pop(f"layer{i}_{j}") for j in range(1, n)]
                tree[f"layer{i}{SCAN_SUFFIX}"] = {
                    "block": jax.tree.map(lambda *x: jnp.stack(x), *rest)}
        out[col] = tree
    return out


def unstack_blocks(variables: dict, stage_sizes: Sequence[int]) -> dict:
    """Inverse of `stack_blocks`."""
    out = {}
    for col, tree in variables.items():
        tree = dict(tree)
        for i, n in enumerate(stage_sizes, start=1):
            stacked = tree.pop(f"layer{i}{SCAN_SUFFIX}", None)
            if stacked is not None:
                for j in range(1, n):
                    tree[f"layer{i}_{j}"] = jax.tree.map(lambda x, j=j: x[j - 1],
                                                         stacked["block"])
        out[col] = tree
    return out

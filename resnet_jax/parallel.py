"""Devices: the mesh, shardings, host-local batches -> global arrays, and BatchNorm groups.

One mesh axis, `data`: the global batch is split contiguously along it (device i of the mesh
holds rows [i*b, (i+1)*b) of the global batch), and parameters, BN statistics and optimizer
state are replicated. The same jit-compiled step then runs on 1 CPU, 8 GPUs or a TPU pod: XLA
inserts the gradient all-reduce. A second axis (e.g. `model`) can be added later by giving
`make_mesh` more axes; every sharding here names only `data`.

Multi-host: each process feeds only its own rows (`to_global`), every process runs the same
program, and replicated outputs can be read on any process.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding

from resnet_jax import schema

DATA_AXIS = "data"
BN_MODES = schema.ENUMS["train.bn_mode"]


def make_mesh(num_devices: Optional[int] = None) -> Mesh:
    """A 1-D mesh with axis `data` over the first `num_devices` devices (default: all).

    `AxisType.Auto`: linen modules are sharding-agnostic, so the compiler propagates shardings
    (jax.make_mesh's default is Explicit, which would require annotations inside the model).
    """
    devices = jax.devices()
    n = len(devices) if num_devices is None else int(num_devices)
    if not 1 <= n <= len(devices):
        raise ValueError(f"num_devices={num_devices} must be in [1, {len(devices)}]")
    if n % jax.process_count():
        raise ValueError(f"num_devices={n} must be a multiple of the process count "
                         f"{jax.process_count()}")
    if jax.process_count() > 1 and n != len(devices):
        raise ValueError(f"num_devices={n}: multi-process runs use all {len(devices)} devices")
    return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices[:n])


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
    """Arrays split along `batch_axis` over `data` (earlier axes, e.g. a step axis, unsplit)."""
    return NamedSharding(mesh, jax.P(*([None] * batch_axis), DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, jax.P())


def to_global(batch: Mapping[str, Any], mesh: Mesh, batch_axis: int = 0) -> dict:
    """Process-local numpy batches -> global jax.Arrays sharded along `batch_axis` over `data`.

    `batch` is a dict whose values are arrays or tuples of arrays (multi-scale eval views).

    Each process passes its own rows (b_local = B / process_count along `batch_axis`); the
    result has the global batch B there. With one process this is a sharded device_put.
    `batch_axis=1` is for stacked batches (steps, b, ...) and index arrays (steps, b).
    """
    local_devices = len(mesh.local_devices)
    sharding = batch_sharding(mesh, batch_axis)

    def put(path, value):
        value = np.asarray(value)
        name = jax.tree_util.keystr(path)
        if value.ndim <= batch_axis:
            raise ValueError(f"batch{name} has shape {value.shape}: no batch axis {batch_axis}")
        if value.shape[batch_axis] % local_devices:
            raise ValueError(
                f"batch{name}: {value.shape[batch_axis]} rows on this process do not split "
                f"evenly over its {local_devices} devices")
        return jax.make_array_from_process_local_data(sharding, value)

    return jax.tree_util.tree_map_with_path(put, dict(batch))


def replicate_key(rng: Any, mesh: Mesh) -> jax.Array:
    """A PRNG key (typed, any impl, or raw uint32) replicated over the mesh, the same on every
    process; returned as is when it already is.

    A typed key is moved as its raw uint32 data (device_put onto devices of other processes
    takes host values only) and re-wrapped with its own impl (threefry, rbg, ...).
    """
    sharding = replicated(mesh)
    if isinstance(rng, jax.Array) and rng.sharding == sharding:
        return rng
    if isinstance(rng, jax.Array) and jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        data = jax.device_put(np.asarray(jax.random.key_data(rng)), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(rng))
    return jax.device_put(np.asarray(rng), sharding)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Put a pytree (the same value on every process) replicated on the mesh."""
    sharding = replicated(mesh)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)


def from_process_0(value: int) -> int:
    """Process 0's `value` (an int) on every process: one decision for all hosts (a
    collective: every process calls it at the same point)."""
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils
    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def bn_num_groups(bn_mode: str, bn_group_size: int, num_devices: int) -> int:
    """How many groups the global batch's BN statistics are split into.

    `global` -> 1 (sync BN over all devices), `per_device` -> num_devices (each device its own
    shard, as the paper's multi-GPU training), `group` -> num_devices // bn_group_size (groups
    of `bn_group_size` neighbouring devices). Group g is exactly the examples of devices
    [g*k, (g+1)*k) because the batch is sharded contiguously along `data`.
    """
    schema.check_choice("train.bn_mode", bn_mode)
    if bn_mode == "global":
        return 1
    if bn_mode == "per_device":
        return int(num_devices)
    if bn_group_size < 1 or num_devices % bn_group_size:
        raise ValueError(f"train.bn_group_size={bn_group_size} must be >= 1 and divide the "
                         f"number of devices {num_devices}")
    return int(num_devices) // int(bn_group_size)

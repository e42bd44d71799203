"""resnet-jax: Deep Residual Learning (He et al., 2015) in JAX/Flax.

The stable public API is what this module exports; the rest is importable but may move.
The exports are imported on first use, so `import resnet_jax.cli` (the command line) starts
without loading JAX, and can set up the process (e.g. native log levels) before it does.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "BatchNorm": "resnet_jax.models", "ResNet": "resnet_jax.models",
    "conv3x3_responses": "resnet_jax.models", "count_macs": "resnet_jax.models",
    "count_params": "resnet_jax.models", "create_model": "resnet_jax.models",
    "model_name": "resnet_jax.models", "parse_model_name": "resnet_jax.models",
    "stage_shapes": "resnet_jax.models",
    "load": "resnet_jax.interop", "nnx_model": "resnet_jax.interop",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'resnet_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

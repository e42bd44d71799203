"""resnet-jax: Deep Residual Learning (He et al., 2015) in JAX/Flax.

The stable public API is what this module exports; the rest is importable but may move.
"""
__version__ = "0.1.0"

from resnet_jax.models import (BatchNorm, ResNet, conv3x3_responses, count_macs,  # noqa: E402
                               count_params, create_model, model_name, parse_model_name,
                               stage_shapes)

from resnet_jax.interop import load, nnx_model  # noqa: E402

__all__ = ["__version__", "BatchNorm", "ResNet", "conv3x3_responses", "count_macs",
           "count_params", "create_model", "model_name", "parse_model_name", "stage_shapes",
           "load", "nnx_model"]

"""The paper's networks as Flax linen modules, and exact counts of their size and cost."""
from resnet_jax.models.blocks import (BOTTLENECK_STRIDES, SHORTCUTS, UNITS, BasicBlock,
                                      Bottleneck, Shortcut, zero_pad_shortcut)
from resnet_jax.models.counting import (abstract_variables, conv3x3_responses, count_bn_params,
                                        count_macs, count_params, stage_shapes)
from resnet_jax.models.layout import is_stacked, layer_ndim, stack_blocks, unstack_blocks
from resnet_jax.models.norm import BatchNorm
from resnet_jax.models.variants import SHORTCUT_VARIANTS, ShortcutMerge
from resnet_jax.models.resnet import (IMAGENET_STAGES, OVERRIDES, ResNet, create_model,
                                      model_name, parse_model_name)

__all__ = [
    "BOTTLENECK_STRIDES", "SHORTCUTS", "UNITS", "SHORTCUT_VARIANTS", "BasicBlock",
    "Bottleneck", "Shortcut", "ShortcutMerge", "zero_pad_shortcut", "abstract_variables",
    "conv3x3_responses", "count_bn_params", "count_macs",
    "count_params", "stage_shapes", "BatchNorm", "IMAGENET_STAGES", "OVERRIDES", "ResNet",
    "create_model", "model_name", "parse_model_name", "is_stacked", "layer_ndim",
    "stack_blocks", "unstack_blocks",
]

"""The torchvision ResNet state-dict layout of our models, both ways (timm's ResNet-18..152
use the same key names and shapes).

Name map (ours, '/'-joined -> torchvision):
  params/conv1/kernel (H, W, I, O)            -> conv1.weight (O, I, H, W)
  params/bn1/{scale, bias}                    -> bn1.{weight, bias}
  batch_stats/bn1/{mean, var}                 -> bn1.{running_mean, running_var}
  params/layer2_0/conv1/kernel                -> layer2.0.conv1.weight
  params/layer2_0/downsample/conv/kernel      -> layer2.0.downsample.0.weight
  params/layer2_0/downsample/bn/scale         -> layer2.0.downsample.1.weight
  params/fc/kernel (in, out), params/fc/bias  -> fc.weight (out, in), fc.bias
`*.num_batches_tracked` (torch's BN step counter, used only when its momentum is None) is
ignored on import and written as 0 on export.

Conventions: torch BN `eps=1e-5` and `momentum=0.1` (new = 0.9 * old + 0.1 * batch) are our
`bn_epsilon=1e-5` and `bn_momentum=0.9` (the decay of the old value), so eval-mode outputs are
the same function. In train mode both normalize with the biased batch variance, but torch
updates `running_var` with the unbiased one (x n / (n - 1), n = batch x height x width) and we,
like flax, with the biased one: after fine-tuning, running variances differ by that factor
(0.1% at n = 1024, 7% at n = 16); the running means agree. torchvision's and timm's
bottleneck nets are v1.5 (stride on the 3x3 conv), with projection shortcuts where the shape
changes (option B).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from resnet_jax.interop.tree import check_shapes, flatten, unflatten
from resnet_jax.models.counting import abstract_variables as models_abstract
from resnet_jax.models.layout import unstack_blocks
from resnet_jax.models.resnet import IMAGENET_STAGES, ResNet

TORCH_BN_EPSILON = 1e-5
TORCH_BN_MOMENTUM = 0.1  # torch's weight of the new batch; ours is 1 - this
SOURCES = ("torchvision", "timm")
_BLOCK = re.compile(r"^layer(\d+)_(\d+)$")
_LEAF = {("params", "kernel"): "weight", ("params", "scale"): "weight",
         ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
         ("batch_stats", "var"): "running_var"}


def torch_compatibility_problems(model: ResNet) -> list[str]:
    """Why `model` cannot hold (or give) a torchvision ResNet's weights; [] when it can."""
    problems = []
    if model.stem != "imagenet":
        problems.append(f"stem={model.stem!r} (torchvision ResNets have the ImageNet stem)")
    if model.plain:
        problems.append("plain=True (torchvision ResNets have shortcuts)")
    if model.shortcut != "B":
        problems.append(f"shortcut={model.shortcut!r} (torchvision uses B: projections where "
                        "the shape changes)")
    if model.block == "bottleneck" and model.bottleneck_stride != "v1.5":
        problems.append(f"bottleneck_stride={model.bottleneck_stride!r}: torchvision and timm "
                        "bottleneck nets are v1.5 (stride on the 3x3 conv); the same weights "
                        "in a v1 net give different logits")
    if model.unit != "post":
        problems.append(f"unit={model.unit!r} (torchvision's units are 'post': "
                        "conv-BN-ReLU-conv-BN, add, ReLU)")
    if model.shortcut_variant != "identity":
        problems.append(f"shortcut_variant={model.shortcut_variant!r} (torchvision adds the "
                        "identity)")
    if model.bn_epsilon != TORCH_BN_EPSILON:
        problems.append(f"bn_epsilon={model.bn_epsilon} (torch BatchNorm2d uses 1e-5)")
    return problems


def check_torch_compatible(model: ResNet) -> None:
    problems = torch_compatibility_problems(model)
    if problems:
        raise ValueError("the model does not have torchvision's ResNet architecture: "
                         + "; ".join(problems))


def _torch_name(flax_name: str) -> str:
    collection, *modules, leaf = flax_name.split("/")
    parts = []
    for i, m in enumerate(modules):
        block = _BLOCK.match(m)
        if block:
            parts += [f"layer{block.group(1)}", block.group(2)]
        elif i > 0 and modules[i - 1] == "downsample" and m in ("conv", "bn"):
            parts.append("0" if m == "conv" else "1")
        else:
            parts.append(m)
    return ".".join(parts + [_LEAF[(collection, leaf)]])


def _to_torch(x: np.ndarray) -> np.ndarray:
    """Our layout -> torch's: conv HWIO -> OIHW, dense (in, out) -> (out, in)."""
    if x.ndim == 4:
        return np.transpose(x, (3, 2, 0, 1))
    return x.T if x.ndim == 2 else x


def _from_torch(x: np.ndarray) -> np.ndarray:
    if x.ndim == 4:
        return np.transpose(x, (2, 3, 1, 0))
    return x.T if x.ndim == 2 else x


def _shape_to_torch(shape: tuple) -> tuple:
    return tuple(_to_torch(np.empty(shape, np.bool_)).shape)


def abstract_variables(model: ResNet) -> dict:
    """{'params', 'batch_stats'} of `model` as ShapeDtypeStructs (nothing is computed)."""
    size = 32 if model.stem == "cifar" else 64
    tree = models_abstract(model, (1, size, size, 3))
    return {c: tree[c] for c in ("params", "batch_stats") if c in tree}


def torch_layout(model: ResNet) -> dict[str, tuple[str, tuple]]:
    """{torchvision key: (our '/'-joined name, torch shape)} for every variable of `model`
    (unrolled layout: build it with scan_blocks=False)."""
    flat = flatten(abstract_variables(model))
    return {_torch_name(name): (name, _shape_to_torch(s.shape)) for name, s in flat.items()}


def bn_counter_keys(layout: Mapping[str, Any]) -> list[str]:
    return sorted(k[:-len("running_mean")] + "num_batches_tracked"
                  for k in layout if k.endswith(".running_mean"))


def describe(model: ResNet) -> str:
    """'resnet50 (width 64, 1000 classes)' for a torchvision-style model."""
    names = [f"resnet{d}" for d, (b, s) in IMAGENET_STAGES.items()
             if (b, tuple(s)) == (model.block, tuple(model.stage_sizes))]
    name = names[0] if names else f"a {model.block} ResNet {tuple(model.stage_sizes)}"
    return f"{name} (width {model.width}, {model.num_classes} classes)"


def guess_architecture(keys_shapes: Mapping[str, tuple]) -> str:
    """A short description of a torchvision-layout state dict: 'resnet50 (width 64, 1000
    classes)', or '' when it does not look like one."""
    blocks: dict[int, set] = {}
    for key in keys_shapes:
        m = re.match(r"^layer(\d+)\.(\d+)\.", key)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    stages = tuple(len(blocks[i]) for i in sorted(blocks))
    kind = "bottleneck" if any(k.endswith(".conv3.weight") for k in keys_shapes) else "basic"
    names = [f"resnet{d}" for d, (b, s) in IMAGENET_STAGES.items() if (b, s) == (kind, stages)]
    if not names:
        return f"{kind} blocks per stage {stages}" if stages else ""
    extra = []
    if "conv1.weight" in keys_shapes:
        extra.append(f"width {keys_shapes['conv1.weight'][0]}")
    if "fc.weight" in keys_shapes:
        extra.append(f"{keys_shapes['fc.weight'][0]} classes")
    return names[0] + (f" ({', '.join(extra)})" if extra else "")


def from_torch_state_dict(state_dict: Mapping[str, np.ndarray], model: ResNet,
                          what: str = "the state dict") -> dict:
    """A torchvision-layout state dict (numpy arrays) -> our {'params', 'batch_stats'}
    (float32 numpy) for `model`. Raises IncompatibleWeightsError listing every missing,
    unexpected and mis-shaped key, ValueError if the model is not torchvision's architecture."""
    check_torch_compatible(model)
    if model.scan_blocks:
        raise ValueError("build the model with scan_blocks=False to import torch weights")
    layout = torch_layout(model)
    found = {k: tuple(np.shape(v)) for k, v in state_dict.items()
             if not k.endswith(".num_batches_tracked")}
    guess = guess_architecture(found)
    check_shapes({k: s for k, (_, s) in layout.items()}, found,
                 f"{what} does not fit {describe(model)}",
                 f"it looks like {guess}" if guess else "")
    flat = {name: _from_torch(np.asarray(state_dict[key], np.float32))
            for key, (name, _) in layout.items()}
    return unflatten(flat)


def to_torch_state_dict(model: ResNet, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Our {'params', 'batch_stats'} -> a torchvision state dict (float32 numpy, contiguous),
    with `num_batches_tracked` = 0 for every BatchNorm. A `scan_blocks` model's stacked
    variables are unrolled first."""
    check_torch_compatible(model)
    variables = {c: variables[c] for c in ("params", "batch_stats")}
    if model.scan_blocks:
        variables = unstack_blocks(variables, model.stage_sizes)
        model = model.clone(scan_blocks=False)
    flat = flatten(variables)
    check_shapes({name: s.shape for name, s in flatten(abstract_variables(model)).items()},
                 {name: np.shape(v) for name, v in flat.items()},
                 "the variables do not fit the model")
    out = {}
    for name, value in flat.items():
        out[_torch_name(name)] = np.ascontiguousarray(_to_torch(np.asarray(value, np.float32)))
    for key in bn_counter_keys(out):
        out[key] = np.zeros((), np.int64)
    return out

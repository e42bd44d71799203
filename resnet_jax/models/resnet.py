"""ResNet (ImageNet stem) and CIFAR ResNet, residual or plain, as one parameterised linen module.

Every variant of the paper, and the unit and shortcut variants of its 2016 follow-up
("Identity Mappings in Deep Residual Networks"), comes from a handful of fields (timm style),
and `create_model` builds them by name: `resnet50`, `plain34`, `cifar_resnet110`,
`cifar_plain56`, `cifar_resnet164` with `block='bottleneck'`, `resnet200` with `unit='preact'`...
"""
from __future__ import annotations

import functools
import re
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax import schema
from resnet_jax.models.blocks import BLOCKS, BOTTLENECK_STRIDES, SHORTCUTS, UNITS
from resnet_jax.models.layout import SCAN_SUFFIX
from resnet_jax.models.norm import BatchNorm
from resnet_jax.models.variants import SHORTCUT_VARIANTS, ShortcutMerge

# He et al. 2015 ("Delving deep into rectifiers"): N(0, 2 / fan_in), fan_in = k*k*c_in.
HE_NORMAL = nn.initializers.variance_scaling(2.0, "fan_in", "normal")

IMAGENET_STAGES = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}
STEMS = ("imagenet", "cifar")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class Conv(nn.Conv):
    """Bias-free conv with symmetric padding (k-1)//2 and He-normal init.

    Symmetric padding, as torchvision: stride-2 layers see the same windows as the reference
    implementations, not TF's asymmetric 'SAME'.
    """

    use_bias: bool = False
    kernel_init: Any = HE_NORMAL

    def __post_init__(self):
        if self.padding == "SAME":  # the default: replace by the symmetric version
            pad = tuple(((k - 1) // 2, (k - 1) // 2) for k in self.kernel_size)
            object.__setattr__(self, "padding", pad)
        super().__post_init__()


def _choice(field: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise ValueError(f"{field}={value!r} is not allowed; choose one of {list(allowed)}")


def _dtype(field: str, value: Any) -> Any:
    if isinstance(value, str):
        _choice(field, value, tuple(DTYPES))
        return DTYPES[value]
    return value


class ResNet(nn.Module):
    """A ResNet of the paper, residual or plain.

    Attributes:
      stage_sizes: blocks per stage, e.g. (3, 4, 6, 3); CIFAR nets use (n, n, n).
      block: 'basic' (two 3x3) or 'bottleneck' (1x1, 3x3, 1x1 x4).
      stem: 'imagenet' (7x7/2 conv + 3x3/2 max pool) or 'cifar' (3x3 conv).
      width: channels of the first stage (64 ImageNet, 16 CIFAR); stage i has width * 2**i.
      num_classes: outputs of the final fc layer.
      shortcut: 'A' zero-padded identity, 'B' projection where the shape changes, 'C' always
        (also the 2016 paper's "1x1 conv shortcut").
      plain: no shortcuts at all (the paper's plain baselines).
      bottleneck_stride: 'v1' stride on the first 1x1 (paper), 'v1.5' on the 3x3.
      zero_init_residual: start each residual branch's last BN scale at 0 (not with units
        'bn_after_add' and 'preact', whose branch ends without a BN of its own).
      unit: where BN and ReLU sit in a unit (2016 paper, Fig. 4; `blocks` module docstring):
        'post' (default), 'bn_after_add', 'relu_before_add', 'relu_preact', 'preact'. The
        pre-activation units share the stem's activation with the first unit, and add the
        final activation before the pool ('preact': BN-ReLU, `bn_final`; 'relu_preact': ReLU).
      shortcut_variant: how F(x) and the shortcut h(x) are added (2016 paper, Fig. 2;
        `variants` module docstring): 'identity' (default), 'scale', 'exclusive_gate',
        'shortcut_gate', 'dropout'. Residual nets only (a plain net has no h).
      shortcut_scale, residual_scale: the lambdas of 'scale' (> 0; 1 = identity, bitwise).
      gate_bias: b_g, the initial bias of the gates' 1x1 convs ('exclusive_gate',
        'shortcut_gate'); the paper's best is -6.
      shortcut_dropout: the dropout rate of 'dropout' (0.5, the paper's): h kept unscaled
        with probability 1 - rate at training, h * (1 - rate) at evaluation (the paper's
        scale of expectation 1 - rate, `variants.ShortcutDropout`); its masks come from the
        'dropout' rng (`apply(..., rngs={'dropout': key})`).
      dtype: compute dtype (e.g. bfloat16); param_dtype: parameter dtype (float32).
      bn_momentum, bn_epsilon: BatchNorm running-average decay and epsilon.
      bn_num_groups, bn_axis_name, bn_axis_index_groups: how BN statistics are reduced
        (see `resnet_jax.models.norm.BatchNorm`).
      scan_blocks: run the identical blocks of each stage (all but the first) as one
        `nn.scan`, their variables stacked on a leading axis under `layer{i}_rest/block`.
        The same network and counts; XLA compiles one block per stage instead of every block,
        which is what makes ResNet-1202 (200 blocks per stage) compile in reasonable time.

    Call: `model.apply(variables, images, train=False)`, images (B, H, W, 3) float of any size
    (global average pooling), returns float32 logits (B, num_classes). In training, pass
    `train=True, mutable=['batch_stats']` (and `rngs={'dropout': key}` for the dropout
    shortcut). Sows each stage's output into `intermediates`
    (`stem`, `layer1`..) and each 3x3 conv's post-BN response (`bn3x3`, inside each block).
    """

    stage_sizes: Sequence[int]
    block: str = "basic"
    stem: str = "imagenet"
    width: int = 64
    num_classes: int = 1000
    shortcut: str = "B"
    plain: bool = False
    bottleneck_stride: str = "v1"
    zero_init_residual: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_num_groups: int = 1
    bn_axis_name: Optional[str] = None
    bn_axis_index_groups: Optional[Sequence[Sequence[int]]] = None
    scan_blocks: bool = False
    unit: str = "post"
    shortcut_variant: str = "identity"
    shortcut_scale: float = 1.0
    residual_scale: float = 1.0
    gate_bias: float = 0.0
    shortcut_dropout: float = 0.5

    def __post_init__(self):
        _choice("block", self.block, tuple(BLOCKS))
        _choice("stem", self.stem, STEMS)
        _choice("shortcut", self.shortcut, SHORTCUTS)
        _choice("bottleneck_stride", self.bottleneck_stride, BOTTLENECK_STRIDES)
        _choice("unit", self.unit, UNITS)
        _choice("shortcut_variant", self.shortcut_variant, SHORTCUT_VARIANTS)
        for field in ("width", "num_classes", "bn_num_groups"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{field}={value!r} must be a positive integer")
        problems = [schema.range_problem(f"model.{f}", getattr(self, f), f)
                    for f in schema.VARIANT_DEFAULTS if f"model.{f}" in schema.RANGES]
        problems.append(schema.variant_problem({f: getattr(self, f) for f in (
            "plain", "zero_init_residual", *schema.VARIANT_DEFAULTS)}))
        if any(problems):
            raise ValueError(next(p for p in problems if p))
        if not self.stage_sizes or any(n < 1 for n in self.stage_sizes):
            raise ValueError(f"stage_sizes={self.stage_sizes!r} must be positive block counts")
        object.__setattr__(self, "dtype", _dtype("dtype", self.dtype))
        object.__setattr__(self, "param_dtype", _dtype("param_dtype", self.param_dtype))
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        norm = functools.partial(
            BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
            epsilon=self.bn_epsilon, dtype=self.dtype, param_dtype=self.param_dtype,
            num_groups=self.bn_num_groups, axis_name=self.bn_axis_name,
            axis_index_groups=self.bn_axis_index_groups)
        conv = functools.partial(Conv, dtype=self.dtype, param_dtype=self.param_dtype)
        x = x.astype(self.dtype)
        if self.stem == "imagenet":
            x = conv(self.width, (7, 7), (2, 2), name="conv1")(x)
            x = nn.relu(norm(name="bn1")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        else:
            x = conv(self.width, (3, 3), name="conv1")(x)
            x = norm(name="bn1")(x)
            self.sow("intermediates", "bn3x3", x)
            x = nn.relu(x)
        self.sow("intermediates", "stem", x)

        block_cls = BLOCKS[self.block]
        extra = {"stride_on": self.bottleneck_stride} if self.block == "bottleneck" else {}
        if self.shortcut_variant != "identity":
            extra["merge"] = functools.partial(
                ShortcutMerge, variant=self.shortcut_variant, conv=conv,
                shortcut_scale=self.shortcut_scale, residual_scale=self.residual_scale,
                gate_bias=self.gate_bias, dropout_rate=self.shortcut_dropout,
                deterministic=not train)
        for i, num_blocks in enumerate(self.stage_sizes):
            make = functools.partial(
                block_cls, width=self.width * 2**i, conv=conv, norm=norm,
                shortcut=self.shortcut, plain=self.plain,
                zero_init_residual=self.zero_init_residual, unit=self.unit, **extra)
            # The first block changes the shape (stride, channels); the others are identical.
            x = make(stride=2 if i > 0 else 1, first=i == 0, name=f"layer{i + 1}_0")(x)
            if self.scan_blocks and num_blocks > 2:
                scanned = nn.scan(_Repeat, variable_axes={c: 0 for c in _SCANNED},
                                  split_rngs={"params": True, "dropout": True},
                                  length=num_blocks - 1)
                x, _ = scanned(make, name=f"layer{i + 1}{SCAN_SUFFIX}")(x, None)
            else:
                for j in range(1, num_blocks):
                    x = make(stride=1, name=f"layer{i + 1}_{j}")(x)
            self.sow("intermediates", f"layer{i + 1}", x)

        # Pre-activation units leave the last addition unnormalized: the paper's extra
        # activation before the pool (its Fig. 5 procedure ends there).
        if self.unit == "preact":
            x = nn.relu(norm(name="bn_final")(x))
        elif self.unit == "relu_preact":
            x = nn.relu(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="fc")(x)
        return x.astype(jnp.float32)


_SCANNED = ("params", "batch_stats", "intermediates")


class _Repeat(nn.Module):
    """One stride-1 block as a scan body: (x, None) -> (block(x), None)."""

    make: Callable[..., nn.Module]

    @nn.compact
    def __call__(self, x: jax.Array, _: None) -> tuple[jax.Array, None]:
        return self.make(stride=1, name="block")(x), None


# ---------------------------------------------------------------------------------------------
# Names and the constructor.

_NAME = re.compile(r"^(cifar_)?(resnet|plain)(\d+)$")
OVERRIDES = ("num_classes", "shortcut", "bottleneck_stride", "zero_init_residual", "width",
             "dtype", "param_dtype", "bn_momentum", "bn_epsilon", "bn_num_groups",
             "bn_axis_name", "bn_axis_index_groups", "scan_blocks", "block",
             *schema.VARIANT_DEFAULTS)


def model_name(arch: str, depth: int, plain: bool = False) -> str:
    """('cifar', 110, False) -> 'cifar_resnet110'; ('imagenet', 34, True) -> 'plain34'."""
    _choice("arch", arch, ("cifar", "imagenet"))
    return f"{'cifar_' if arch == 'cifar' else ''}{'plain' if plain else 'resnet'}{depth}"


def parse_model_name(name: str) -> tuple[str, int, bool]:
    """'cifar_plain56' -> ('cifar', 56, True). Raises ValueError naming the valid forms."""
    match = _NAME.match(name)
    if not match:
        raise ValueError(
            f"model name {name!r} is not valid; use resnetD or plainD with D in "
            f"{sorted(IMAGENET_STAGES)}, or cifar_resnetD / cifar_plainD with D = 6n+2 "
            "(9n+2 with block='bottleneck')")
    arch = "cifar" if match.group(1) else "imagenet"
    return arch, int(match.group(3)), match.group(2) == "plain"


def create_model(name: str, **overrides: Any) -> ResNet:
    """Build a model of the paper by name.

    Names: `resnet{18,34,50,101,152,200}`, `plain{...}` (no shortcuts), `cifar_resnet{D}`,
    `cifar_plain{D}`, D = 6n+2 (basic blocks) or, with `block='bottleneck'`, 9n+2 (the 2016
    paper's ResNet-164 and -1001: stages of 64, 128, 256 output channels). Defaults follow
    the papers: ImageNet nets use shortcut 'B' and 1000 classes; CIFAR nets width 16 and 10
    classes, shortcut 'A' with basic blocks and 'B' with bottlenecks (the 2016 paper
    projects where a bottleneck net's shape changes). `block` on an ImageNet name must be its
    depth's (or 'auto'). Overrides: any of `OVERRIDES`, e.g. `create_model('resnet34',
    shortcut='C')`, `create_model('resnet50', bottleneck_stride='v1.5', dtype='bfloat16')`,
    `create_model('cifar_resnet1001', block='bottleneck', unit='preact', scan_blocks=True)`.
    """
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise TypeError(f"unknown model option(s) {unknown}; allowed: {list(OVERRIDES)}")
    arch, depth, plain = parse_model_name(name)
    block = overrides.pop("block", None) or "auto"
    _choice("block", block, schema.ENUMS["model.block"])
    problem = schema.depth_problem(arch, depth, block)
    if problem:
        raise ValueError(problem)
    block = schema.resolve_block(arch, depth, block)
    if arch == "imagenet":
        fields = dict(stage_sizes=IMAGENET_STAGES[depth][1], block=block, stem="imagenet",
                      width=64, num_classes=1000, shortcut="B")
    else:
        n = (depth - 2) // (9 if block == "bottleneck" else 6)
        fields = dict(stage_sizes=(n, n, n), block=block, stem="cifar", width=16,
                      num_classes=10, shortcut="B" if block == "bottleneck" else "A")
    fields.update(overrides)
    return ResNet(plain=plain, **fields)

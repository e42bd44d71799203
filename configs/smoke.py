"""A tiny end-to-end config: cifar_resnet8 at width 4 on 16x16 synthetic images, 8 steps.
Runs in seconds on a CPU; the tests and `launch/local.sh` use it.

    resnet-jax train --config configs/smoke.py --workdir /tmp/smoke

Arguments: depth (default 8), shortcut (default A), plain (default false), steps (default 8),
replicas (default 1: seeds trained as one program).
"""
import ml_collections

from resnet_jax import schema
from resnet_jax.config import parse_config_arg

ARG_DEFAULTS = {"depth": 8, "shortcut": "A", "plain": False, "steps": 8, "replicas": 1}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_config_arg(arg, ARG_DEFAULTS)
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.model = ml_collections.ConfigDict(dict(
        arch="cifar", depth=args["depth"], plain=args["plain"], shortcut=args["shortcut"],
        bottleneck_stride="v1", zero_init_residual=False, width=4,
        dtype="float32", scan_blocks=False, init_from="",
        block="auto", **schema.VARIANT_DEFAULTS))

    config.data = ml_collections.ConfigDict(dict(
        pipeline="in_memory", source="synthetic", name="synthetic", path="", data_dir="",
        num_val_examples=64, train_augment="pad_crop_flip", image_size=16, eval_resize=16,
        lighting_std=0.0, normalize="per_pixel_mean", eval_crops="center",
        multiscale_sizes=(16,), on_corrupt="error",
        synthetic_examples=320, num_classes=0, prefetch=2, workers=0))

    config.optim = ml_collections.ConfigDict(dict(
        name="sgd", lr=0.1, lr_scaling="none", base_batch_size=32, momentum=0.9,
        nesterov=False, weight_decay=1e-4, decay_bn_and_bias=True, schedule="piecewise",
        schedule_unit="steps", boundaries=(args["steps"] // 2,), decay_factor=0.1,
        warmup="none", warmup_length=0, warmup_lr=0.0, label_smoothing=0.0))

    config.train = ml_collections.ConfigDict(dict(
        batch_size=32, eval_batch_size=32, num_steps=args["steps"], bn_mode="global",
        bn_group_size=1, steps_per_dispatch=2, log_every_steps=2, eval_every_steps=4,
        checkpoint_every_steps=4, keep_checkpoints=2, progress=False,
        replicas=args["replicas"]))
    return config

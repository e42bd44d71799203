"""The paper's ImageNet recipe (Sec. 3.4): batch 256, SGD momentum 0.9, weight decay 1e-4,
lr 0.1 divided by 10 at epochs 30 and 60 (and 90 in the 120-epoch run), scale augmentation
(shorter side in [256, 480], 224 crop, flip), PCA lighting (std 0.1), 10-crop evaluation.

    resnet-jax train --config configs/imagenet_paper.py:depth=34,shortcut=B,plain=false,epochs=90 \
        --workdir gs://BUCKET/runs/r34 --config.data.data_dir=gs://BUCKET/tfds

Arguments: depth (18|34|50|101|152|200, default 34), shortcut (A|B|C, default B), plain
(default false), epochs (90 or 120, default 120: the paper's 60e4 iterations), unit (post,
default; preact: the 2016 paper's pre-activation ResNet-200 with depth=200).
num_steps is computed from the epochs at batch 256; change both if you change the batch.
"""
import ml_collections

from resnet_jax import schema
from resnet_jax.config import parse_config_arg

ARG_DEFAULTS = {"depth": 34, "shortcut": "B", "plain": False, "epochs": 120, "unit": "post"}
IMAGENET_TRAIN_EXAMPLES = 1_281_167
BATCH = 256


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_config_arg(arg, ARG_DEFAULTS)
    if args["epochs"] < 1:
        raise ValueError(f"config argument epochs={args['epochs']} must be positive")
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.model = ml_collections.ConfigDict(dict(
        arch="imagenet", depth=args["depth"], plain=args["plain"], shortcut=args["shortcut"],
        bottleneck_stride="v1", zero_init_residual=False, width=64,
        dtype="float32", scan_blocks=False, init_from="",
        block="auto", **{**schema.VARIANT_DEFAULTS, "unit": args["unit"]}))

    # Per-channel mean: the per-pixel mean of random crops of randomly rescaled images is
    # flat across the 224x224 field, so it equals the per-channel mean up to noise.
    config.data = ml_collections.ConfigDict(dict(
        pipeline="streaming", source="tfds", name="imagenet2012", path="", data_dir="",
        num_val_examples=0, train_augment="scale", image_size=224, eval_resize=256,
        lighting_std=0.1, normalize="per_channel", eval_crops="10crop",
        multiscale_sizes=(224, 256, 384, 480, 640), on_corrupt="error",
        synthetic_examples=2048, num_classes=0, prefetch=2, workers=-1))

    boundaries = (30, 60, 90) if args["epochs"] > 90 else (30, 60)
    config.optim = ml_collections.ConfigDict(dict(
        name="sgd", lr=0.1, lr_scaling="none", base_batch_size=BATCH, momentum=0.9,
        nesterov=False, weight_decay=1e-4, decay_bn_and_bias=True, schedule="piecewise",
        schedule_unit="epochs", boundaries=boundaries, decay_factor=0.1, warmup="none",
        warmup_length=0, warmup_lr=0.0, label_smoothing=0.0))

    steps_per_epoch = IMAGENET_TRAIN_EXAMPLES // BATCH
    config.train = ml_collections.ConfigDict(dict(
        batch_size=BATCH, eval_batch_size=200, num_steps=args["epochs"] * steps_per_epoch,
        bn_mode="global", bn_group_size=1, steps_per_dispatch=1, log_every_steps=100,
        eval_every_steps=steps_per_epoch, checkpoint_every_steps=1000, keep_checkpoints=3,
        progress=True, replicas=1))
    return config

"""A modern ImageNet recipe: ResNet v1.5 (stride on the 3x3), bf16 compute, zero-init of the
last BN of each block, batch 1024 with linearly scaled lr (0.1 per 256), 5 epochs of linear
warmup then cosine decay, label smoothing 0.1, no weight decay on BN and biases, Inception
crop, centre-crop evaluation (resize 256, crop 224). A plain net gets no zero-init (it has no
shortcut: a zero last BN would make it dead from step 0).

    resnet-jax train --config configs/imagenet_modern.py:depth=50,epochs=90 --workdir W

Arguments: depth (default 50), shortcut (default B), plain (default false), epochs
(default 90), batch (default 1024).
"""
import ml_collections

from resnet_jax import schema
from resnet_jax.config import parse_config_arg

ARG_DEFAULTS = {"depth": 50, "shortcut": "B", "plain": False, "epochs": 90, "batch": 1024}
IMAGENET_TRAIN_EXAMPLES = 1_281_167


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_config_arg(arg, ARG_DEFAULTS)
    if args["epochs"] < 1 or args["batch"] < 1:
        raise ValueError("config arguments epochs and batch must be positive")
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.model = ml_collections.ConfigDict(dict(
        arch="imagenet", depth=args["depth"], plain=args["plain"], shortcut=args["shortcut"],
        bottleneck_stride="v1.5", zero_init_residual=not args["plain"], width=64,
        dtype="bfloat16", scan_blocks=False, init_from="",
        block="auto", **schema.VARIANT_DEFAULTS))

    config.data = ml_collections.ConfigDict(dict(
        pipeline="streaming", source="tfds", name="imagenet2012", path="", data_dir="",
        num_val_examples=0, train_augment="inception", image_size=224, eval_resize=256,
        lighting_std=0.0, normalize="per_channel", eval_crops="center",
        multiscale_sizes=(224, 256, 384, 480, 640), on_corrupt="error",
        synthetic_examples=2048, num_classes=0, prefetch=2, workers=-1))

    config.optim = ml_collections.ConfigDict(dict(
        name="sgd", lr=0.1, lr_scaling="linear", base_batch_size=256, momentum=0.9,
        nesterov=False, weight_decay=5e-5, decay_bn_and_bias=False, schedule="cosine",
        schedule_unit="epochs", boundaries=(), decay_factor=0.1, warmup="linear",
        warmup_length=5, warmup_lr=0.0, label_smoothing=0.1))

    steps_per_epoch = IMAGENET_TRAIN_EXAMPLES // args["batch"]
    config.train = ml_collections.ConfigDict(dict(
        batch_size=args["batch"], eval_batch_size=512,
        num_steps=args["epochs"] * steps_per_epoch, bn_mode="global", bn_group_size=1,
        steps_per_dispatch=1, log_every_steps=100, eval_every_steps=steps_per_epoch,
        checkpoint_every_steps=1000, keep_checkpoints=3, progress=True, replicas=1))
    return config

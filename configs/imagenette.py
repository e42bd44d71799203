"""The paper's ImageNet pipeline on real photographs: Imagenette (10 ImageNet classes, 9,469
photographs at 224x224 in ../shared/data/imagenette-224-train.tar), validating on a seeded
held-out part of it (947 images, 10%, the same part in every run).

    resnet-jax train --config configs/imagenette.py --workdir runs/imagenette-r18
    resnet-jax train --config configs/imagenette.py:depth=50,steps=2000,batch=256 --workdir W
    resnet-jax train --config configs/imagenette.py:size=112,steps=600,batch=32 --workdir W  # CPU

Data as the paper's ImageNet recipe (configs/imagenet_paper.py): scale augmentation (shorter
side in [256, 480] for a 224 crop, scaled with `size`), flip, PCA lighting 0.1, per-channel
normalization; the streaming pipeline (grain, no TensorFlow) reads the tar by offset.
Evaluation: resize 256/224 x size, centre crop (`crops=10crop` or `multiscale` for the
paper's other views). Optimizer: SGD momentum 0.9, weight decay 1e-4, lr 0.1 x batch / 256,
divided by 10 at 50% and 75% of the steps (as the CIFAR recipe's 32k/48k of 64k).

Arguments: depth (18|34|50|101|152, default 18), shortcut (default B), size (training crop,
default 224), steps (default 3000, ~45 epochs at batch 128), batch (default 128), crops
(center|10crop|multiscale), data (the tar, or an image folder or tar of the same layout;
default ../shared/data/imagenette-224-train.tar beside this checkout), tfds (a tfds dataset
name instead of data, e.g. one made by `resnet-jax prepare folder`, with
--config.data.data_dir=DIR), workers (decoding processes; -1: one per core), val (held-out
images, default 947; 0: the data's own val/validation/test split).
"""
import os

import ml_collections

from resnet_jax import schema
from resnet_jax.config import parse_config_arg

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                    "imagenette-224-train.tar")
ARG_DEFAULTS = {"depth": 18, "shortcut": "B", "size": 224, "steps": 3000, "batch": 128,
                "crops": "center", "data": os.path.normpath(DATA), "tfds": "", "workers": -1,
                "val": 947}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_config_arg(arg, ARG_DEFAULTS)
    if min(args["size"], args["steps"], args["batch"]) < 1:
        raise ValueError("config arguments size, steps and batch must be positive")
    size, steps = args["size"], args["steps"]
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.model = ml_collections.ConfigDict(dict(
        arch="imagenet", depth=args["depth"], plain=False, shortcut=args["shortcut"],
        bottleneck_stride="v1", zero_init_residual=False, width=64,
        dtype="float32", scan_blocks=False, init_from="",
        block="auto", **schema.VARIANT_DEFAULTS))

    data, name = args["data"], args["tfds"]
    if name and data != ARG_DEFAULTS["data"]:
        raise ValueError("config arguments data and tfds name two datasets: give one")
    source = "tfds" if name else "folder" if os.path.isdir(data) else "tar"
    config.data = ml_collections.ConfigDict(dict(
        pipeline="streaming", source=source, name=name, path="" if name else data,
        data_dir="", num_val_examples=args["val"], train_augment="scale",
        image_size=size, eval_resize=round(256 * size / 224), lighting_std=0.1,
        normalize="per_channel", eval_crops=args["crops"],
        multiscale_sizes=tuple(sorted({round(s * size / 224) for s in (224, 256, 384, 480,
                                                                         640)})),
        on_corrupt="error", synthetic_examples=1, num_classes=0,
        prefetch=2, workers=args["workers"]))

    config.optim = ml_collections.ConfigDict(dict(
        name="sgd", lr=0.1, lr_scaling="linear", base_batch_size=256, momentum=0.9,
        nesterov=False, weight_decay=1e-4, decay_bn_and_bias=True, schedule="piecewise",
        schedule_unit="steps", boundaries=_boundaries(steps), decay_factor=0.1,
        warmup="none", warmup_length=0, warmup_lr=0.0, label_smoothing=0.0))

    every = max(1, min(500, steps // 4))
    config.train = ml_collections.ConfigDict(dict(
        batch_size=args["batch"], eval_batch_size=args["batch"], num_steps=steps,
        bn_mode="global", bn_group_size=1, steps_per_dispatch=1,
        log_every_steps=max(1, min(50, steps // 10)), eval_every_steps=every,
        checkpoint_every_steps=every, keep_checkpoints=2, progress=True, replicas=1))
    return config


def _boundaries(steps: int) -> tuple:
    """lr /10 at 50% and 75% of the steps: those of them past step 0, once each (a short run
    of 1-3 steps has fewer)."""
    return tuple(sorted({b for b in (steps // 2, steps * 3 // 4) if b > 0}))

"""Fine-tuning: start from a model directory (`resnet-jax convert` of torchvision/timm weights,
or `resnet-jax export` of a run), replace the classifier for the new classes, train on an
image folder.

    resnet-jax convert --from torchvision resnet50-0676ba61.pth --model resnet50 --out r50
    resnet-jax train --config configs/finetune.py:model=r50,data=flowers --workdir runs/ft

Arguments: model (a model directory, required), data (an image folder: `data/train/<class>/
<image>` and `data/val/<class>/<image>` (or `validation`, `test`), or, with pipeline=in_memory,
an image-folder .tar.gz), pipeline (streaming, the default: Inception crop and ImageNet
mean/std, as the ImageNet weights expect; in_memory: same-size images, pad-4 crop + flip and
the data's own statistics), size (training crop; default the model's own eval crop; the
evaluation resizes the shorter side to the model's resize x size / its crop, so its centre
crop shows as much of the image as the model's own view), steps (default 2000), lr (default
0.01: SGD momentum 0.9, cosine, 100 steps of warmup), batch (default 64). The architecture comes from the model directory; the number of classes from
the data; every layer but the classifier starts from the model's weights.
"""
import json
import os

import ml_collections

from resnet_jax import schema
from resnet_jax.config import parse_config_arg
from resnet_jax.models import parse_model_name

ARG_DEFAULTS = {"model": "", "data": "", "pipeline": "streaming", "size": 0, "steps": 2000,
                "lr": 0.01, "batch": 64}


def _model_dir(path: str) -> tuple[dict, dict]:
    """(model.json, preprocessing.json) of a model directory, or a ValueError naming it."""
    if not path:
        raise ValueError("configs/finetune.py needs model=DIR (a model directory from "
                         "`resnet-jax convert` or `resnet-jax export`)")
    try:
        with open(os.path.join(path, "model.json")) as f:
            model = json.load(f)
        with open(os.path.join(path, "preprocessing.json")) as f:
            prep = json.load(f)
    except OSError as err:
        raise ValueError(f"config argument model={path!r}: not a model directory ({err})") from None
    return model, prep


def _eval_resize(prep: dict, size: int) -> int:
    """The model's own eval resize scaled with the crop (256 for 224 -> 128 for 112), so the
    view shows as much of the image as the model's own (and as the Inception crops of
    training cover); the model's resize itself would leave a centre patch (112 of 256)."""
    if not prep.get("resize") or not prep.get("crop"):
        return size
    return max(size, round(int(prep["resize"]) * size / int(prep["crop"])))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_config_arg(arg, ARG_DEFAULTS)
    if not args["data"]:
        raise ValueError("configs/finetune.py needs data=PATH (an image folder, or a .tar.gz "
                         "with pipeline=in_memory)")
    model, prep = _model_dir(args["model"])
    fields = model["fields"]
    arch, depth, plain = parse_model_name(model["name"])
    streaming = args["pipeline"] == "streaming"
    size = args["size"] or int(prep["crop"])
    tar = args["data"].endswith((".tar", ".tar.gz", ".tgz"))
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.model = ml_collections.ConfigDict(dict(
        arch=arch, depth=depth, plain=plain, shortcut=fields["shortcut"],
        bottleneck_stride=fields["bottleneck_stride"], zero_init_residual=False,
        width=int(fields["width"]), dtype="float32", scan_blocks=False,
        init_from=args["model"], block=fields.get("block", "auto"),
        # model directories older than the variants hold none: the defaults are what they ran
        **{k: fields.get(k, v) for k, v in schema.VARIANT_DEFAULTS.items()}))

    config.data = ml_collections.ConfigDict(dict(
        pipeline=args["pipeline"], source="tar" if tar else "folder", name="",
        path=args["data"], data_dir="", num_val_examples=0,
        train_augment="inception" if streaming else "pad_crop_flip", image_size=size,
        eval_resize=_eval_resize(prep, size) if streaming else size, lighting_std=0.0,
        normalize="per_channel", eval_crops="center", multiscale_sizes=(size,),
        on_corrupt="error", synthetic_examples=1, num_classes=0,
        prefetch=2, workers=-1))

    config.optim = ml_collections.ConfigDict(dict(
        name="sgd", lr=args["lr"], lr_scaling="none", base_batch_size=args["batch"],
        momentum=0.9, nesterov=False, weight_decay=1e-4, decay_bn_and_bias=False,
        schedule="cosine", schedule_unit="steps", boundaries=(), decay_factor=0.1,
        warmup="linear", warmup_length=min(100, args["steps"] // 10), warmup_lr=0.0,
        label_smoothing=0.0))

    every = max(1, min(500, args["steps"]))
    config.train = ml_collections.ConfigDict(dict(
        batch_size=args["batch"], eval_batch_size=args["batch"], num_steps=args["steps"],
        bn_mode="global", bn_group_size=1, steps_per_dispatch=1,
        log_every_steps=max(1, min(50, args["steps"])), eval_every_steps=every,
        checkpoint_every_steps=every, keep_checkpoints=2, progress=True, replicas=1))
    return config

"""The paper's CIFAR-10 recipe (Sec. 4.2): 45k/5k split, batch 128, lr 0.1 /10 at 32k and 48k
iterations, stop at 64k, pad-4 crop + flip, option A shortcuts, single-view test.

    resnet-jax train --config configs/cifar10.py:depth=110,shortcut=A,plain=false --workdir W
    resnet-jax train --config configs/cifar10.py:depth=20,data=cifar10-train.tar.gz --workdir W
    resnet-jax train --config configs/cifar10.py:depth=110,replicas=5 --workdir W   # 5 seeds
    resnet-jax train --config configs/cifar10.py:depth=164,block=bottleneck,unit=preact --workdir W

Arguments (after the colon): depth (6n+2, or 9n+2 with block=bottleneck; default 20), block
(auto = basic | bottleneck: the 2016 paper's ResNet-164/1001), unit (post | bn_after_add |
relu_before_add | relu_preact | preact, default post: see resnet_jax.models.blocks), shortcut
(A|B|C; default A with basic blocks, B with bottlenecks, as the papers),
plain (default false), data (default: CIFAR-10 from tfds, downloaded once and cached; or a
local copy: an image-folder .tar/.tar.gz, `train/<class>/<image>`, or such a folder),
replicas (default 1; N trains the seeds seed .. seed + N - 1 as one program, the paper's
mean ± std over runs at about the cost of one on a GPU).
ResNet-110 and deeper warm up at lr 0.01 for the first 400 iterations as the paper does.
The shortcut variants of the 2016 paper are fields: --config.model.shortcut_variant=
exclusive_gate --config.model.gate_bias=-6 (README "Shortcut and unit variants").
"""
import ml_collections

from resnet_jax import schema
from resnet_jax.config import parse_config_arg

ARG_DEFAULTS = {"depth": 20, "shortcut": "", "plain": False, "data": "", "replicas": 1,
                "block": "auto", "unit": "post"}


def data_source(path: str) -> dict:
    """data.source / name / path for the `data` argument."""
    if not path:
        return {"source": "tfds", "name": "cifar10", "path": ""}
    kind = "tar" if path.endswith((".tar", ".tar.gz", ".tgz")) else "folder"
    return {"source": kind, "name": "cifar10", "path": path}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_config_arg(arg, ARG_DEFAULTS)
    config = ml_collections.ConfigDict()
    config.seed = 0

    # The 2016 paper projects where a bottleneck net's shape changes (its appendix).
    bottleneck = schema.resolve_block("cifar", args["depth"], args["block"]) == "bottleneck"
    config.model = ml_collections.ConfigDict(dict(
        arch="cifar", depth=args["depth"], plain=args["plain"],
        shortcut=args["shortcut"] or ("B" if bottleneck else "A"),
        bottleneck_stride="v1", zero_init_residual=False, width=16, dtype="float32",
        # ResNet-1202 / -1001: 200 / 111 blocks per stage compiled once each (nn.scan).
        scan_blocks=args["depth"] >= 200, init_from="", block=args["block"],
        **{**schema.VARIANT_DEFAULTS, "unit": args["unit"]}))

    config.data = ml_collections.ConfigDict(dict(
        pipeline="in_memory", **data_source(args["data"]), data_dir="", num_val_examples=5000,
        train_augment="pad_crop_flip", image_size=32, eval_resize=32, lighting_std=0.0,
        normalize="per_pixel_mean", eval_crops="center", multiscale_sizes=(32,),
        on_corrupt="error", synthetic_examples=1024, num_classes=0, prefetch=2, workers=-1))

    # The paper's ResNet-110 starts at 0.01 "until the training error is below 80% (about
    # 400 iterations)"; a fixed 400-step constant warmup reproduces that schedule.
    deep = args["depth"] >= 110
    config.optim = ml_collections.ConfigDict(dict(
        name="sgd", lr=0.1, lr_scaling="none", base_batch_size=128, momentum=0.9,
        nesterov=False, weight_decay=1e-4, decay_bn_and_bias=True, schedule="piecewise",
        schedule_unit="steps", boundaries=(32000, 48000), decay_factor=0.1,
        warmup="constant" if deep else "none", warmup_length=400 if deep else 0,
        warmup_lr=0.01 if deep else 0.0, label_smoothing=0.0))

    config.train = ml_collections.ConfigDict(dict(
        batch_size=128, eval_batch_size=1000, num_steps=64000, bn_mode="global",
        bn_group_size=1, steps_per_dispatch=50, log_every_steps=100, eval_every_steps=2000,
        checkpoint_every_steps=2000, keep_checkpoints=3, progress=True,
        # N seeds (seed, seed + 1, ...) of the net trained as one program (vmap); 1: one run.
        replicas=args["replicas"]))
    return config

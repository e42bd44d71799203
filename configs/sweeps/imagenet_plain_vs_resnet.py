"""ImageNet plain-18/34 vs ResNet-18/34 (paper Table 2; top-1 10-crop error 27.94 / 28.54
plain, 27.88 / 25.03 ResNet). The ResNets use option A (identity + zero padding), as in Table 2,
so each has exactly its plain twin's parameters.

    resnet-jax sweep configs/sweeps/imagenet_plain_vs_resnet.py:epochs=90 --workdir gs://B/t2 \
        --set data.data_dir=gs://B/tfds

Argument: epochs (default 120).
"""
import ml_collections

from resnet_jax.sweeps.recipes import parse_args

DEFAULTS = {"epochs": 120}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    epochs = parse_args(arg, DEFAULTS)["epochs"]
    config = ml_collections.ConfigDict()
    config.name = "ImageNet: plain vs ResNet, 18 and 34 layers (Table 2)"
    config.base = f"configs/imagenet_paper.py:shortcut=A,epochs={epochs}"
    config.overrides = []
    config.axes = [("model.depth", [18, 34]), ("model.plain", [True, False])]
    config.recipe_args = [("model.depth", "depth"), ("model.plain", "plain")]
    return config

"""ImageNet ResNet-34 with shortcut options A / B / C (paper Table 3; 10-crop top-1 error
25.03 / 24.52 / 24.19). The plain-34 row of Table 3 is in imagenet_plain_vs_resnet.py.

    resnet-jax sweep configs/sweeps/imagenet_shortcut34.py:epochs=90 --workdir gs://B/abc \
        --set data.data_dir=gs://B/tfds

Argument: epochs (default 120, the paper's 60e4 iterations at batch 256).
"""
import ml_collections

from resnet_jax.sweeps.recipes import parse_args

DEFAULTS = {"epochs": 120}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    epochs = parse_args(arg, DEFAULTS)["epochs"]
    config = ml_collections.ConfigDict()
    config.name = "ImageNet: ResNet-34 shortcut options A/B/C (Table 3)"
    config.base = f"configs/imagenet_paper.py:depth=34,epochs={epochs}"
    config.overrides = []
    config.axes = [("model.shortcut", ["A", "B", "C"])]
    config.recipe_args = [("model.shortcut", "shortcut")]
    return config

"""A tiny sweep for tests and demos: cifar_resnet8 (width 4, 16x16 synthetic images, 8 steps),
plain vs residual x 2 seeds = 4 members, seconds each on a CPU.

    resnet-jax sweep configs/sweeps/smoke.py --workdir /tmp/sweep && resnet-jax report /tmp/sweep

Argument: steps (default 8).
"""
import ml_collections

from resnet_jax.sweeps.recipes import parse_args

DEFAULTS = {"steps": 8}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    steps = parse_args(arg, DEFAULTS)["steps"]
    config = ml_collections.ConfigDict()
    config.name = "smoke: plain vs ResNet-8, 2 seeds"
    config.base = f"configs/smoke.py:steps={steps}"
    config.overrides = []
    config.axes = [("model.plain", [False, True]), ("seed", [0, 1])]
    config.recipe_args = [("model.plain", "plain")]
    return config

"""CIFAR-10 shortcut options A / B / C (Sec. 3.3 on CIFAR), several seeds.

    resnet-jax sweep configs/sweeps/cifar10_shortcut.py:depth=32,seeds=3 --workdir runs/abc

Arguments: depth (6n+2, default 20), seeds (default 3), steps (default 64000; a shorter run
keeps the lr drops at 1/2 and 3/4), data (the recipe's: default tfds cifar10, or a local
image-folder tar or folder). Option A has exactly the parameters of the plain net; B adds
two 1x1 projections, C one per block.
"""
import ml_collections

from resnet_jax.sweeps.recipes import parse_args, shortened_schedule

DEFAULTS = {"depth": 20, "seeds": 3, "steps": 64000, "data": ""}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_args(arg, DEFAULTS)
    config = ml_collections.ConfigDict()
    config.name = f"CIFAR-10: ResNet-{args['depth']} shortcut options A/B/C"
    config.base = f"configs/cifar10.py:depth={args['depth']}" + (
        f",data={args['data']}" if args["data"] else "")
    config.overrides = shortened_schedule(args["steps"], 64000, (32000, 48000))
    config.axes = [("model.shortcut", ["A", "B", "C"]), ("seed", list(range(args["seeds"])))]
    config.recipe_args = [("model.shortcut", "shortcut")]
    return config

"""CIFAR-10 depth x plain/residual (paper Fig. 6 and Table 6): depths 20, 32, 44, 56, 110,
each as a plain net and as a ResNet (option A), on the 45k/5k split of the shared train set.

    resnet-jax sweep configs/sweeps/cifar10_depth_plain.py --workdir runs/fig6
    resnet-jax sweep configs/sweeps/cifar10_depth_plain.py:steps=16000,depths=20/56 \
        --workdir runs/fig6_short

Arguments (after the colon, comma separated): steps (default 64000, the paper's; a shorter run
keeps the lr drops at 1/2 and 3/4 of it, as the paper's 32k/48k are of 64k), depths
(slash separated, default 20/32/44/56/110), seeds (number of seeds, default 1), data (the
recipe's: default tfds cifar10, or a local image-folder tar or folder).
ResNet-110 gets the paper's lr 0.01 warmup from the recipe (depth is a recipe argument).
"""
import ml_collections

from resnet_jax.sweeps.recipes import parse_args, shortened_schedule

DEFAULTS = {"steps": 64000, "depths": (20, 32, 44, 56, 110), "seeds": 1, "data": ""}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_args(arg, DEFAULTS)
    config = ml_collections.ConfigDict()
    config.name = "CIFAR-10: plain vs ResNet by depth (Fig. 6, Table 6)"
    config.base = "configs/cifar10.py" + (f":data={args['data']}" if args["data"] else "")
    config.overrides = shortened_schedule(args["steps"], 64000, (32000, 48000))
    config.axes = [("model.depth", list(args["depths"])), ("model.plain", [True, False])]
    if args["seeds"] > 1:
        config.axes.append(("seed", list(range(args["seeds"]))))
    config.recipe_args = [("model.depth", "depth"), ("model.plain", "plain")]
    return config

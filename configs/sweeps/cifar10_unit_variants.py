"""CIFAR-10 ResNet-110 and ResNet-164 with the unit variants of He et al. 2016, "Identity
Mappings in Deep Residual Networks" (arXiv 1603.05027), Table 2 (its Fig. 4 (a)-(e)), with
the paper's test error beside ours in `resnet-jax report`.

    resnet-jax sweep configs/sweeps/cifar10_unit_variants.py:data=D --seeds 5 \
        --workdir runs/identity_table2 && resnet-jax report runs/identity_table2

Arguments: basic (depth of the basic-block net, 6n+2, default 110; 0 leaves it out),
bottleneck (depth of the bottleneck net, 9n+2, default 164; 0 leaves it out), units (slash
separated, default post/bn_after_add/relu_before_add/relu_preact/preact), steps (default
64000; a shorter run keeps the lr drops at 1/2 and 3/4), data (the recipe's).

The two nets are a joint axis (model.depth, model.block), handed to configs/cifar10.py as
its arguments, so the bottleneck net gets its projection shortcuts (option B) and both the
lr 0.01 warmup of the first 400 iterations, as in the paper (which warms up every CIFAR run).

The published column: Table 2 of arXiv 1603.05027, CIFAR-10 test error (%), median of 5
runs; the report prints ours as best (mean ± std) on the 45k/5k validation split of the shared
JPEG copy, so the columns are not the same statistic on the same images. The numbers were
copied from a transcription of the paper's arXiv LaTeX source (its table `tab:activations`),
found through a search of stored public text: this project could not open the paper's PDF.
"""
import ml_collections

from resnet_jax.sweeps.recipes import parse_args, shortened_schedule

UNITS = ("post", "bn_after_add", "relu_before_add", "relu_preact", "preact")
# Table 2: unit -> (ResNet-110, ResNet-164) test error
PUBLISHED = {"post": ("6.61", "5.93"), "bn_after_add": ("8.17", "6.50"),
             "relu_before_add": ("7.84", "6.14"), "relu_preact": ("6.71", "5.91"),
             "preact": ("6.37", "5.46")}
DEFAULTS = {"basic": 110, "bottleneck": 164, "units": UNITS, "steps": 64000, "data": ""}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_args(arg, DEFAULTS)
    unknown = [u for u in args["units"] if u not in UNITS]
    if unknown:
        raise ValueError(f"sweep argument units: {unknown} unknown; units: {'/'.join(UNITS)}")
    nets = [(d, b) for d, b in ((args["basic"], "basic"), (args["bottleneck"], "bottleneck"))
            if d]
    if not nets:
        raise ValueError("sweep arguments basic=0 and bottleneck=0 leave no net to train")
    config = ml_collections.ConfigDict()
    config.name = ("CIFAR-10: unit variants of ResNet-"
                   + "/".join(str(d) for d, _ in nets) + " (He et al. 2016, Table 2)")
    config.base = "configs/cifar10.py" + (f":data={args['data']}" if args["data"] else "")
    config.overrides = shortened_schedule(args["steps"], 64000, (32000, 48000))
    config.axes = [(("model.depth", "model.block"), nets),
                   ("model.unit", list(args["units"]))]
    config.recipe_args = [("model.depth", "depth"), ("model.block", "block"),
                          ("model.unit", "unit")]
    paper = {(110, "basic"): 0, (164, "bottleneck"): 1}
    config.published = [
        ({"model.depth": d, "model.block": b, "model.unit": u}, PUBLISHED[u][paper[(d, b)]])
        for d, b in nets if (d, b) in paper for u in args["units"]]
    config.published_source = ("He et al. 2016, Identity Mappings in Deep Residual Networks "
                               "(arXiv 1603.05027), Table 2: CIFAR-10 test error, median of "
                               "5 runs")
    return config

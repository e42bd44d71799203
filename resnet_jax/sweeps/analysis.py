"""``resnet-jax analyze WORKDIR``: std of each 3x3 layer's response (paper Fig. 7).

The response of a layer is its 3x3 conv's output after BN and before the ReLU (and, in a
ResNet, before the addition), from ``resnet_jax.models.conv3x3_responses``, with the model in
eval mode (running BN statistics). Its std is taken over every output of the layer: all
examples, positions and channels. The paper's reading: residual functions are closer to zero
than unreferenced ones, so ResNets respond less than their plain twins.

WORKDIR is one training run (writes ``WORKDIR/analysis.json``) or a sweep directory (every
finished member is analysed, skipping those already done unless ``--force``). A run of several
replicas is analysed replica by replica (``analysis.json`` then holds ``replicas``: one
``layer_std`` each).
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from resnet_jax import files
from resnet_jax.sweeps import collect


class MomentAccumulator:
    """Running count, sum and sum of squares per layer, in float64 (batches of any size)."""

    def __init__(self) -> None:
        self.count: np.ndarray | None = None
        self.total: np.ndarray | None = None
        self.total_sq: np.ndarray | None = None

    def add(self, counts: np.ndarray, means: np.ndarray, variances: np.ndarray) -> None:
        """Add one batch's per-layer element counts, means and (population) variances."""
        counts, means, variances = (np.asarray(a, np.float64) for a in (counts, means, variances))
        total, total_sq = counts * means, counts * (variances + means ** 2)
        if self.count is None:
            self.count, self.total, self.total_sq = counts, total, total_sq
        else:
            self.count, self.total, self.total_sq = (
                self.count + counts, self.total + total, self.total_sq + total_sq)

    def std(self) -> np.ndarray:
        """Population std per layer, float64 (num_layers,)."""
        if self.count is None:
            raise ValueError("no images were analysed (empty eval set?)")
        mean = self.total / self.count
        return np.sqrt(np.maximum(self.total_sq / self.count - mean ** 2, 0.0))


def make_moments_fn(model: Any):
    """jit ``(variables, images) -> (means, variances)``, each (num_layers,) float32."""
    from resnet_jax.models import conv3x3_responses

    def moments(variables, images):
        responses = [r.astype(jnp.float32) for r in conv3x3_responses(model, variables, images)]
        means = jnp.stack([jnp.mean(r) for r in responses])
        # variance about the batch mean, computed two-pass for accuracy
        variances = jnp.stack([jnp.mean(jnp.square(r - m)) for r, m in zip(responses, means)])
        return means, variances

    return jax.jit(moments)


def layer_response_stds(model: Any, variables: Any, batches: Iterable[jax.Array]) -> np.ndarray:
    """Std of each 3x3 layer's response over all images of ``batches`` (float (B, H, W, 3),
    normalized); float64 (num_3x3_layers,) in network order."""
    from resnet_jax.models import conv3x3_responses

    moments = make_moments_fn(model)
    acc = MomentAccumulator()
    per_example = None
    for images in batches:
        if per_example is None:
            shapes = jax.eval_shape(lambda v, x: conv3x3_responses(model, v, x),
                                    variables, jax.ShapeDtypeStruct((1, *images.shape[1:]),
                                                                    images.dtype))
            per_example = np.array([np.prod(s.shape) for s in shapes], np.float64)
        means, variances = moments(variables, images)
        acc.add(per_example * images.shape[0], np.asarray(means), np.asarray(variances))
    return acc.std()


def eval_images(config: Any, num_images: int, batch_size: int) -> Iterator[jax.Array]:
    """Normalized eval images of the run's data (the centre view, padding dropped), float32
    batches, whatever views the run itself was evaluated with."""
    import ml_collections

    from resnet_jax.data import make_pipeline

    data = ml_collections.ConfigDict(config.data.to_dict())
    data.eval_crops = "center"
    pipeline = make_pipeline(data, global_batch_size=config.train.batch_size,
                             eval_batch_size=batch_size, seed=config.seed, eval_only=True)
    preprocess = jax.jit(lambda x: pipeline.device_preprocess(jax.random.key(0), x, False))
    left = num_images
    try:
        for batch in pipeline.eval_batches():
            images = np.asarray(batch["image"])[:, 0][np.asarray(batch["mask"], bool)][:left]
            if len(images):
                yield preprocess(images)
                left -= len(images)
            if left <= 0:
                return
    finally:
        pipeline.close()


def analyze_run(workdir: files.PathLike, num_images: int = 1000, batch_size: int = 250) -> dict:
    """Load a trained run, compute its per-layer response stds (of each replica), write
    ``analysis.json``."""
    from resnet_jax.train import replicas
    from resnet_jax.train.loop import load_trained, read_config  # lazy: orbax

    n = replicas.count(read_config(os.fspath(workdir)))
    each = []
    for i in range(n):
        config, model, variables = load_trained(os.fspath(workdir),
                                                replica=i if n > 1 else None)
        stds = layer_response_stds(model, variables,
                                   eval_images(config, num_images, batch_size))
        each.append({"layer_std": [float(s) for s in stds]})
    result = {"model": _model_label(config), "num_images": int(num_images),
              **(each[0] if n == 1 else {"replicas": each})}
    files.write_json(epath.Path(workdir) / collect.ANALYSIS_FILE, result)
    return result


def _model_label(config: Any) -> str:
    try:
        from resnet_jax.models import model_name

        return model_name(config.model.arch, config.model.depth, config.model.plain)
    except Exception:  # noqa: BLE001 - a label is not worth failing an analysis
        return ""


def run_dirs(workdir: files.PathLike) -> list[epath.Path]:
    """The runs under ``workdir`` (local or remote): itself if it is done (its results.json
    reads back whole), else its done members."""
    root = epath.Path(workdir)
    if collect.is_done(root):
        return [root]
    runs = []
    if root.is_dir():
        runs = sorted((d for d in root.iterdir() if collect.is_done(d)), key=lambda d: d.name)
    if not runs:
        raise ValueError(f"{str(root)!r} holds no finished run (no readable results.json here "
                         "or in its subdirectories)")
    return runs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``resnet-jax analyze``."""
    parser.add_argument("workdir", help="a training workdir, or a sweep directory")
    parser.add_argument("--num-images", type=int, default=1000,
                        help="eval images to average over (default 1000)")
    parser.add_argument("--batch-size", type=int, default=250, help="images per forward pass")
    parser.add_argument("--force", action="store_true", help="redo runs that have analysis.json")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``resnet-jax analyze``: 0, or 1 if any run failed to analyse."""
    if args.num_images < 1 or args.batch_size < 1:
        raise ValueError("--num-images and --batch-size must be positive")
    status = 0
    for rdir in run_dirs(args.workdir):
        if files.read_json(rdir / collect.ANALYSIS_FILE) is not None and not args.force:
            print(f"[analyze] {rdir.name}: already analysed (use --force to redo)")
            continue
        try:
            result = analyze_run(rdir, args.num_images, args.batch_size)
        except Exception as err:  # noqa: BLE001 - analyse the other members anyway
            print(f"[analyze] {rdir.name}: FAILED {type(err).__name__}: {err}")
            status = 1
            continue
        for i, one in enumerate(result.get("replicas", [result])):
            stds = ", ".join(f"{s:.3f}" for s in one["layer_std"])
            which = f" replica {i}" if "replicas" in result else ""
            print(f"[analyze] {rdir.name}{which}: {len(one['layer_std'])} layers, std [{stds}]")
    return status

"""Input-pipeline throughput: images/s per CPU core for the streaming training augmentations.

Generates full-size JPEGs (500x375, smooth random images, quality 90) in a temporary
image-folder tree, then times `resnet_jax.data.make_pipeline` (streaming, folder source:
read file -> fused decode+crop -> resize 224 -> flip -> batch) for the paper's scale
augmentation and for the Inception crop. Two figures each: one tf.data thread (images/s on
one core) and all cores (total / cores).

    python benchmarks/input_pipeline.py            # 512 images, ~1 min on 2 cores
    python benchmarks/input_pipeline.py --smoke    # a few images, a few seconds (CI)
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def write_jpegs(root: str, num: int, size=(500, 375), classes: int = 4, seed: int = 0) -> None:
    """Photo-like random images in root/train|val/<c>/: smooth colour fields (upsampled
    noise) plus grain (Gaussian, sd 16), so files are ~90 KB like ImageNet's (~110 KB)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", num), ("val", classes)):
        for i in range(n):
            cdir = os.path.join(root, split, f"c{i % classes}")
            os.makedirs(cdir, exist_ok=True)
            small = rng.integers(0, 256, (size[1] // 25, size[0] // 25, 3), dtype=np.uint8)
            img = np.asarray(Image.fromarray(small).resize(size, Image.BICUBIC), np.float32)
            img = np.clip(img + rng.normal(0, 16, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(os.path.join(cdir, f"{i:05d}.jpg"), quality=90)


def measure(root: str, augment: str, batch: int, steps: int, threads: int) -> float:
    """Images/s of `steps` batches after one warm-up batch, with `threads` tf.data threads."""
    import ml_collections
    import tensorflow as tf

    from resnet_jax import data

    cfg = ml_collections.ConfigDict(dict(
        pipeline="streaming", source="folder", name="", path=root, data_dir="",
        num_val_examples=0, train_augment=augment, image_size=224, eval_resize=256,
        lighting_std=0.0, normalize="per_channel", eval_crops="center",
        multiscale_sizes=(224,), on_corrupt="error", shuffle_buffer=0, synthetic_examples=1,
        num_classes=0, prefetch=2))
    pipe = data.make_pipeline(cfg, global_batch_size=batch, eval_batch_size=batch, seed=0)
    orig = pipe._epoch_batches

    def limited(epoch, first_step):  # cap tf.data's private threadpool at `threads`
        ds, idx = orig(epoch, first_step)
        opts = tf.data.Options()
        opts.threading.private_threadpool_size = threads
        return ds.with_options(opts), idx

    pipe._epoch_batches = limited
    it = pipe.train_batches(0)
    next(it)  # warm-up: graph tracing, thread start
    start = time.perf_counter()
    for _ in range(steps):
        b = next(it)
    elapsed = time.perf_counter() - start
    assert b["image"].shape == (batch, 224, 224, 3)
    return steps * batch / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few images, a few seconds")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    num, batch = (32, 8) if args.smoke else (args.images, args.batch)
    cores = os.cpu_count() or 1
    steps = max(1, num // batch - 1)
    with tempfile.TemporaryDirectory() as root:
        write_jpegs(root, num)
        tdir = os.path.join(root, "train")
        kb = np.mean([os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(tdir)
                      for f in fs]) / 1024
        print(f"{num} JPEGs 500x375 (mean {kb:.0f} KB), batch {batch}, {steps} timed batches, "
              f"{cores} cores")
        for augment in ("scale", "inception"):
            one = measure(root, augment, batch, steps, threads=1)
            allc = measure(root, augment, batch, steps, threads=cores)
            print(f"{augment:10s} 1 thread: {one:7.0f} img/s per core | "
                  f"{cores} threads: {allc:7.0f} img/s total = {allc / cores:6.0f} per core")


if __name__ == "__main__":
    main()

"""Input-pipeline throughput: images/s per CPU core of the streaming training augmentations
(`resnet_jax.data.make_pipeline`, grain), each as a ratio against the floor that decoding sets
(a plain Pillow decode, `decode.decode_rgb`, of the same files on one core, measured in the
same run), and against the tf.data loader the project used before (benchmarks/tf_reference.py,
where TensorFlow is installed).

Two image sets: generated 500x375 JPEGs (smooth random images with grain, quality 90, ~90 KB
like ImageNet's ~110 KB) and the real photographs of ../shared/data/imagenette-224-train.tar
(224x224). Per set and augmentation: grain with 1 and 2 worker processes (images/s / workers)
and in-process; tf.data with 1 and 2 threads. The decoder table (--decoders) times one
image's scale augmentation with each candidate decoder on one core: the measurement that chose
simplejpeg + OpenCV (resnet_jax/data/augment.py).

    python benchmarks/input_pipeline.py                 # 512 + 512 images, ~3 min on 2 cores
    python benchmarks/input_pipeline.py --repeats 3     # each figure 3 times: best and spread
    python benchmarks/input_pipeline.py --smoke         # a few images, a few seconds (CI)
"""
from __future__ import annotations

import argparse
import io
import os
import tempfile
import time

import numpy as np

IMAGENETTE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                          "data", "imagenette-224-train.tar")


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


def cpu_seconds() -> float:
    """CPU time (user + system) used so far by this process and all its descendants (grain's
    worker processes), from /proc: images per CPU-second is images/s per core, and it holds
    on a machine shared with other work, where wall-clock rates do not."""
    ticks = os.sysconf("SC_CLK_TCK")
    parent, used = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(pid)] = int(fields[1])
        used[int(pid)] = (int(fields[11]) + int(fields[12])) / ticks
    mine, total = {os.getpid()}, 0.0
    changed = True  # descendants: parents are not listed before their children
    while changed:
        changed = False
        for pid, ppid in parent.items():
            if ppid in mine and pid not in mine:
                mine.add(pid)
                changed = True
    for pid in mine:
        total += used.get(pid, 0.0)
    return total


def timed(fn, count: int) -> tuple[float, float]:
    """(images per CPU-second, images per wall-second) of `fn()` making `count` images."""
    cpu, wall = cpu_seconds(), time.perf_counter()
    fn()
    return count / max(cpu_seconds() - cpu, 1e-9), count / (time.perf_counter() - wall)


def data_config(source: str, path: str, augment: str, workers: int, num_val: int = 0):
    import ml_collections
    return ml_collections.ConfigDict(dict(
        pipeline="streaming", source=source, name="", path=path, data_dir="",
        num_val_examples=num_val, train_augment=augment, image_size=224, eval_resize=256,
        lighting_std=0.0, normalize="per_channel", eval_crops="center",
        multiscale_sizes=(224,), on_corrupt="error", shuffle_buffer=0, synthetic_examples=1,
        num_classes=0, prefetch=2, workers=workers))


def grain_rate(cfg, batch: int, steps: int) -> tuple[float, float]:
    """(per CPU-second, per second) of `steps` batches after a warm-up batch per worker
    (start-up excluded; the workers' buffers then hold what they made ahead)."""
    from resnet_jax import data
    pipe = data.make_pipeline(cfg, global_batch_size=batch, eval_batch_size=batch, seed=0)
    it = pipe.train_batches(0)
    for _ in range(max(1, pipe.workers)):
        next(it)
    out = timed(lambda: [next(it) for _ in range(steps)], steps * batch)
    it.close()
    return out


def tf_rate(paths, augment: str, batch: int, steps: int, threads: int) -> tuple[float, float]:
    import tf_reference
    it = iter(tf_reference.train_dataset(paths, augment, batch, threads).as_numpy_iterator())
    next(it)
    return timed(lambda: [next(it) for _ in range(steps)], steps * batch)


def floor_rate(blobs) -> float:
    """Images per CPU-second of a plain Pillow decode (the project's `decode_rgb`)."""
    from resnet_jax.data.decode import decode_rgb
    return timed(lambda: [decode_rgb(b) for b in blobs], len(blobs))[0]


def decoder_rates(blobs) -> dict:
    """Images per CPU-second of the scale augmentation with each candidate decoder."""
    import cv2
    import simplejpeg
    from PIL import Image

    from resnet_jax.data import augment
    from resnet_jax.data.decode import decode_rgb
    cv2.setNumThreads(1)

    def window(h, w, i):
        return augment.scale_window(h, w, np.random.default_rng(i))

    def pillow(b, i):  # Pillow with draft (JPEG DCT scaling), Pillow resize
        with Image.open(io.BytesIO(b)) as im:
            w, h = im.size
            y, x, ch, cw = window(h, w, i)
            f = augment.draft_factor((y, x, ch, cw), 224)
            im.draft("RGB", (-(-w // f), -(-h // f)))
            r = im.size[0] / w  # the decoded scale
            box = (x * r, y * r, (x + cw) * r, (y + ch) * r)
            return np.asarray(im.convert("RGB").resize((224, 224), Image.BILINEAR, box=box))

    def opencv(b, i):  # OpenCV decode (reduced where the window allows), OpenCV resize
        flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2,
                 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
        h, w = augment.jpeg_header(b) or decode_rgb(b).shape[:2]  # a grey photo
        y, x, ch, cw = window(h, w, i)
        f = augment.draft_factor((y, x, ch, cw), 224)
        img = cv2.imdecode(np.frombuffer(b, np.uint8), flags[f])
        img = img[y // f:(y + ch) // f, x // f:(x + cw) // f]
        return cv2.cvtColor(cv2.resize(img, (224, 224), interpolation=cv2.INTER_LINEAR),
                            cv2.COLOR_BGR2RGB)

    def ours(b, i):  # simplejpeg (fast IDCT, DCT scaling) + OpenCV resize
        return augment.crop_resize(b, "x", lambda h, w: window(h, w, i), 224)

    out = {}
    for name, fn in (("Pillow (draft) + Pillow resize", pillow),
                     ("OpenCV decode (reduced) + OpenCV resize", opencv),
                     ("simplejpeg (scaled) + OpenCV resize", ours)):
        out[name] = timed(lambda: [fn(b, i) for i, b in enumerate(blobs)], len(blobs))[0]
    del simplejpeg
    return out


def spread(values) -> str:
    return f"{max(values):7.0f}" + (f" ({min(values):.0f}-{max(values):.0f})"
                                    if len(values) > 1 else "")


def run_set(label, cfg_of, blobs, paths, args, tf_ok) -> None:
    batch, steps = args.batch, max(1, args.images // args.batch - 1)
    floors = []
    print(f"\n{label}: {len(blobs)} images (mean {np.mean([len(b) for b in blobs]) / 1024:.0f} "
          f"KB), batch {batch}, {steps} timed batches")
    for augment in ("scale", "inception"):
        rows = {}
        for _ in range(args.repeats):
            floors.append(floor_rate(blobs))
            for w in args.workers:
                name = f"grain {w} worker(s)" if w else "grain in-process"
                rows.setdefault(name, []).append(grain_rate(cfg_of(augment, w), batch, steps))
            if tf_ok:
                for t in (t for t in args.workers if t > 0):
                    rows.setdefault(f"tf.data {t} thread(s)", []).append(
                        tf_rate(paths, augment, batch, steps, t))
        floor = float(np.median(floors))
        print(f"  {augment}: Pillow decode floor {spread(floors)} img per CPU-second")
        for name, values in rows.items():
            cpu = [v[0] for v in values]
            print(f"    {name:20s} {spread(cpu)} img per CPU-second   x{max(cpu) / floor:.2f} "
                  f"the floor   (wall: {max(v[1] for v in values):.0f} img/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few images, a few seconds")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--imagenette", default=IMAGENETTE)
    parser.add_argument("--decoders", action="store_true", help="also the decoder table")
    args = parser.parse_args()
    if args.smoke:
        args.images, args.batch, args.workers = 32, 8, [0, 1]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
        tf.config.set_visible_devices([], "GPU")
        tf_ok = not args.smoke
    except ImportError:
        tf_ok = False
        print("TensorFlow is not installed: no tf.data figures")
    print(f"{os.cpu_count()} cores; per core = images per CPU-second of every process and "
          "thread involved (workers included)")
    with tempfile.TemporaryDirectory() as root:
        write_jpegs(root, args.images)
        from resnet_jax.data import sources
        train = sources.open_splits(data_config("folder", root, "scale", 0)).train
        blobs = [train.read(i)[0] for i in range(len(train))]
        paths = [train.name(i) for i in range(len(train))]
        run_set("500x375 generated JPEGs", lambda a, w: data_config("folder", root, a, w),
                blobs, paths, args, tf_ok)
        if args.decoders:
            for name, rate in decoder_rates(blobs).items():
                print(f"    decoder {name:42s} {rate:7.0f} img per CPU-second")
    if os.path.exists(args.imagenette):
        # Hold out all but args.images photographs: the training split is a seeded sample.
        held_one = sources.open_splits(data_config("tar", args.imagenette, "scale", 0, 1))
        num_val = len(held_one.train) + 1 - args.images
        train = sources.open_splits(data_config("tar", args.imagenette, "scale", 0,
                                                num_val)).train
        blobs = [train.read(i)[0] for i in range(len(train))]
        with tempfile.TemporaryDirectory() as root:  # tf.data reads files
            paths = []
            for i, b in enumerate(blobs):
                paths.append(os.path.join(root, f"{i:05d}.jpg"))
                with open(paths[-1], "wb") as f:
                    f.write(b)
            run_set("imagenette-224 photographs",
                    lambda a, w: data_config("tar", args.imagenette, a, w, num_val),
                    blobs, paths, args, tf_ok)
            if args.decoders:
                for name, rate in decoder_rates(blobs).items():
                    print(f"    decoder {name:42s} {rate:7.0f} img per CPU-second")
    else:
        print(f"\n{args.imagenette} not found: no imagenette figures")


if __name__ == "__main__":
    main()

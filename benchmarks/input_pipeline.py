"""Input-pipeline throughput: images per CPU-second (= images/s per core) of the streaming
training augmentations (`resnet_jax.data.make_pipeline`, grain), against tf.data's best recipe
for the same augmentation (benchmarks/tf_reference.py: `decode_and_crop_jpeg`, then resize,
one thread) and a plain Pillow decode (`decode.decode_rgb`, the floor a decode-everything
loader sets), all in this one process on the same files.

Three image sets: generated photo-like JPEGs of 500x375 (ImageNet's typical size, ~90 KB)
and 1600x1200 (its large-image tail), and the real photographs of
../shared/data/imagenette-224-train.tar (224x224). Per set and augmentation (scale [256, 480]
and Inception crop), each repeat times, one after the other: the floor, grain decoding in this
thread (`data.workers=0`) and tf.data with one thread; the ratio grain / tf.data is taken
within each repeat. Then wall-clock images/s with 1, 2 and all worker processes. `--decoders`
adds the table of the candidate decoders (one image's window, decoded and resized).

    python benchmarks/input_pipeline.py                # ~5 min on 2 cores
    python benchmarks/input_pipeline.py --decoders     # and the decoder table
    python benchmarks/input_pipeline.py --smoke        # a few images, a few seconds (CI)
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import tempfile
import time

import numpy as np

IMAGENETTE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                          "data", "imagenette-224-train.tar")


def write_jpegs(root: str, num: int, size=(500, 375), classes: int = 4, seed: int = 0) -> None:
    """Photo-like random images in root/train|val/<c>/: smooth colour fields (upsampled
    noise) plus grain (Gaussian, sd 16), so files are ~90 KB at 500x375 like ImageNet's
    (~110 KB); ~0.9 MB at 1600x1200."""
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
    mine, changed = {os.getpid()}, True
    while changed:  # descendants: parents are not listed before their children
        changed = False
        for pid, ppid in parent.items():
            if ppid in mine and pid not in mine:
                mine.add(pid)
                changed = True
    return sum(used.get(pid, 0.0) for pid in mine)


def timed(fn, count: int, in_process: bool) -> tuple[float, float]:
    """(images per CPU-second, images per wall-second) of `fn()` making `count` images.
    In-process work is timed with the process's own clock (ns resolution); work in worker
    processes with /proc (10 ms ticks)."""
    clock = time.process_time if in_process else cpu_seconds
    cpu, wall = clock(), time.perf_counter()
    fn()
    used = clock() - cpu
    measured = used > 0 and (in_process or used >= 0.05)  # /proc: 5 ticks at least
    return (count / used if measured else float("nan"), count / (time.perf_counter() - wall))


def data_config(source: str, path: str, augment: str, workers: int, num_val: int = 0):
    import ml_collections
    return ml_collections.ConfigDict(dict(
        pipeline="streaming", source=source, name="", path=path, data_dir="",
        num_val_examples=num_val, train_augment=augment, image_size=224, eval_resize=256,
        lighting_std=0.0, normalize="per_channel", eval_crops="center",
        multiscale_sizes=(224,), on_corrupt="error", synthetic_examples=1,
        num_classes=0, prefetch=2, workers=workers))


def grain_rate(cfg, batch: int, steps: int) -> tuple[float, float]:
    """(per CPU-second, per second) of `steps` batches after a warm-up batch per worker
    (start-up excluded; the workers' buffers then hold what they made ahead)."""
    from resnet_jax import data
    pipe = data.make_pipeline(cfg, global_batch_size=batch, eval_batch_size=batch, seed=0)
    it = pipe.train_batches(0)
    for _ in range(max(1, pipe.workers)):
        next(it)
    out = timed(lambda: [next(it) for _ in range(steps)], steps * batch, pipe.workers == 0)
    it.close()
    return out


def tf_rate(paths, augment: str, batch: int, steps: int) -> tuple[float, float]:
    """tf.data's recipe with one thread (its map and its private thread pool). The dataset
    ends after the timed batches: its prefetch must not make batches that are not counted
    while the next figure is timed in this process."""
    import tf_reference
    ds = tf_reference.train_dataset(paths, augment, batch, 1).repeat().take(steps + 1)
    it = iter(ds.as_numpy_iterator())
    next(it)
    return timed(lambda: list(it), steps * batch, True)


def floor_rate(blobs) -> float:
    """Images per CPU-second of a plain Pillow decode of every file (`decode_rgb`)."""
    from resnet_jax.data.decode import decode_rgb
    return timed(lambda: [decode_rgb(b) for b in blobs], len(blobs), True)[0]


def decoder_rates(blobs) -> dict:
    """Images per CPU-second of one image's scale-augmentation window, decoded and resized
    (`augment.sample`), with each candidate decoder; the window drawn as in training. The
    last row decodes nothing but the entropy-coded data down to the window's last row, which
    every JPEG decoder must (tf.data's `decode_and_crop_jpeg` too): no view of that window
    costs less with libjpeg-turbo (it needs nvimgcodec's region decoder: no row without)."""
    import cv2
    from PIL import Image

    from resnet_jax.data import augment, jpeg
    cv2.setNumThreads(1)

    def window_of(i):
        return lambda h, w: augment.scale_window(h, w, np.random.default_rng(i))

    def draw(b, i):
        shape = jpeg.header(b)
        window = window_of(i)(*shape)
        return shape, window, augment.region_of(window, *shape, crop=False)

    def pipeline(b, i):  # what training does: nvimgcodec region / simplejpeg at 1/4, 1/8
        return augment.crop_resize(b, "x", window_of(i), 224, crop=False)

    def whole(decode):  # the whole image at the factor the window allows, then its region
        def run(b, i):
            shape, window, region = draw(b, i)
            f = jpeg.decode_factor(window, 224)
            return augment.sample(*jpeg.cut(decode(b, shape, f), region, f), window, 224)
        return run

    def pillow(b, shape, f):
        with Image.open(io.BytesIO(b)) as im:
            im.draft("RGB", (-(-shape[1] // f), -(-shape[0] // f)))
            return np.asarray(im.convert("RGB"))

    def entropy_only(b, i):  # the bound: a region one pixel high at the window's last row
        _, _, (y, x, h, w) = draw(b, i)
        return jpeg.region_pixels(b, (y + h - 1, x, 1, 1))

    flags = {1: cv2.IMREAD_COLOR, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
    rows = [("nvimgcodec region (simplejpeg 1/4, 1/8): used", pipeline),
            ("simplejpeg whole image", whole(jpeg.decode_scaled)),
            ("OpenCV whole image (reduced)", whole(lambda b, s, f: cv2.imdecode(
                np.frombuffer(b, np.uint8), flags[f])[..., ::-1])),
            ("Pillow whole image (draft)", whole(pillow))]
    if jpeg.region_decoder() is not None:
        rows.append(("bound: entropy decoding to the window's end", entropy_only))
    else:
        print("    (nvimgcodec is not installed: the pipeline's row is simplejpeg's whole "
              "image, and no bound row)")
    return {name: timed(lambda fn=fn: [fn(b, i) for i, b in enumerate(blobs)], len(blobs),
                        True)[0] for name, fn in rows}


def spread(values) -> str:
    lo, mid, hi = np.min(values), np.median(values), np.max(values)
    return f"{mid:6.0f}" + (f" ({lo:.0f}-{hi:.0f})" if len(values) > 1 else "")


def run_set(label, cfg_of, blobs, paths, args, tf_ok) -> None:
    batch = args.batch
    steps = max(1, len(blobs) // batch)
    print(f"\n{label}: {len(blobs)} images (mean {np.mean([len(b) for b in blobs]) / 1024:.0f} "
          f"KB), batch {batch}, {steps} timed batches per figure")
    for augment in ("scale", "inception"):
        rows: dict = {"Pillow decode (floor)": [], "grain, this thread": []}
        if tf_ok:
            rows["tf.data, 1 thread"] = []
        for _ in range(args.repeats):  # interleaved: each repeat sees the same load
            rows["Pillow decode (floor)"].append(floor_rate(blobs))
            rows["grain, this thread"].append(grain_rate(cfg_of(augment, 0), batch, steps)[0])
            if tf_ok:
                rows["tf.data, 1 thread"].append(tf_rate(paths, augment, batch, steps)[0])
        print(f"  {augment}:")
        for name, values in rows.items():
            print(f"    {name:24s} {spread(values)} img per CPU-second")
        if tf_ok:
            ratio = np.array(rows["grain, this thread"]) / np.array(rows["tf.data, 1 thread"])
            print(f"    grain / tf.data (per repeat) x{np.median(ratio):.2f} "
                  f"(x{ratio.min():.2f}-x{ratio.max():.2f})")
        for w in args.workers:
            cpu, wall = grain_rate(cfg_of(augment, w), batch, steps * args.worker_batches)
            print(f"    grain, {w} worker(s){'':11s} {wall:6.0f} img/s wall   "
                  f"({cpu:.0f} per CPU-second, workers and this process)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few images, a few seconds")
    parser.add_argument("--images", type=int, default=512, help="per set (the large: / 4)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=None,
                        help="worker counts for the wall-clock rows (default: 1, 2, all)")
    parser.add_argument("--worker-batches", type=int, default=2,
                        help="the worker rows time this many times the in-process batches")
    parser.add_argument("--imagenette", default=IMAGENETTE)
    parser.add_argument("--decoders", action="store_true", help="also the decoder table")
    args = parser.parse_args()
    from resnet_jax.data.streaming import num_workers
    if args.workers is None:
        args.workers = sorted({1, 2, num_workers(-1)})
    if args.smoke:
        args.images, args.batch, args.repeats, args.workers = 16, 8, 1, [1]
        args.worker_batches = 1
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
        tf.config.set_visible_devices([], "GPU")
        tf_ok = not args.smoke
    except ImportError:
        tf_ok = False
        print("TensorFlow is not installed: no tf.data figures")
    import jax
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {cpu}, {os.cpu_count()} cores, load "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, jax {jax.__version__}; per "
          "CPU-second = of every process and thread involved (workers included)")
    from resnet_jax.data import sources
    for size, num in (((500, 375), args.images), ((1600, 1200), max(8, args.images // 4))):
        with tempfile.TemporaryDirectory() as root:
            write_jpegs(root, num, size)
            train = sources.open_splits(data_config("folder", root, "scale", 0)).train
            blobs = [train.read(i)[0] for i in range(len(train))]
            paths = [train.name(i) for i in range(len(train))]
            run_set(f"{size[0]}x{size[1]} generated JPEGs",
                    lambda a, w, root=root: data_config("folder", root, a, w),
                    blobs, paths, args, tf_ok)
            if args.decoders:
                for name, rate in decoder_rates(blobs).items():
                    print(f"    decoder: {name:44s} {rate:6.0f} img per CPU-second")
            if args.smoke:
                args.workers = []  # CI: the worker rows once (each start spawns a process)
    if not os.path.exists(args.imagenette):
        print(f"\n{args.imagenette} not found: no imagenette figures")
        return
    # Hold out all but args.images photographs: the training split is a seeded sample.
    held_one = sources.open_splits(data_config("tar", args.imagenette, "scale", 0, 1))
    num_val = len(held_one.train) + 1 - args.images
    train = sources.open_splits(data_config("tar", args.imagenette, "scale", 0, num_val)).train
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
    print(f"\nload at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

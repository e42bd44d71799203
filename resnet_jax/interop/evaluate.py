"""Score a model on any labelled split: `resnet-jax eval --data` (and the run's own split).

    result = evaluate(model="r50", data="tfds:imagenet2012", split="validation", crops="10crop")
    print(eval_record.format_line(result))  # resnet50 on tfds:imagenet2012 validation (...

With `data`, a training run (`workdir`, its newest or best checkpoint, as
`interop.workdir.export_workdir` loads it, nothing written) or a model directory (`model`) is
scored the same way: each image decoded on the host (Pillow; tfds images are read encoded),
the model's recorded preprocessing made into test views (`data.views`) in a thread pool,
batches padded to one fixed size (one compiled program per split), the forward pass compiled
on the device mesh (normalization on the devices), the views' softmax averaged, and the
per-example log-probabilities brought back to the host, where the errors are counted (so a
ReaL label set works: top-1 is correct when the prediction is in the set; examples with an
empty set are left out). Without `data` (workdir only): the run's validation split through
the run's own pipeline (`train.run.restore_for_eval` + `train.run.evaluate`), the numbers of
the run's own evaluation.

Each result is also written to `<workdir or model dir>/eval/<source>-<split>-<crops>.json`.
"""
from __future__ import annotations

import collections
import functools
import itertools
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from resnet_jax.data import views as views_lib
from resnet_jax.interop import eval_record, eval_sources

CHECKPOINTS = ("newest", "best")
RUN_SPLIT = "validation"  # what the result of the run's own evaluation is filed under


def evaluate(*, workdir: Optional[str] = None, model: Optional[str] = None,
             checkpoint: Optional[str] = None, data: Optional[str] = None,
             split: Optional[str] = None, crops: Optional[str] = None,
             scales: Optional[Sequence[int]] = None, batch_size: Optional[int] = None,
             data_dir: Optional[str] = None, workers: Optional[int] = None,
             save: bool = True, say: Callable[[str], None] = None,
             tfds_builder: Optional[Callable] = None, replica: Optional[int] = None) -> dict:
    """The result record (see the module docstring); arguments as `resnet-jax eval`'s
    (`replica`: which replica of a run that trained several, `train.replicas`)."""
    say = say or (lambda m: print(m, file=sys.stderr))
    if workdir and model:
        raise ValueError("give --workdir or --model, not both")
    if not workdir and not model:
        raise ValueError("give a model: --workdir W (a training run) or --model DIR (a model "
                         "directory)")
    if model and not data:
        raise ValueError("--model needs --data (a model directory has no validation split of "
                         "its own); e.g. --data tfds:imagenet2012")
    if model and checkpoint:
        raise ValueError("--checkpoint applies to --workdir only")
    if split is not None and not data:
        raise ValueError("--split needs --data (without it: the run's own validation split)")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch-size {batch_size} must be >= 1")
    checkpoint = checkpoint or "newest"
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"--checkpoint {checkpoint!r}; allowed: {', '.join(CHECKPOINTS)}")
    if model and replica is not None:
        raise ValueError("--replica applies to --workdir only")
    if workdir:  # a bad --replica is refused before anything is loaded
        from resnet_jax.train import replicas, run as run_lib
        replicas.check_index(replica, replicas.count(run_lib.read_config(workdir)),
                             f"--workdir {workdir}")
    if not data:
        record = evaluate_run(workdir, checkpoint, crops, scales, batch_size, replica)
        return eval_record.save(record, workdir, save, say)
    if workdir and not data_dir and data.startswith("tfds:"):  # where the run's tfds data is
        from resnet_jax.train import run as run_lib
        data_dir = run_lib.read_config(workdir).data.data_dir or None
    source = eval_sources.open_source(data, split, data_dir, tfds_builder)
    loaded, record = load_model(workdir, model, checkpoint, replica)
    source, notes = eval_sources.fit_classes(loaded.class_names, source)
    for note in notes:
        say(f"note: {note}")
    crops = crops or "center"
    if crops == "multiscale" and not scales:
        scales = _run_scales(workdir) or views_lib.default_scales(loaded.preprocessing.crop)
    views = views_lib.Views(loaded.preprocessing, crops, scales or ())
    progress = _progress(source.num_examples) if sys.stderr.isatty() else None
    scored = score(loaded, source, views, batch_size=batch_size or 64, workers=workers,
                   progress=progress)
    record.update(source=data, split=source.split_name, crops=crops)
    if views.scales:
        record["scales"] = list(views.scales)
    record.update(scored)
    return eval_record.save(record, workdir or model, save, say)


def load_model(workdir: Optional[str], model: Optional[str], checkpoint: str = "newest",
               replica: Optional[int] = None):
    """(LoadedModel, result record {'model', 'step', 'checkpoint', 'workdir' | 'model_dir'}
    and 'replica' when given)."""
    from resnet_jax.interop import bundle, workdir as workdir_lib
    from resnet_jax.train import run as run_lib
    if workdir:
        run_lib.read_config(workdir)  # a clear error for a folder that is not a run
        loaded = workdir_lib.export_workdir(workdir, None, checkpoint, replica=replica)
        return loaded, {"model": loaded.name, "step": loaded.source.get("step"),
                        "checkpoint": checkpoint, "workdir": workdir,
                        **({"replica": replica} if replica is not None else {})}
    loaded = bundle.load(model)
    return loaded, {"model": loaded.name, "step": loaded.source.get("step"),
                    "model_dir": model}


def _run_scales(workdir: Optional[str]) -> tuple:
    if not workdir:
        return ()
    from resnet_jax.train import run as run_lib
    return tuple(int(s) for s in run_lib.read_config(workdir).data.multiscale_sizes)


def evaluate_run(workdir: str, checkpoint: str = "newest", crops: Optional[str] = None,
                 scales: Optional[Sequence[int]] = None,
                 batch_size: Optional[int] = None, replica: Optional[int] = None) -> dict:
    """The run's own validation split through its own pipeline (what the run reports: a run of
    several replicas scores them all as it did, and `replica` picks one)."""
    from resnet_jax.train import replicas
    from resnet_jax.interop import workdir as workdir_lib
    from resnet_jax.train import run as run_lib
    config = run_lib.read_config(workdir)
    if crops and crops != "center" and config.data.pipeline == "in_memory":
        raise ValueError(f"--crops {crops}: an in-memory run scores its validation split on the "
                         "single view it trained for; for 10-crop or multi-scale views, score "
                         "image files with --data (a folder or tar of the images)")
    for value, field in ((crops, "eval_crops"), (scales and tuple(scales), "multiscale_sizes")):
        if value:
            config.data[field] = value
    if batch_size:
        config.train.eval_batch_size = int(batch_size)
    step = None if checkpoint == "newest" else workdir_lib.checkpoint_step(workdir, checkpoint,
                                                                           replica)
    run, state, step = run_lib.restore_for_eval(workdir, config, step=step)
    try:
        i = replicas.check_index(replica, replicas.count(config), f"--workdir {workdir}")
        summary = run_lib.evaluate_all(run, state)[i]
    finally:
        run.pipeline.close()  # its workers (a streaming pipeline keeps them between passes)
    record = {"model": run.meta["name"], "step": int(step), "checkpoint": checkpoint,
              "workdir": workdir, "source": "run", "split": RUN_SPLIT,
              "crops": config.data.eval_crops}
    if replica is not None:
        record["replica"] = i
    if config.data.eval_crops == "multiscale":
        record["scales"] = [int(s) for s in config.data.multiscale_sizes]
    record.update(summary)
    return record


# ---- scoring ------------------------------------------------------------------------------

def score(loaded: Any, source: eval_sources.Source, views: views_lib.Views, *,
          batch_size: int = 64, workers: Optional[int] = None, mesh: Any = None,
          progress: Optional[Callable[[int], None]] = None) -> dict:
    """{'count', 'top1_error', 'top5_error' (percent), 'loss'} of `loaded` on `source`
    (ReaL: also 'labels': 'real', 'left_out'; 'loss' is None there)."""
    import jax
    from resnet_jax import parallel
    mesh = mesh or parallel.make_mesh()
    batch = -(-batch_size // mesh.size) * mesh.size  # one fixed size that splits evenly
    forward = _forward(loaded.model, mesh)
    variables = parallel.replicate(jax.device_get(loaded.variables), mesh)
    norms = parallel.replicate(views.normalization(), mesh)
    num_classes = loaded.model.num_classes
    sums = np.zeros(3)  # top-1 correct, top-5 correct, loss
    count, left_out = 0, [0]
    for stacks, slots, labels, names in _host_batches(source, views, batch, workers,
                                                       left_out):
        placed = parallel.to_global({"image": stacks, "slot": slots}, mesh)
        logp, where = forward(variables, placed["image"], norms, placed["slot"])
        logp = in_batch_order(np.asarray(logp), np.asarray(where))[:len(labels)]
        _check_labels(labels, names, num_classes, source)
        sums += correct(logp, labels, source.multilabel)
        count += len(labels)
        if progress:
            progress(count + left_out[0])
    if count == 0:
        raise ValueError(f"--data {source.spec} {source.split_name}: no labelled example")
    out = {"count": count, "top1_error": 100.0 * (1.0 - sums[0] / count),
           "top5_error": 100.0 * (1.0 - sums[1] / count),
           "loss": None if source.multilabel else float(sums[2] / count)}
    if source.multilabel:
        out.update(labels="real", left_out=left_out[0])
    return out


@functools.lru_cache(maxsize=8)
def _progress(total: Optional[int]) -> Callable[[int], None]:
    """A line on a terminal's stderr, rewritten in place, ended at the last image."""
    def show(done: int) -> None:
        of = f" of {total:,}" if total else ""
        end = "\n" if total and done >= total else ""
        print(f"\r{done:,}{of} images", end=end, file=sys.stderr, flush=True)
    return show


def in_batch_order(logp: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """Rows of the gathered global batch put back in the order of the examples: row i of
    `logp` is example `slots[i]` of the batch (-1: padding). The global batch's row order is
    the mesh's device order, which need not follow the processes (`jax.make_mesh` orders TPU
    devices physically), so each row travels with its own slot."""
    out = np.full_like(logp, np.nan)
    real = slots >= 0
    out[slots[real]] = logp[real]
    return out


def _forward(model: Any, mesh: Any):
    """jit on the mesh: (variables, uint8 view stacks, ((mean, std), ...), slots) -> ((B, C)
    log of the probabilities averaged over all views (as `train.step.eval_step`), slots),
    both gathered to every process in the same row order."""
    import jax
    import jax.numpy as jnp
    from resnet_jax import parallel
    from resnet_jax.data.device_ops import normalize

    def forward(variables, stacks, norms, slots):
        per_view = []
        for images, (mean, std) in zip(stacks, norms):
            b, v = images.shape[:2]
            x = normalize(images.reshape((b * v,) + images.shape[2:]), mean, std)
            logits = model.apply(variables, x, train=False).astype(jnp.float32)
            per_view.append(jax.nn.log_softmax(logits).reshape(b, v, -1))
        logp = jnp.concatenate(per_view, axis=1)
        return jax.nn.logsumexp(logp, axis=1) - jnp.log(float(logp.shape[1])), slots

    rep, rows = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    return jax.jit(forward, in_shardings=(rep, rows, rep, rows), out_shardings=(rep, rep))


def _host_batches(source, views, batch: int, workers: Optional[int], left_out: list,
                  ahead: int = 2) -> Iterator[tuple]:
    """(stacks: tuple of uint8 (b, V, H, W, 3), slots: int32 (b,), labels, names) per global
    batch of `batch` examples; this process decodes its rows [p*b, (p+1)*b) in a thread pool,
    `ahead` batches ahead; slots are those rows' positions among the batch's examples (-1:
    padding, whose rows are zeros). Examples with an empty label set are counted in
    left_out[0] and skipped."""
    import jax
    p, b = jax.process_index(), batch // jax.process_count()

    def labelled():
        for name, image, label in source.examples():
            if isinstance(label, tuple) and not label:
                left_out[0] += 1
                continue
            yield name, image, label

    examples, pending = labelled(), collections.deque()
    pool = ThreadPoolExecutor(workers or os.cpu_count() or 1)

    def fill() -> None:
        items = list(itertools.islice(examples, batch))
        if items:
            mine = items[p * b:(p + 1) * b]
            pending.append((items, [pool.submit(views.of, n, im) for n, im, _ in mine]))

    try:
        for _ in range(ahead):
            fill()
        while pending:
            items, futures = pending.popleft()
            fill()
            rows = [f.result() for f in futures]
            stacks = []
            for i, shape in enumerate(views.shapes()):
                stack = np.zeros((b,) + shape, np.uint8)
                for r, row in enumerate(rows):
                    stack[r] = row[i]
                stacks.append(stack)
            slots = np.full(b, -1, np.int32)
            slots[:len(rows)] = np.arange(p * b, p * b + len(rows), dtype=np.int32)
            yield (tuple(stacks), slots, [y for _, _, y in items],
                   [n for n, _, _ in items])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _check_labels(labels, names, num_classes: int, source) -> None:
    for name, label in zip(names, labels):
        for y in (label if isinstance(label, tuple) else (label,)):
            if not 0 <= y < num_classes:
                raise ValueError(f"{name}: label {y} is not one of the model's {num_classes} "
                                 f"classes (split {source.split_name!r} without labels?)")


def correct(logp: np.ndarray, labels: Sequence[Any], multilabel: bool = False) -> np.ndarray:
    """(3,) sums over rows: top-1 correct, top-5 correct, loss (-log p of the label; 0 for
    label sets). A label is top-k when fewer than k other classes score at least as high (a
    tie counts against it) and no score is NaN, as `train.step.topk_correct`; a label set
    counts when any of its labels does."""
    k5 = min(5, logp.shape[-1])
    nan = np.isnan(logp).any(axis=1)
    out = np.zeros(3)
    for row, label, bad in zip(logp, labels, nan):
        ys = np.asarray(label if multilabel else (label,), np.int64)
        score_y = row[ys]
        rivals = (row[None, :] >= score_y[:, None]).sum(axis=1) - 1
        ok = np.isfinite(score_y) & ~bad
        out[0] += bool(np.any(ok & (rivals < 1)))
        out[1] += bool(np.any(ok & (rivals < k5)))
        if not multilabel:
            out[2] -= float(score_y[0])
    return out

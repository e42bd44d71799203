"""The training job: `train_and_evaluate(config, workdir)` and `load_trained(workdir)`.

The only module with side effects (files, signals, printing). A run is:
  build (mesh, pipeline, model, optimizer, state) -> resume from workdir/checkpoints if any ->
  dispatches of k steps (the in-memory fast path gathers each batch on the devices; the
  streaming path feeds host batches) -> logs every `log_every_steps`, evaluation every
  `eval_every_steps` and at the end, checkpoints every `checkpoint_every_steps`, after each
  evaluation and at the end -> results.json.
Step s always trains on the same examples with rng fold_in(base, s), and dispatches are
aligned to absolute step multiples, so a resumed run reproduces the uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from resnet_jax import config as config_lib
from resnet_jax import files
from resnet_jax import data as data_lib
from resnet_jax import parallel
from resnet_jax.data import prefetch as prefetch_lib
from resnet_jax.models import count_macs, count_params, create_model, model_name
from resnet_jax.train import checkpoint as ckpt_lib
from resnet_jax.train import metrics as metrics_lib
from resnet_jax.train import optim, step as step_lib
from resnet_jax.train.logging import MetricsWriter, Progress, Timer


@dataclasses.dataclass
class Run:
    """Everything a config builds before the first step."""
    config: ml_collections.ConfigDict
    mesh: Any
    pipeline: Any
    model: Any
    tx: Any
    meta: dict  # the model's identity, saved with every checkpoint


def model_meta(config: ml_collections.ConfigDict, num_classes: int,
               image_shape: tuple) -> dict:
    """What makes two checkpoints the same model (dtype and BN grouping may change)."""
    m = config.model
    return {"name": model_name(m.arch, m.depth, m.plain), "num_classes": int(num_classes),
            "shortcut": m.shortcut, "bottleneck_stride": m.bottleneck_stride, "width": m.width,
            "scan_blocks": m.scan_blocks, "image_shape": [int(d) for d in image_shape]}


# Model-identity keys newer than some checkpoints, with the value those checkpoints have.
_META_ADDED = {"scan_blocks": config_lib.ADDED_FIELDS["model.scan_blocks"]}


def check_model(meta: dict):
    """The `check_meta` of `Checkpointer.restore_latest` for a run of model `meta`."""
    return ckpt_lib.check_same_model(meta, added=_META_ADDED)


def make_model(config: ml_collections.ConfigDict, meta: dict, num_devices: int) -> Any:
    m, t = config.model, config.train
    return create_model(meta["name"], num_classes=meta["num_classes"], shortcut=m.shortcut,
                        bottleneck_stride=m.bottleneck_stride, width=m.width,
                        zero_init_residual=m.zero_init_residual, dtype=m.dtype,
                        scan_blocks=m.scan_blocks,
                        bn_num_groups=parallel.bn_num_groups(t.bn_mode, t.bn_group_size,
                                                             num_devices))


def check_data_paths(config: ml_collections.ConfigDict) -> None:
    """Refuses a missing local data path or tfds data_dir before anything is built."""
    d = config.data
    local = lambda p: p and "://" not in p  # noqa: E731 - remote paths are checked by readers
    if d.source in ("tar", "folder") and (not d.path or (local(d.path)
                                                         and not os.path.exists(d.path))):
        raise ValueError(f"config field data.path={d.path!r} does not exist (data.source="
                         f"{d.source!r}); pass --config.data.path=...")
    if local(d.data_dir) and not os.path.isdir(d.data_dir):
        raise ValueError(f"config field data.data_dir={d.data_dir!r} is not a directory")


def build(config: ml_collections.ConfigDict) -> Run:
    """Mesh, pipeline, model and optimizer for `config` (all processes call it)."""
    mesh = parallel.make_mesh()
    config_lib.check_fits(config, mesh.size, jax.process_count())
    check_data_paths(config)
    t = config.train
    pipeline = data_lib.make_pipeline(
        config.data, global_batch_size=t.batch_size, eval_batch_size=t.eval_batch_size,
        seed=config.seed, process_index=jax.process_index(), process_count=jax.process_count())
    meta = model_meta(config, pipeline.num_classes, pipeline.image_shape)
    model = make_model(config, meta, mesh.size)
    tx = optim.make_optimizer(config.optim, pipeline.steps_per_epoch, batch_size=t.batch_size,
                              num_steps=t.num_steps)
    return Run(config, mesh, pipeline, model, tx, meta)


def initial_state(run: Run) -> tuple[step_lib.TrainState, jax.Array]:
    """(fresh state replicated on the mesh, base rng of the training steps)."""
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(run.config.seed))
    state = step_lib.create_train_state(init_rng, run.model, run.tx,
                                        tuple(run.meta["image_shape"]), mesh=run.mesh)
    # A global (replicated) array: orbax cannot save a process-local one in multi-host runs.
    return state, parallel.replicate(np.asarray(train_rng), run.mesh)


def eval_batches(pipeline) -> Iterator[dict]:
    """The pipeline's eval batches; with several `eval_scales` (multi-scale testing) the batches
    of every scale hold the same examples in the same order, so they are zipped into one batch
    whose 'image' is a tuple with one view stack per scale (`step.eval_step` averages them)."""
    scales = tuple(getattr(pipeline, "eval_scales", (None,)))
    if len(scales) == 1:
        yield from (pipeline.eval_batches() if scales[0] is None
                    else pipeline.eval_batches(scale=scales[0]))
        return
    for group in zip(*(pipeline.eval_batches(scale=s) for s in scales), strict=True):
        yield {"image": tuple(b["image"] for b in group), "label": group[0]["label"],
               "mask": group[0]["mask"]}


def evaluate(run: Run, state: step_lib.TrainState, eval_fn: Callable | None = None) -> dict:
    """Validation metrics over the whole eval split: loss, top1/top5 error (%), count."""
    eval_fn = eval_fn or step_lib.make_eval_fn(run.model, run.mesh,
                                               preprocess=run.pipeline.device_preprocess)
    sums = None
    for batch in eval_batches(run.pipeline):
        sums = metrics_lib.add_sums(sums, eval_fn(state, batch))
    return metrics_lib.eval_summary(sums)


def next_chunk(step: int, train: ml_collections.ConfigDict) -> int:
    """Steps in the next dispatch: steps_per_dispatch, cut at the next log, eval, checkpoint
    or final step (absolute multiples, so a resumed run dispatches exactly the same chunks)."""
    k = min(train.steps_per_dispatch, train.num_steps - step)
    for every in (train.log_every_steps, train.eval_every_steps, train.checkpoint_every_steps):
        k = min(k, every - step % every)
    return k


class _Dispatcher:
    """Runs k steps from `step`: device-side gathers when the pipeline holds the split in
    memory (`train_arrays`), else host batches (stacked to (k, b, ...) when k > 1)."""

    def __init__(self, run: Run, start_step: int):
        self.run = run
        kw = dict(preprocess=run.pipeline.device_preprocess,
                  label_smoothing=run.config.optim.label_smoothing)
        self.fast = getattr(run.pipeline, "train_arrays", None) is not None
        if self.fast:
            images, labels = run.pipeline.train_arrays[:2]
            self.arrays = parallel.replicate((images, labels), run.mesh)
            self.fn = step_lib.make_indexed_train_fn(run.model, run.tx, run.mesh, **kw)
        else:
            # Batches become global device arrays `data.prefetch` steps ahead, in a thread, so
            # the step does not wait on the host-to-device copy; k > 1 stacks them on device.
            put = functools.partial(parallel.to_global, mesh=run.mesh)
            self.batches: Iterator[dict] = prefetch_lib.prefetch(
                run.pipeline.train_batches(start_step), put,
                size=run.config.data.prefetch)
            self.stack = jax.jit(lambda bs: jax.tree.map(lambda *x: jnp.stack(x), *bs),
                                 out_shardings=parallel.batch_sharding(run.mesh, 1))
            self.kw, self.fns = kw, {}

    def close(self) -> None:
        if not self.fast:
            self.batches.close()

    def __call__(self, state, step: int, k: int, rng, ok):
        if self.fast:
            indices = self.run.pipeline.train_indices(step, k)
            return self.fn(state, *self.arrays, indices, rng, ok)
        if k not in self.fns:
            self.fns[k] = step_lib.make_train_fn(self.run.model, self.run.tx, self.run.mesh,
                                                 steps_per_dispatch=k, **self.kw)
        batches = [next(self.batches) for _ in range(k)]
        batch = batches[0] if k == 1 else self.stack(batches)
        return self.fns[k](state, batch, rng, ok)


def _results(run: Run, state, meta_state: dict, final: dict, step: int) -> dict:
    h, w, c = run.pipeline.image_shape
    return {"model": run.meta["name"], "params": count_params(state.params),
            "macs": count_macs(run.model, (1, h, w, c)), "best": meta_state["best"],
            "final": final, "train_time_s": meta_state["train_time_s"], "steps": step}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       on_step: Callable[[int], None] | None = None) -> dict:
    """Trains `config` in `workdir` (resuming from its checkpoints) and returns results.json's
    content; on preemption (SIGTERM) it saves, stops and returns {'preempted': True, 'step'}.

    `on_step(step)` (optional) is called after every dispatch, with the steps done so far.
    """
    run = build(config)
    lead = jax.process_index() == 0
    work = epath.Path(workdir)
    if lead:
        work.mkdir(parents=True, exist_ok=True)
    checkpointer = ckpt_lib.Checkpointer(os.fspath(work / "checkpoints"),
                                         keep=config.train.keep_checkpoints)
    writer = None
    try:
        state, rng, step, meta_state = _resume(run, checkpointer)
        if lead:
            files.write_json(work / "config.json", config.to_dict(), sort_keys=True)
        writer = MetricsWriter(os.fspath(work), enabled=lead, resume_step=step)
        progress = Progress(config.train.num_steps, run.pipeline.steps_per_epoch,
                            enabled=lead, bar=config.train.progress)
        if step:
            progress.message(f"resumed from the checkpoint of step {step} in {work}")
        with ckpt_lib.PreemptionWatcher() as watcher:
            result = _train(run, state, rng, step, meta_state, checkpointer, writer, progress,
                            watcher, on_step, work)
        checkpointer.wait()
    finally:
        if writer is not None:
            writer.close()
        checkpointer.close()
    return result


def _resume(run: Run, checkpointer: ckpt_lib.Checkpointer) -> tuple:
    """(state, rng, step, {'best', 'train_time_s'}): from the newest checkpoint, or fresh.

    The model is checked before the state is built or anything is written: a workdir of
    another model is refused fast and left untouched.
    """
    check = check_model(run.meta)
    latest = checkpointer.latest_meta()
    if latest is not None:
        check(latest)
    state, rng = initial_state(run)
    meta_state = {"best": None, "train_time_s": 0.0}
    restored = checkpointer.restore_latest(state, rng, check)
    if restored is None:
        return state, rng, 0, meta_state
    meta_state = {k: restored.meta.get(k, v) for k, v in meta_state.items()}
    return restored.state, restored.rng, restored.step, meta_state


def _train(run, state, rng, step, meta_state, checkpointer, writer, progress, watcher,
           on_step, work) -> dict:
    dispatch = _Dispatcher(run, step)
    try:
        return _train_steps(run, dispatch, state, rng, step, meta_state, checkpointer, writer,
                            progress, watcher, on_step, work)
    finally:
        dispatch.close()


def _train_steps(run, dispatch, state, rng, step, meta_state, checkpointer, writer, progress,
                 watcher, on_step, work) -> dict:
    t = run.config.train
    eval_fn = step_lib.make_eval_fn(run.model, run.mesh, preprocess=run.pipeline.device_preprocess)
    timer, pending, boundary, final = Timer(), [], 0, None
    ok = previous_ok = None  # device flags: every step so far finite (no host sync to read)
    started = time.perf_counter() - meta_state["train_time_s"]
    while step < t.num_steps:
        k = next_chunk(step, t)
        # `ok` carries a NaN across dispatches: after one, nothing more is applied, so the
        # state stays that of the first bad step until the check below sees it.
        state, metrics = dispatch(state, step, k, rng, ok)
        pending.append((step, metrics))
        previous_ok, ok = ok, _last(metrics["finite"])
        step += k
        timer.add(k)
        stop = watcher.should_stop(boundary)
        boundary += 1
        acts = stop or step == t.num_steps or any(
            step % every == 0 for every in (t.log_every_steps, t.eval_every_steps,
                                            t.checkpoint_every_steps))
        # Checked before anything is logged, evaluated or saved, and otherwise one dispatch
        # late (that flag is ready by now: no wait on the device).
        if (acts and not bool(ok)) or (previous_ok is not None and not bool(previous_ok)):
            _stop_non_finite(pending, checkpointer)
        if step % t.log_every_steps == 0 or step == t.num_steps:
            _log_train(run, pending, step, timer, writer, progress)
            pending = []
        evaluated = None
        if step % t.eval_every_steps == 0 or step == t.num_steps:
            evaluated = final = _log_eval(run, state, eval_fn, step, writer, progress, meta_state)
        if stop or evaluated or step % t.checkpoint_every_steps == 0 or step == t.num_steps:
            meta_state["train_time_s"] = time.perf_counter() - started
            checkpointer.save(step, state, rng, {"model": run.meta, **meta_state},
                              metrics={"top1_error": evaluated["top1_error"]} if evaluated else None)
        if evaluated or stop or step % t.checkpoint_every_steps == 0:
            timer.restart()
        if on_step is not None:
            on_step(step)
        if stop and step < t.num_steps:
            checkpointer.wait()
            progress.message(f"preempted (SIGTERM): saved the checkpoint of step {step}; "
                             "run the same command again to resume")
            return {"preempted": True, "step": step}
    if final is None:  # the workdir was already complete: report its final evaluation again
        summary = evaluate(run, state, eval_fn)
        final = {"step": step, **{k: summary[k] for k in ("top1_error", "top5_error", "loss")}}
        meta_state["best"] = meta_state["best"] or final
    results = _results(run, state, meta_state, final, step)
    if jax.process_index() == 0:
        files.write_json(work / "results.json", results, sort_keys=True)
    return results


def _last(flags: jax.Array) -> jax.Array:
    return flags if flags.ndim == 0 else flags[-1]


def _stop_non_finite(pending, checkpointer) -> None:
    """Raises NonFiniteError for the first non-finite step among the dispatches not yet logged
    (one of them has one); the checkpoints on disk are all of finite states."""
    checkpointer.wait()
    steps = checkpointer.all_steps()
    kept = (f"; the newest checkpoint (step {steps[-1]}) is the last finite state saved: a "
            "rerun resumes there and meets the same step again unless the recipe changes "
            "(a lower optim.lr, a warmup)") if steps else "; no checkpoint was saved"
    for first, metrics in pending:
        metrics_lib.check_finite(metrics, first, kept)
    raise AssertionError("a dispatch reported a non-finite step that its metrics do not show")


def _log_train(run, pending, step, timer, writer, progress) -> None:
    merged = {key: np.concatenate([np.atleast_1d(np.asarray(jax.device_get(m[key])))
                                   for _, m in pending]) for key in pending[0][1]}
    summary = metrics_lib.train_summary(merged)
    images_per_sec, sec_per_step = timer.rate(run.config.train.batch_size)
    row = {"step": step, "epoch": step / run.pipeline.steps_per_epoch, "split": "train",
           **summary, "images_per_sec": images_per_sec, "wall_time": time.time()}
    writer.write(row)
    progress.update(step, summary["loss"], summary["top1_error"], images_per_sec,
                    (run.config.train.num_steps - step) * sec_per_step)


def _log_eval(run, state, eval_fn, step, writer, progress, meta_state) -> dict:
    summary = evaluate(run, state, eval_fn)
    entry = {"step": step, "top1_error": summary["top1_error"],
             "top5_error": summary["top5_error"], "loss": summary["loss"]}
    if meta_state["best"] is None or entry["top1_error"] < meta_state["best"]["top1_error"]:
        meta_state["best"] = entry
    writer.write({"step": step, "epoch": step / run.pipeline.steps_per_epoch, "split": "val",
                  "loss": summary["loss"], "top1_error": summary["top1_error"],
                  "top5_error": summary["top5_error"], "wall_time": time.time()})
    progress.message(f"step {step}: val loss {summary['loss']:.4f} top-1 error "
                     f"{summary['top1_error']:.2f}% top-5 error {summary['top5_error']:.2f}% "
                     f"({summary['count']} examples)")
    return entry


def _restore(run: Run, workdir: str) -> tuple[step_lib.TrainState, int]:
    directory = os.fspath(epath.Path(workdir) / "checkpoints")
    checkpointer = ckpt_lib.Checkpointer(directory, keep=10 ** 6)
    try:
        state, rng = initial_state(run)
        restored = checkpointer.restore_latest(state, rng, check_model(run.meta),
                                               set_aside=False)
    finally:
        checkpointer.close()
    if restored is None:
        raise ValueError(f"--workdir {workdir}: no checkpoint in {directory}")
    return restored.state, restored.step


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config a run wrote to `workdir/config.json`."""
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        raise ValueError(f"--workdir {workdir}: no config.json (not a training workdir)")
    return config_lib.from_json(path.read_text())


def restore_for_eval(workdir: str, config: ml_collections.ConfigDict | None = None,
                     ) -> tuple[Run, step_lib.TrainState, int]:
    """(run with its eval pipeline, state of the newest checkpoint, its step)."""
    run = build(config or read_config(workdir))
    state, step = _restore(run, workdir)
    return run, state, step


def load_trained(workdir: str) -> tuple[ml_collections.ConfigDict, Any, dict]:
    """(config, model, {'params', 'batch_stats'}) of the newest checkpoint in `workdir`;
    reads no data (the model's classes and image shape come from the checkpoint's meta)."""
    config = read_config(workdir)
    checkpointer = ckpt_lib.Checkpointer(os.fspath(epath.Path(workdir) / "checkpoints"),
                                         keep=10 ** 6)
    try:
        latest = checkpointer.latest_meta()
    finally:
        checkpointer.close()
    meta = latest["model"] if latest else None
    if meta is None:
        raise ValueError(f"--workdir {workdir}: no readable checkpoint")
    mesh = parallel.make_mesh()
    tx = optim.make_optimizer(config.optim, 1, batch_size=config.train.batch_size,
                              num_steps=config.train.num_steps)  # only its state's structure
    run = Run(config, mesh, None, make_model(config, meta, mesh.size), tx, meta)
    state, _ = _restore(run, workdir)
    return config, run.model, {"params": state.params, "batch_stats": state.batch_stats}

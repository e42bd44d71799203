"""The training job: `train_and_evaluate(config, workdir)`.

The only module with side effects (files, signals, printing). A run is: build
(`run.build`) -> resume from the newest readable checkpoint (`run.restore`) or start fresh ->
one flat loop over the run's chunks of steps (`feed.device_chunks`, prepared ahead on the
devices), with periodic actions at absolute step multiples: log every `log_every_steps`,
evaluate every `eval_every_steps` and at the end, checkpoint every `checkpoint_every_steps`,
after each evaluation, at the end and on preemption (SIGTERM) -> results.json.
Step s always trains on the same examples with rng fold_in(base, s), and the chunks depend on
the config alone, so a resumed run reproduces the uninterrupted one bitwise.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from etils import epath

from resnet_jax import files
from resnet_jax.interop import preprocess
from resnet_jax.models import count_macs, count_params
from resnet_jax.train import checkpoint as ckpt_lib
from resnet_jax.train import dispatch, feed
from resnet_jax.train import metrics as metrics_lib
from resnet_jax.train import run as run_lib
from resnet_jax.train.logging import MetricsWriter, Progress, Timer

# Re-exported: the library API of a training workdir.
build, evaluate, read_config = run_lib.build, run_lib.evaluate, run_lib.read_config
restore_for_eval, load_trained = run_lib.restore_for_eval, run_lib.load_trained


@dataclasses.dataclass
class _Session:
    """What the loop's actions share: the run and its outputs."""
    run: run_lib.Run
    work: epath.Path
    checkpoints: ckpt_lib.Checkpointer
    writer: MetricsWriter
    progress: Progress
    best: Any = None
    train_time_s: float = 0.0


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       on_step: Callable[[int], None] | None = None) -> dict:
    """Trains `config` in `workdir` (resuming from its checkpoints) and returns results.json's
    content; on preemption (SIGTERM) it saves, stops and returns {'preempted': True, 'step'}.
    A non-finite step stops the run with `metrics.NonFiniteError`, after nothing non-finite
    was saved. `on_step(step)` (optional) is called after every dispatch.
    """
    run = run_lib.build(config)
    lead = jax.process_index() == 0
    work = epath.Path(workdir)
    if lead:
        work.mkdir(parents=True, exist_ok=True)
    checkpoints = run_lib.checkpointer(workdir, keep=config.train.keep_checkpoints)
    writer = None
    try:
        restored = run_lib.restore(run, checkpoints, set_aside=True)
        if restored is None:
            (state, rng), step, meta = run_lib.fresh_state(run), 0, {}
        else:
            state, rng, step, meta = restored.state, restored.rng, restored.step, restored.meta
        if lead:
            files.write_json(work / "config.json", config.to_dict(), sort_keys=True)
            # What `resnet-jax export` needs to take the model home without the data.
            preprocess.save_run(workdir, config, run.pipeline)
        writer = MetricsWriter(workdir, enabled=lead, resume_step=step)
        progress = Progress(config.train.num_steps, run.pipeline.steps_per_epoch,
                            enabled=lead, bar=config.train.progress)
        if step:
            progress.message(f"resumed from the checkpoint of step {step} in {work}")
        session = _Session(run, work, checkpoints, writer, progress, meta.get("best"),
                           meta.get("train_time_s", 0.0))
        with ckpt_lib.PreemptionWatcher() as watcher:
            result = _train(session, state, rng, step, watcher, on_step)
        checkpoints.wait()
    finally:
        if writer is not None:
            writer.close()
        checkpoints.close()
        run.pipeline.close()
    return result


def _train(s: _Session, state, rng, step: int, watcher, on_step) -> dict:
    run, t = s.run, s.run.config.train
    train_fn = dispatch.make_train_fn(run.model, run.tx, run.mesh,
                                      resident=run.pipeline.resident,
                                      preprocess=run.pipeline.device_preprocess,
                                      label_smoothing=run.config.optim.label_smoothing)
    eval_fn = dispatch.make_eval_fn(run.model, run.mesh,
                                    preprocess=run.pipeline.device_preprocess)
    chunks = feed.device_chunks(run.pipeline, run.mesh, step, t, ahead=run.config.data.prefetch)
    timer, pending, boundary, final = Timer(), [], 0, None
    ok = previous_ok = None  # device flags: every step so far finite (no host sync to read)
    started = time.perf_counter() - s.train_time_s
    try:
        for chunk in chunks:
            # `ok` carries a NaN across dispatches: after one, nothing more is applied, so the
            # state stays that of the first bad step until a check below sees it.
            state, metrics = train_fn(state, chunk.data, rng, ok)
            pending.append((chunk.step, metrics))
            previous_ok, ok = ok, _last(metrics["finite"])
            step = chunk.step + chunk.size
            timer.add(chunk.size)
            stop = watcher.should_stop(boundary)
            boundary += 1
            due = {name for name, every in (("log", t.log_every_steps),
                                            ("eval", t.eval_every_steps),
                                            ("save", t.checkpoint_every_steps))
                   if step % every == 0 or step == t.num_steps}
            # Checked before anything is logged, evaluated or saved, else one dispatch late
            # (that flag is ready by now: no wait on the device).
            if ((due or stop) and not bool(ok)) or (previous_ok is not None
                                                    and not bool(previous_ok)):
                _stop_non_finite(pending, s.checkpoints)
            if "log" in due:
                _log_train(s, pending, step, timer)
                pending = []
            evaluated = _log_eval(s, state, eval_fn, step) if "eval" in due else None
            final = evaluated or final
            if stop or evaluated or "save" in due:
                s.train_time_s = time.perf_counter() - started
                s.checkpoints.save(step, state, rng, {"model": run.meta, "best": s.best,
                                                      "train_time_s": s.train_time_s},
                                   metrics={"top1_error": evaluated["top1_error"]}
                                   if evaluated else None)
                timer.restart()
            if on_step is not None:
                on_step(step)
            if stop and step < t.num_steps:
                s.checkpoints.wait()
                s.progress.message(f"preempted (SIGTERM): saved the checkpoint of step {step};"
                                   " run the same command again to resume")
                return {"preempted": True, "step": step}
    finally:
        chunks.close()
    return _finish(s, state, eval_fn, step, final)


def _finish(s: _Session, state, eval_fn, step: int, final: dict | None) -> dict:
    if final is None:  # the workdir was already complete: report its final evaluation again
        summary = run_lib.evaluate(s.run, state, eval_fn)
        final = {"step": step, **{k: summary[k] for k in ("top1_error", "top5_error", "loss")}}
        s.best = s.best or final
    h, w, c = s.run.pipeline.image_shape
    results = {"model": s.run.meta["name"], "params": count_params(state.params),
               "macs": count_macs(s.run.model, (1, h, w, c)), "best": s.best,
               "final": final, "train_time_s": s.train_time_s, "steps": step}
    if jax.process_index() == 0:
        files.write_json(s.work / "results.json", results, sort_keys=True)
    return results


def _last(flags: jax.Array) -> jax.Array:
    return flags if flags.ndim == 0 else flags[-1]


def _stop_non_finite(pending: list, checkpoints: ckpt_lib.Checkpointer) -> None:
    """Raises NonFiniteError for the first non-finite step among the dispatches not yet logged
    (one of them has one); the checkpoints on disk are all of finite states."""
    checkpoints.wait()
    steps = checkpoints.all_steps()
    kept = (f"; the newest checkpoint (step {steps[-1]}) is the last finite state saved: a "
            "rerun resumes there and meets the same step again unless the recipe changes "
            "(a lower optim.lr, a warmup)") if steps else "; no checkpoint was saved"
    for first, metrics in pending:
        metrics_lib.check_finite(metrics, first, kept)
    raise AssertionError("a dispatch reported a non-finite step that its metrics do not show")


def _log_train(s: _Session, pending: list, step: int, timer: Timer) -> None:
    merged = {key: np.concatenate([np.atleast_1d(np.asarray(jax.device_get(m[key])))
                                   for _, m in pending]) for key in pending[0][1]}
    summary = metrics_lib.train_summary(merged)
    t = s.run.config.train
    images_per_sec, sec_per_step = timer.rate(t.batch_size)
    s.writer.write({"step": step, "epoch": step / s.run.pipeline.steps_per_epoch,
                    "split": "train", **summary, "images_per_sec": images_per_sec,
                    "wall_time": time.time()})
    s.progress.update(step, summary["loss"], summary["top1_error"], images_per_sec,
                      (t.num_steps - step) * sec_per_step)


def _log_eval(s: _Session, state, eval_fn, step: int) -> dict:
    summary = run_lib.evaluate(s.run, state, eval_fn)
    entry = {"step": step, "top1_error": summary["top1_error"],
             "top5_error": summary["top5_error"], "loss": summary["loss"]}
    if s.best is None or entry["top1_error"] < s.best["top1_error"]:
        s.best = entry
    s.writer.write({"step": step, "epoch": step / s.run.pipeline.steps_per_epoch, "split": "val",
                    "loss": summary["loss"], "top1_error": summary["top1_error"],
                    "top5_error": summary["top5_error"], "wall_time": time.time()})
    s.progress.message(f"step {step}: val loss {summary['loss']:.4f} top-1 error "
                       f"{summary['top1_error']:.2f}% top-5 error {summary['top5_error']:.2f}% "
                       f"({summary['count']} examples)")
    return entry

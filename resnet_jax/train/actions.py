"""What the training loop does at its boundaries: open the run's files, log, evaluate, save,
stop on a NaN, and write results.json. The loop (`resnet_jax.train.loop`) decides when.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable, Optional

import jax
import numpy as np
from etils import epath

from resnet_jax import files
from resnet_jax.interop import preprocess
from resnet_jax.models import count_macs, count_params
from resnet_jax.train import checkpoint as ckpt_lib
from resnet_jax.train import metrics as metrics_lib
from resnet_jax.train import run as run_lib
from resnet_jax.train.logging import MetricsWriter, Progress, Timer


@dataclasses.dataclass
class Session:
    """What the loop's actions share: the run and its outputs."""
    run: run_lib.Run
    work: epath.Path
    checkpoints: Optional[ckpt_lib.Checkpointer]  # None until the run's files are opened
    writer: MetricsWriter
    progress: Progress
    best: Any = None
    train_time_s: float = 0.0
    say: Callable[[str], None] = print
    # Train metrics of the steps since the last log row: [(first step, {name: (k,) array})].
    # Saved with a checkpoint, so a run resumed between log rows logs the same rows.
    pending: list = dataclasses.field(default_factory=list)
    lease: Any = None  # the workdir's (`lease.hold`); checked before anything is written


def finite(entry: Optional[dict]) -> bool:
    """An evaluation whose numbers are all finite: only such an evaluation can be the best
    (a NaN loss from labels the model does not know would otherwise win on its top-1)."""
    return entry is not None and all(
        isinstance(entry.get(k), (int, float)) and math.isfinite(entry[k])
        for k in ("top1_error", "top5_error", "loss"))


def open_files(s: Session) -> None:
    """The run's files, once its first batch has been read: config.json, what `resnet-jax
    export` needs to take the model home without the data, and the checkpoint directory."""
    if jax.process_index() == 0:
        s.work.mkdir(parents=True, exist_ok=True)
        files.write_json(s.work / "config.json", s.run.config.to_dict(), sort_keys=True)
        preprocess.save_run(os.fspath(s.work), s.run.config, s.run.pipeline)
    if s.checkpoints is None:
        s.checkpoints = run_lib.checkpointer(os.fspath(s.work),
                                             keep=s.run.config.train.keep_checkpoints)


def save(s: Session, step: int, state, rng, evaluated: Optional[dict]) -> None:
    """Starts the (async) save of `step`, with what a resumed run needs besides the state."""
    s.writer.flush()
    pending = [(first, {k: np.asarray(jax.device_get(v)).tolist() for k, v in m.items()})
               for first, m in s.pending]
    s.checkpoints.save(step, state, rng, {"model": s.run.meta, "best": s.best,
                                          "train_time_s": s.train_time_s, "pending": pending},
                       # No metric, no candidate for the best checkpoint orbax keeps.
                       metrics={"top1_error": evaluated["top1_error"]} if finite(evaluated)
                       else None)


def restored_pending(meta: dict) -> list:
    """`Session.pending` as a checkpoint's meta saved it (JSON lists back to arrays)."""
    return [(int(first), {k: np.asarray(v) for k, v in m.items()})
            for first, m in meta.get("pending", [])]


def finish(s: Session, state, eval_fn, step: int, final: dict | None) -> dict:
    if s.checkpoints is not None:  # complete only once the last checkpoint is committed:
        s.checkpoints.wait()       # a save that fails leaves no results.json
    if final is None:  # complete before this run, but results.json was never written
        summary = run_lib.evaluate(s.run, state, eval_fn)
        final = {"step": step, **{k: summary[k] for k in ("top1_error", "top5_error", "loss")}}
        if s.best is None and finite(final):
            s.best = final
    h, w, c = s.run.pipeline.image_shape
    results = {"model": s.run.meta["name"], "params": count_params(state.params),
               "macs": count_macs(s.run.model, (1, h, w, c)), "best": s.best,
               "final": final, "train_time_s": s.train_time_s, "steps": step}
    if jax.process_index() == 0:
        files.write_json(s.work / "results.json", results, sort_keys=True)
    return results


def stop_non_finite(pending: list, checkpoints: ckpt_lib.Checkpointer) -> None:
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


def log_train(s: Session, step: int, timer: Timer) -> None:
    merged = {key: np.concatenate([np.atleast_1d(np.asarray(jax.device_get(m[key])))
                                   for _, m in s.pending]) for key in s.pending[0][1]}
    s.pending = []
    summary = metrics_lib.train_summary(merged)
    t = s.run.config.train
    images_per_sec, sec_per_step = timer.rate(t.batch_size)
    s.writer.write({"step": step, "epoch": step / s.run.pipeline.steps_per_epoch,
                    "split": "train", **summary, "images_per_sec": images_per_sec,
                    "wall_time": time.time()})
    s.progress.update(step, summary["loss"], summary["top1_error"], images_per_sec,
                      (t.num_steps - step) * sec_per_step)


def log_eval(s: Session, state, eval_fn, step: int) -> dict:
    summary = run_lib.evaluate(s.run, state, eval_fn)
    entry = {"step": step, "top1_error": summary["top1_error"],
             "top5_error": summary["top5_error"], "loss": summary["loss"]}
    if finite(entry) and (s.best is None or entry["top1_error"] < s.best["top1_error"]):
        s.best = entry
    s.writer.write({"step": step, "epoch": step / s.run.pipeline.steps_per_epoch, "split": "val",
                    "loss": summary["loss"], "top1_error": summary["top1_error"],
                    "top5_error": summary["top5_error"], "wall_time": time.time()})
    s.progress.message(f"step {step}: val loss {summary['loss']:.4f} top-1 error "
                       f"{summary['top1_error']:.2f}% top-5 error {summary['top5_error']:.2f}% "
                       f"({summary['count']} examples)" + (
                           "" if finite(entry) else "; not finite, so never the best"))
    return entry

"""What the training loop does at its boundaries: open the run's files, log, evaluate, save,
stop on a NaN, and write results.json. The loop (`resnet_jax.train.loop`) decides when.

Replicas (`train.replicas` N > 1): every metrics row names its replica, each replica keeps its
own best evaluation, and a replica whose step turns non-finite is frozen (the device applies
nothing more to it) and reported here, its rows and results stopping there; the run stops only
when every replica is frozen.
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

from resnet_jax import files, parallel
from resnet_jax.data import identity
from resnet_jax.interop import preprocess
from resnet_jax.models import count_macs, count_params
from resnet_jax.train import checkpoint as ckpt_lib
from resnet_jax.train import metrics as metrics_lib
from resnet_jax.train import replicas
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
    # The best evaluation so far: an entry {'step', 'top1_error', ...}, or a list of them
    # (None where a replica has none yet) with replicas.
    best: Any = None
    train_time_s: float = 0.0
    say: Callable[[str], None] = print
    # Train metrics of the steps since the last log row: [(first step, steps, {name: (k, ...)
    # array})], the arrays possibly longer than `steps` (a padded scan). Saved with a
    # checkpoint, so a run resumed between log rows logs the same rows.
    pending: list = dataclasses.field(default_factory=list)
    # Replicas frozen at a non-finite step: {replica: that step}.
    frozen: dict = dataclasses.field(default_factory=dict)

    @property
    def n(self) -> int:
        return replicas.count(self.run.config)

    def live(self, step: int) -> list[int]:
        """The replicas that trained up to `step` (frozen ones only before their bad step)."""
        return [i for i in range(self.n) if self.frozen.get(i, step + 1) > step]
    lease: Any = None  # the workdir's (`lease.hold`); checked before anything is written
    data_record: Optional[dict] = None  # data.json to write with the run's files (`identity`)


def finite(entry: Optional[dict]) -> bool:
    """An evaluation whose numbers are all finite: only such an evaluation can be the best
    (a NaN loss from labels the model does not know would otherwise win on its top-1)."""
    return entry is not None and all(
        isinstance(entry.get(k), (int, float)) and math.isfinite(entry[k])
        for k in ("top1_error", "top5_error", "loss"))


def open_files(s: Session) -> None:
    """The run's files, once its first batch has been read: config.json, what `resnet-jax
    export` needs to take the model home without the data, and the checkpoint directory."""
    if s.lease is not None:
        s.lease.check()
    if jax.process_index() == 0:
        s.work.mkdir(parents=True, exist_ok=True)
        files.write_json(s.work / "config.json", s.run.config.to_dict(), sort_keys=True)
        preprocess.save_run(os.fspath(s.work), s.run.config, s.run.pipeline)
        identity.record(os.fspath(s.work), s.data_record)
    if s.checkpoints is None:
        s.checkpoints = run_lib.checkpointer(os.fspath(s.work),
                                             keep=s.run.config.train.keep_checkpoints,
                                             num_replicas=s.n)


def _host_pending(pending: list) -> list:
    """Pending metrics on the host, each cut to its real steps."""
    host = jax.device_get([m for _, _, m in pending])
    return [(first, steps, {k: np.asarray(v)[:steps] for k, v in m.items()})
            for (first, steps, _), m in zip(pending, host)]


def _best_metric(evaluated: Any) -> Optional[dict]:
    """What the checkpointer ranks a save by (None: it was not evaluated)."""
    if not evaluated:
        return None
    # No metric, no candidate for the best checkpoint orbax keeps.
    if isinstance(evaluated, dict):
        return {"top1_error": evaluated["top1_error"]} if finite(evaluated) else None
    # inf: a frozen replica's evaluation, or a non-finite one, never makes a checkpoint its
    # best.
    return {"top1_error": [e["top1_error"] if finite(e) else math.inf for e in evaluated]}


def save(s: Session, step: int, state, rng, evaluated: Any) -> None:
    """Starts the (async) save of `step`, with what a resumed run needs besides the state."""
    s.writer.flush()
    pending = [(first, {k: v.tolist() for k, v in m.items()})
               for first, _, m in _host_pending(s.pending)]
    meta = {"model": s.run.meta, "best": s.best, "train_time_s": s.train_time_s,
            "pending": pending, "replicas": s.n,
            "frozen": {str(i): b for i, b in sorted(s.frozen.items())}}
    s.checkpoints.save(step, state, rng, meta, metrics=_best_metric(evaluated))


def restored_pending(meta: dict) -> list:
    """`Session.pending` as a checkpoint's meta saved it (JSON lists back to arrays)."""
    out = []
    for first, m in meta.get("pending", []):
        arrays = {k: np.asarray(v) for k, v in m.items()}
        out.append((int(first), len(arrays["finite"]), arrays))
    return out


def restored_frozen(meta: dict) -> dict:
    """`Session.frozen` as a checkpoint's meta saved it."""
    return {int(i): int(b) for i, b in meta.get("frozen", {}).items()}


def initial_ok(s: Session, mesh) -> Optional[jax.Array]:
    """The device's NaN flags a (resumed) run starts from: None when every replica is live,
    else False for each frozen replica, so the device applies nothing to it."""
    if not s.frozen:
        return None
    flags = np.array([i not in s.frozen for i in range(s.n)])
    return jax.device_put(flags, parallel.replicated(mesh))


def _kept(checkpoints: ckpt_lib.Checkpointer) -> str:
    checkpoints.wait()
    steps = checkpoints.all_steps()
    return (f"; the newest checkpoint (step {steps[-1]}) is the last finite state saved: a "
            "rerun resumes there and meets the same step again unless the recipe changes "
            "(a lower optim.lr, a warmup)") if steps else "; no checkpoint was saved"


def stop_non_finite(pending: list, checkpoints: ckpt_lib.Checkpointer) -> None:
    """Raises NonFiniteError for the first non-finite step among the dispatches not yet logged
    (one of them has one); the checkpoints on disk are all of finite states."""
    kept = _kept(checkpoints)
    for first, _, metrics in _host_pending(pending):
        metrics_lib.check_finite(metrics, first, kept)
    raise AssertionError("a dispatch reported a non-finite step that its metrics do not show")


def _first_bad(pending: list, replica: int) -> tuple[int, str]:
    for first, _, metrics in _host_pending(pending):
        found = metrics_lib.first_non_finite(metrics, first, replica)
        if found is not None:
            return found
    raise AssertionError(f"replica {replica} reported a non-finite step its metrics do not show")


def guard(s: Session, flags: list) -> None:
    """The NaN guard: reads the device's finite flags (`ok` of a dispatch: the one host read a
    dispatch needs). One replica: a False stops the run (`stop_non_finite`). Several: each
    replica newly False is frozen and reported, and the run stops when all are."""
    bad = set()
    for flag in flags:
        bad |= {i for i, ok in enumerate(np.atleast_1d(np.asarray(flag, bool))) if not ok}
    if s.n == 1:
        if bad:
            stop_non_finite(s.pending, s.checkpoints)
        return
    seeds = replicas.seeds(s.run.config)
    for i in sorted(bad - set(s.frozen)):
        step, detail = _first_bad(s.pending, i)
        s.frozen[i] = step
        s.progress.message(f"replica {i} (seed {seeds[i]}): non-finite loss or gradient at "
                           f"step {step} ({detail}); frozen at its last finite state, the "
                           "other replicas train on")
    if len(s.frozen) == s.n:
        where = ", ".join(f"replica {i} at step {b}" for i, b in sorted(s.frozen.items()))
        raise metrics_lib.NonFiniteError(f"every replica turned non-finite ({where}); training "
                                         f"stopped{_kept(s.checkpoints)}")


def _take_pending(s: Session, upto: int) -> dict:
    """The pending train metrics of the steps before `upto` (host arrays, stacked over the
    steps); the later ones stay pending."""
    parts = _host_pending(s.pending)
    first = parts[0][0]
    merged = {k: np.concatenate([m[k] for _, _, m in parts]) for k in parts[0][2]}
    cut = upto - first
    rest = {k: v[cut:] for k, v in merged.items()}
    s.pending = [(upto, len(rest["finite"]), rest)] if len(rest["finite"]) else []
    return {k: v[:cut] for k, v in merged.items()}


def log_train(s: Session, steps: list[int], timer: Timer) -> float:
    """The train rows of the log steps `steps` (ascending, all done): means over the steps
    since the row before; one row per live replica with replicas. Returns the seconds per
    step of the window."""
    t = s.run.config.train
    images_per_sec, sec_per_step = timer.rate(t.batch_size)
    for step in steps:
        window = _take_pending(s, step)
        epoch = step / s.run.pipeline.steps_per_epoch
        rows = []
        for i in (range(s.n) if s.n > 1 else (None,)):
            summary = metrics_lib.train_summary(window, i)
            if summary is None:  # a replica frozen before this window
                continue
            rows.append(summary)
            tag = {} if i is None else {"replica": i}
            s.writer.write({"step": step, "epoch": epoch, "split": "train", **tag, **summary,
                            "images_per_sec": images_per_sec, "wall_time": time.time()})
        if rows:
            s.progress.update(step, float(np.mean([r["loss"] for r in rows])),
                              float(np.mean([r["top1_error"] for r in rows])),
                              images_per_sec, (t.num_steps - step) * sec_per_step,
                              replicas=len(rows) if s.n > 1 else 1)
    return sec_per_step


# A stop (SIGTERM, Ctrl-C) waits for the dispatch running and the one queued behind it: with
# dispatches of at most this, a preemption notice (~30 s) leaves time for the save.
MAX_DISPATCH_S = 10.0


def say_if_dispatch_long(s: Session, steps: int, sec_per_step: float) -> bool:
    """On a scan (an accelerator: a dispatch of `steps` steps cannot stop midway), says once
    that a dispatch takes longer than `MAX_DISPATCH_S` and what to set; True if it said so."""
    seconds = steps * sec_per_step
    if not seconds > MAX_DISPATCH_S:  # also NaN: nothing measured
        return False
    fits = max(1, int(MAX_DISPATCH_S / sec_per_step))
    s.say(f"a dispatch of {steps} steps takes {seconds:.0f} s here, and a stop (SIGTERM, "
          f"Ctrl-C) waits for the one running and the one queued behind it (up to "
          f"{2 * seconds:.0f} s; a preemption notice gives about 30 s): set "
          f"--config.train.steps_per_dispatch={fits} or less to keep a dispatch under "
          f"{MAX_DISPATCH_S:.0f} s")
    return True


def _entry(step: int, summary: dict) -> dict:
    return {"step": step, "top1_error": summary["top1_error"],
            "top5_error": summary["top5_error"], "loss": summary["loss"]}


def log_eval(s: Session, state, eval_fn, step: int) -> Any:
    """Evaluates, logs a val row (per live replica) and tracks the best; returns the entry (a
    list with replicas, None for a frozen one)."""
    summaries = run_lib.evaluate_all(s.run, state, eval_fn)
    epoch = step / s.run.pipeline.steps_per_epoch
    if s.n == 1:
        entry = _entry(step, summaries[0])
        if finite(entry) and (s.best is None or entry["top1_error"] < s.best["top1_error"]):
            s.best = entry
        _write_val(s, step, epoch, summaries[0], {})
        s.progress.message(f"step {step}: val loss {entry['loss']:.4f} top-1 error "
                           f"{entry['top1_error']:.2f}% top-5 error {entry['top5_error']:.2f}% "
                           f"({summaries[0]['count']} examples)" + (
                               "" if finite(entry) else "; not finite, so never the best"))
        return entry
    live = s.live(step)
    best = list(s.best) if s.best else [None] * s.n
    entries = [_entry(step, summaries[i]) if i in live else None for i in range(s.n)]
    for i in live:
        if finite(entries[i]) and (best[i] is None
                                   or entries[i]["top1_error"] < best[i]["top1_error"]):
            best[i] = entries[i]
        _write_val(s, step, epoch, summaries[i], {"replica": i})
    s.best = best
    errors = [e["top1_error"] for e in entries if e]
    mean, std = replicas.mean_std(errors)
    each = " / ".join(f"{e['top1_error']:.2f}" if e else "frozen" for e in entries)
    s.progress.message(f"step {step}: val top-1 error (%) of replicas 0-{s.n - 1}: {each}; "
                       f"mean {mean:.2f} ± {std:.2f} ({summaries[0]['count']} examples)")
    return entries


def _write_val(s: Session, step: int, epoch: float, summary: dict, tag: dict) -> None:
    s.writer.write({"step": step, "epoch": epoch, "split": "val", **tag,
                    "loss": summary["loss"], "top1_error": summary["top1_error"],
                    "top5_error": summary["top5_error"], "wall_time": time.time()})


def finish(s: Session, state, eval_fn, step: int, final: Any) -> dict:
    """results.json (process 0 writes it) and its content."""
    if s.checkpoints is not None:  # complete only once the last checkpoint is committed:
        s.checkpoints.wait()       # a save that fails leaves no results.json
    if final is None:  # complete before this run, but results.json was never written
        final = [_entry(step, x) for x in run_lib.evaluate_all(s.run, state, eval_fn)]
        if s.n == 1:
            final = final[0]
            if s.best is None and finite(final):
                s.best = final
        else:
            final = [e if i in s.live(step) else None for i, e in enumerate(final)]
            best = list(s.best) if s.best else [None] * s.n
            s.best = [b if b is not None or not finite(e) else e for b, e in zip(best, final)]
    h, w, c = s.run.pipeline.image_shape
    results = {"model": s.run.meta["name"], "params": count_params(state.params) // s.n,
               "macs": count_macs(s.run.model, (1, h, w, c))}
    if s.n == 1:
        results.update(best=s.best, final=final)
    else:
        seeds = replicas.seeds(s.run.config)
        each = [{"seed": seeds[i], "best": (s.best or [None] * s.n)[i],
                 "final": final[i] if i not in s.frozen else None,
                 **({"non_finite_step": s.frozen[i]} if i in s.frozen else {})}
                for i in range(s.n)]
        results.update(replicas=each, summary=replicas.summarize(each))
        s.progress.message(replicas.summary_line(results["summary"]))
    results.update(train_time_s=s.train_time_s, steps=step)
    if s.lease is not None:
        s.lease.check()
    if jax.process_index() == 0:
        files.write_json(s.work / "results.json", results, sort_keys=True)
    return results

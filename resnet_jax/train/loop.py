"""The training job: `train_and_evaluate(config, workdir)`.

The only module with side effects (files, signals, printing). A run is: build
(`run.build`) -> resume from the newest readable checkpoint (`run.restore`) or start fresh ->
one flat loop over the run's chunks of steps (`feed.device_chunks`, prepared ahead on the
devices), with periodic actions at absolute step multiples: log every `log_every_steps`,
evaluate every `eval_every_steps` and at the end, checkpoint every `checkpoint_every_steps`,
after each evaluation, at the end and on preemption (SIGTERM) -> results.json.
Step s always trains on the same examples with rng fold_in(base, s), and the chunks depend on
the config alone, so a resumed run reproduces the uninterrupted one bitwise. With
`train.replicas` N > 1 the same loop trains N seeds at once (`resnet_jax.train.replicas`).

The host waits on the device only where it must: the NaN guard reads the previous dispatch's
finite flag (one dispatch late, while the next one runs) and, at a log, eval or save, the
current one; logs, evaluations and saves fetch what they write. And in the python loop (CPU)
of a run that can be stopped, after each step, so that a stop is seen within one step
(`dispatch.make_train_fn`'s `stop`).
"""
from __future__ import annotations

import sys
import time
from typing import Callable

import jax
import ml_collections
import numpy as np
from etils import epath

from resnet_jax import files, parallel
from resnet_jax.data import identity
from resnet_jax.models import count_params
from resnet_jax.train import actions, dispatch, feed, replicas
from resnet_jax.train import preemption
from resnet_jax.train import lease as lease_lib
from resnet_jax.train import run as run_lib
from resnet_jax.train.logging import MetricsWriter, Progress, Timer

# Re-exported: the library API of a training workdir.
build, evaluate, read_config = run_lib.build, run_lib.evaluate, run_lib.read_config
restore_for_eval, load_trained = run_lib.restore_for_eval, run_lib.load_trained


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       on_step: Callable[[int], None] | None = None) -> dict:
    """Trains `config` in `workdir` (resuming from its checkpoints) and returns results.json's
    content; on preemption (SIGTERM, or a first Ctrl-C) it saves, stops and returns
    {'preempted': True, 'step'}. A non-finite step stops the run with
    `metrics.NonFiniteError`, after nothing non-finite was saved. `on_step(step)` (optional)
    is called after every dispatch. Says what it does as it starts each phase (process 0,
    stdout).

    The run holds the workdir's lease (`train.lease`) from before it reads anything: a second
    run on the same workdir raises `lease.WorkdirBusyError` naming this one; a workdir that
    cannot be written is a ValueError, before any data is loaded.
    """
    files.check_remote(workdir, "--workdir")  # on every process, before the lease
    with lease_lib.hold(workdir) as lease:
        return _train_and_evaluate(config, workdir, on_step, lease)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        on_step: Callable[[int], None] | None, lease) -> dict:
    lead = jax.process_index() == 0
    say = (lambda text: print(text, flush=True)) if lead else (lambda text: None)
    work = epath.Path(workdir)
    # Fresh or resumed: process 0's look, for every process, before any builds (a slower
    # process would see the checkpoints/ that process 0 makes for a new run, and restore
    # while process 0 trains: their collectives would never meet).
    resuming = bool(parallel.from_process_0(lead and (work / "checkpoints").exists()))
    d = config.data
    where = {"tar": d.path, "folder": d.path, "tfds": d.name}.get(d.source, "")
    # Only the in-memory path lets tfds download; streaming reads a prepared dataset.
    say(f"data: loading {d.source} {where} ({d.pipeline} pipeline) ..." + (
        " (tfds downloads it the first time: this needs internet; offline, give a local "
        "copy, e.g. configs/cifar10.py:data=PATH)"
        if d.source == "tfds" and d.pipeline == "in_memory" else ""))
    started = time.perf_counter()
    run = run_lib.build(config)
    p = run.pipeline
    say(f"data: {p.describe()}: {p.num_train_examples:,} training and {p.num_eval_examples:,} "
        f"evaluation images of {'x'.join(map(str, p.image_shape))}, {p.num_classes} classes "
        f"({time.perf_counter() - started:.1f} s)")
    # A new workdir gets no files before its first batch is read (a bad image folder leaves
    # nothing behind); an existing one is resumed (or refused, if of another model) first.
    n = replicas.count(config)
    checkpoints = writer = session = restored = None
    # Both take seconds to a minute on a CPU (the initialization is compiled first).
    say(f"model: {run.meta['name']}: " + ("restoring the newest checkpoint ..." if resuming
                                          else "compiling and running its initialization ..."))
    try:
        if resuming:
            lease.check()  # orbax clears unfinished saves; a torn checkpoint is set aside
            checkpoints = run_lib.checkpointer(workdir, keep=config.train.keep_checkpoints,
                                               num_replicas=n)
            restored = run_lib.restore(run, checkpoints, set_aside=True)
        if restored is None:
            (state, rng), step, meta = run_lib.fresh_state(run), 0, {}
        else:
            state, rng, step, meta = restored.state, restored.rng, restored.step, restored.meta
        seeds = replicas.seeds(config)
        say(f"model: {run.meta['name']}, {count_params(state.params) // n:,} parameters, "
            f"{config.model.dtype}, on {run.mesh.size} {run.mesh.devices.flat[0].platform} "
            f"device(s)" + (f"; weights from {config.model.init_from}"
                            if restored is None and config.model.init_from else "")
            + (f"; {n} replicas (seeds {seeds[0]}..{seeds[-1]}) as one program"
               if n > 1 else ""))
        done = files.read_json(work / "results.json")
        if step >= config.train.num_steps and done:
            say(f"already complete: step {step} of {config.train.num_steps} in {work}; "
                f"{_final_line(done)}; results.json has the rest")
            return done
        say(f"resuming from the checkpoint of step {step} of {config.train.num_steps} in "
            f"{work}" if step else f"starting a new run of {config.train.num_steps} steps in "
            f"{work}")
        if step:
            lease.check()  # the log is cut back to the checkpoint's step
        # The data a resumed run trained on must be the data it reads now (one line if not).
        data_record = identity.check(workdir, run.pipeline, resumed=restored is not None,
                                     say=say)
        writer = MetricsWriter(workdir, enabled=lead, resume_step=step)
        progress = Progress(config.train.num_steps, run.pipeline.steps_per_epoch,
                            enabled=lead, bar=config.train.progress)
        session = actions.Session(run, work, checkpoints, writer, progress, meta.get("best"),
                                  meta.get("train_time_s", 0.0), say,
                                  actions.restored_pending(meta), actions.restored_frozen(meta),
                                  lease=lease, data_record=data_record)
        with preemption.PreemptionWatcher() as watcher:
            result = _train(session, state, rng, step, watcher, on_step)
        if session.checkpoints is not None:  # None: stopped before the first step
            session.checkpoints.wait()
    finally:
        opened = session.checkpoints if session is not None else checkpoints
        _close_all(writer and writer.close, opened and opened.close, run.pipeline.close)
    return result


def _final_line(results: dict) -> str:
    """The final and best validation errors of a results.json, in a few words."""
    if "summary" in results:
        return replicas.summary_line(results["summary"])
    best = results.get("best")
    return (f"final val top-1 error {results['final']['top1_error']:.2f}% (" + (
        f"best {best['top1_error']:.2f}% at step {best['step']}" if best else
        "no finite evaluation") + ")")


def _log_steps(begin: int, end: int, train) -> list[int]:
    """The log steps in (begin, end]: multiples of log_every_steps, and the last step."""
    every = train.log_every_steps
    steps = list(range((begin // every + 1) * every, end + 1, every))
    if end == train.num_steps and end % every:
        steps.append(end)
    return steps


def _close_all(*closers) -> None:
    """Calls every closer (None: skipped). On the way out of an error their own failures are
    dropped (a full disk fails the save and then each flush: the save's is the error to
    report); otherwise the first is raised once all ran."""
    failing, first = sys.exc_info()[1] is not None, None
    for close in closers:
        if close is None:
            continue
        try:
            close()
        except Exception as err:  # noqa: BLE001 - see the docstring
            first = first or err
    if first is not None and not failing:
        raise first


def _train(s: actions.Session, state, rng, step: int, watcher, on_step) -> dict:
    run, t = s.run, s.run.config.train
    n = replicas.count(run.config)
    train_fn = dispatch.make_train_fn(run.model, run.tx, run.mesh,
                                      resident=run.pipeline.resident,
                                      preprocess=run.pipeline.device_preprocess,
                                      label_smoothing=run.config.optim.label_smoothing,
                                      replicas=n)
    eval_fn = dispatch.make_eval_fn(run.model, run.mesh,
                                    preprocess=run.pipeline.device_preprocess, replicas=n)
    # One process: a stop request also ends a CPU dispatch between its steps and the wait for
    # the next chunk's data, so its save starts within one step (several processes must stop
    # at the same boundary, which JAX's coordination service picks).
    stop_now = watcher.requested if jax.process_count() == 1 else None
    chunks = feed.device_chunks(run.pipeline, run.mesh, step, t, ahead=run.config.data.prefetch,
                                seeds=replicas.seeds(run.config) if n > 1 else None,
                                interrupt=stop_now)
    scan = dispatch.loop_kind("auto", run.mesh) == "scan"
    timer, boundary, final, first, saved = Timer(), 0, None, True, step
    # `actions.say_if_dispatch_long`, once a run, from the second log window (the first holds
    # the compilation)
    judge_dispatch, said_long = False, False
    # Device flags: every step so far finite (per replica); read without a sync only when due.
    ok, previous_ok = actions.initial_ok(s, run.mesh), None
    started = time.perf_counter() - s.train_time_s
    try:
        for chunk in chunks:
            # None: a stop came while the data was awaited. A scan's chunk cannot stop
            # midway: none is dispatched after the request.
            if chunk is None or (scan and stop_now is not None and stop_now()):
                break
            if first:
                actions.open_files(s)
                s.say(f"compiling the training step; then {chunk.size} step(s) per dispatch "
                      "...")
                compile_started = time.perf_counter()
            # `ok` carries a NaN across dispatches: after one, nothing more is applied, so the
            # state stays that of the first bad step until a check below sees it.
            state, metrics = train_fn(state, chunk.data, rng, ok, stop=stop_now)
            # < chunk.size when a SIGTERM cut a CPU chunk short; a padded scan returns more.
            done = min(chunk.size, len(metrics["finite"]))
            if first:
                jax.block_until_ready(metrics)
                s.say(f"step {chunk.step + done}: the first dispatch took "
                      f"{time.perf_counter() - compile_started:.1f} s (compilation included), "
                      f"loss {float(np.mean(jax.device_get(metrics['loss'])[:done])):.4f}")
                first = False
            s.pending.append((chunk.step, done, metrics))
            previous_ok, ok = ok, metrics["finite"][-1]
            step = chunk.step + done
            timer.add(done)
            stop = watcher.should_stop(boundary)
            boundary += 1
            logs = _log_steps(chunk.step, step, t)
            evaluate = step % t.eval_every_steps == 0 or step == t.num_steps
            save = step % t.checkpoint_every_steps == 0 or step == t.num_steps
            writes = bool(logs) or evaluate or save or stop
            if writes:  # about to write: only while this run holds the workdir
                s.lease.check()
            # Checked before anything is logged, evaluated or saved, else one dispatch late
            # (that flag is ready by now: no wait on the device).
            flags = ([ok] if writes else []) + ([previous_ok] if previous_ok is not None else [])
            if flags:
                actions.guard(s, flags)
            if logs:
                sec_per_step = actions.log_train(s, logs, timer)
                if scan and judge_dispatch and not said_long:
                    said_long = actions.say_if_dispatch_long(s, chunk.size, sec_per_step)
                judge_dispatch = True
            evaluated = actions.log_eval(s, state, eval_fn, step) if evaluate else None
            final = evaluated or final
            stop = stop and step < t.num_steps
            if stop:
                s.progress.message(f"{watcher.why()}: saving the checkpoint of step {step} ...")
            if stop or evaluated or save:
                s.train_time_s = time.perf_counter() - started
                actions.save(s, step, state, rng, evaluated)
                timer.restart()
                saved = step
            if on_step is not None:
                on_step(step)
            if stop:
                return _stopped(s, watcher, step)
        if step < t.num_steps:  # stopped between chunks
            return _stop_between_chunks(s, watcher, step, state, rng, ok, saved, started)
    finally:
        chunks.close()
    results = actions.finish(s, state, eval_fn, step, final)
    if n == 1:  # a run of replicas ended with their summary line
        s.progress.message(f"done: {_final_line(results)}; {s.work / 'results.json'} has the "
                           "rest")
    return results


def _stopped(s: actions.Session, watcher, step: int) -> dict:
    s.checkpoints.wait()
    s.progress.message(f"{watcher.why()}: saved the checkpoint of step {step}; run the same "
                       "command again to resume")
    return {"preempted": True, "step": step}


def _stop_between_chunks(s: actions.Session, watcher, step: int, state, rng, ok,
                         saved: int, started: float) -> dict:
    """The stop of a run whose chunks ended before its last step: its state (of `step`,
    `ok` its finite flags) is saved, unless it is the state the run started from or saved
    last."""
    if s.checkpoints is None:  # not one step done: nothing new to save
        s.progress.message(f"{watcher.why()}: stopped before the first step; nothing new to "
                           "save")
        return {"preempted": True, "step": step}
    s.progress.message(f"{watcher.why()}: saving the checkpoint of step {step} ...")
    if saved != step:
        s.lease.check()
        actions.guard(s, [ok])  # nothing non-finite is saved
        s.train_time_s = time.perf_counter() - started
        actions.save(s, step, state, rng, None)
    return _stopped(s, watcher, step)

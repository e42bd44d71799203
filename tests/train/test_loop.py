"""The training job end to end on a tiny model (cifar_resnet8, width 4, 16x16 synthetic):
SIGTERM mid-way + resume == uninterrupted (bitwise), metrics files, eval reproduces train,
and bad input refused before anything is lost."""
import gc
import io
import json
import os
import signal
import sys
import time
from contextlib import redirect_stdout

import jax
import numpy as np
import pytest

from resnet_jax import cli
from resnet_jax.config import load_config
from resnet_jax.train import checkpoint as ckpt_lib
from resnet_jax.train import feed, loop
from resnet_jax.train.logging import ROW_FIELDS, read_metrics

SMOKE = "configs/smoke.py"


pytestmark = pytest.mark.usefixtures("compilation_cache")  # tests/conftest.py


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An uninterrupted smoke run: (workdir, results)."""
    workdir = str(tmp_path_factory.mktemp("full"))
    return workdir, loop.train_and_evaluate(load_config(SMOKE), workdir)


def _params(workdir):
    _, _, variables = loop.load_trained(workdir)
    return jax.tree.leaves(jax.device_get(variables))


def _comparable(rows):
    return [{k: v for k, v in r.items() if k not in ("wall_time", "images_per_sec")}
            for r in rows]


def _interrupted_run(workdir, signum=signal.SIGTERM):
    """The smoke run stopped by a real SIGTERM (or Ctrl-C: SIGINT) sent after step 4: the next
    CPU dispatch (steps 4, 5) stops after its first step and saves step 5 (4 is a checkpoint
    step too)."""
    def preempt(step):
        if step == 4:
            os.kill(os.getpid(), signum)
    return loop.train_and_evaluate(load_config(SMOKE), workdir, on_step=preempt)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_then_resume_is_bitwise_identical(finished, tmp_path, capsys,
                                                             signum):
    """A first Ctrl-C saves and stops as a preemption does (it raised KeyboardInterrupt,
    losing everything since the last periodic checkpoint)."""
    full_dir, full = finished
    workdir = str(tmp_path / "interrupted")

    first = _interrupted_run(workdir, signum)
    assert first == {"preempted": True, "step": 5}  # the CPU dispatch 4..6 stops after 4
    said = "interrupted (Ctrl-C)" if signum == signal.SIGINT else "preempted (SIGTERM)"
    assert f"{said}: saved the checkpoint of step 5" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    assert not os.path.exists(os.path.join(workdir, "results.json"))
    second = loop.train_and_evaluate(load_config(SMOKE), workdir)
    assert second["final"] == full["final"] and second["best"] == full["best"]
    for a, b in zip(_params(full_dir), _params(workdir), strict=True):
        np.testing.assert_array_equal(a, b)
    # The resumed run's log is the uninterrupted one: no step twice, none missing.
    assert _comparable(read_metrics(workdir)) == _comparable(read_metrics(full_dir))


def test_workdir_files_parse(finished):
    workdir, results = finished
    rows = read_metrics(workdir)
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    assert [r["step"] for r in train] == [2, 4, 6, 8] and [r["step"] for r in val] == [4, 8]
    assert set(ROW_FIELDS) <= set(train[0])
    assert all(0.0 <= r["top1_error"] <= 100.0 and r["top5_error"] <= r["top1_error"] for r in rows)
    assert train[0]["lr"] == pytest.approx(0.1) and train[-1]["lr"] == pytest.approx(0.01)
    on_disk = json.loads(open(os.path.join(workdir, "results.json")).read())
    assert on_disk == json.loads(json.dumps(results))
    assert on_disk["model"] == "cifar_resnet8" and on_disk["steps"] == 8
    assert on_disk["final"]["top1_error"] == val[-1]["top1_error"]
    assert on_disk["best"]["top1_error"] == min(r["top1_error"] for r in val)
    assert on_disk["params"] > 0 and on_disk["macs"] > 0
    events = os.listdir(os.path.join(workdir, "tb"))
    assert events and os.path.getsize(os.path.join(workdir, "tb", events[0])) > 0
    saved = loop.read_config(workdir)
    assert saved.to_dict() == load_config(SMOKE).to_dict()


def test_eval_command_reproduces_final_numbers(finished):
    workdir, results = finished
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(["eval", "--workdir", workdir, "--json"]) == 0
    evaluated = json.loads(out.getvalue().strip().splitlines()[-1])
    assert evaluated["step"] == 8 and evaluated["crops"] == "center"
    assert (evaluated["source"], evaluated["count"]) == ("run", 64)
    for key in ("top1_error", "top5_error", "loss"):
        assert evaluated[key] == results["final"][key]
    saved = json.loads(open(os.path.join(workdir, "eval", "run-validation-center.json")).read())
    assert saved == evaluated


def test_eval_of_the_best_checkpoint_and_views_an_in_memory_run_cannot_give(finished, capsys):
    workdir, results = finished
    assert cli.main(["eval", "--workdir", workdir, "--checkpoint", "best", "--json"]) == 0
    best = json.loads(capsys.readouterr().out)
    assert best["step"] == results["best"]["step"] == 4
    assert best["top1_error"] == results["best"]["top1_error"]
    assert best["loss"] == results["best"]["loss"]
    assert cli.main(["eval", "--workdir", workdir, "--crops", "10crop"]) == 2
    assert "score image files with --data" in capsys.readouterr().err


def test_eval_of_the_validation_images_as_files_gives_the_same_numbers(finished, tmp_path,
                                                                       capsys):
    """`eval --data` (Pillow decode, the run's saved preprocessing, its own batching) on the
    run's validation images written as PNG files scores exactly as the run's evaluation."""
    from PIL import Image
    from resnet_jax import data as data_lib
    workdir, results = finished
    config = loop.read_config(workdir)
    pipeline = data_lib.make_pipeline(config.data, global_batch_size=32, eval_batch_size=32,
                                      seed=config.seed)
    for i, (image, label) in enumerate(zip(*pipeline.eval_arrays, strict=True)):
        folder = tmp_path / "val" / "test" / pipeline.class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.png")
    assert cli.main(["eval", "--workdir", workdir, "--data", str(tmp_path / "val"),
                     "--batch-size", "24", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert (evaluated["count"], evaluated["split"], evaluated["step"]) == (64, "test", 8)
    for key in ("top1_error", "top5_error"):
        assert evaluated[key] == results["final"][key]
    assert evaluated["loss"] == pytest.approx(results["final"]["loss"], rel=1e-5)


def test_workdir_of_another_model_is_refused_untouched(finished):
    workdir, _ = finished
    before = open(os.path.join(workdir, "config.json")).read()
    config = load_config("configs/smoke.py:depth=14")
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match="cifar_resnet8.*cifar_resnet14"):
        loop.train_and_evaluate(config, workdir)
    assert open(os.path.join(workdir, "config.json")).read() == before


def test_batch_not_divisible_by_devices(tmp_path):
    config = load_config(SMOKE, ["--config.train.batch_size=12"])
    with pytest.raises(ValueError, match="train.batch_size=12.*8 devices"):
        loop.train_and_evaluate(config, str(tmp_path))


def test_missing_data_directory(tmp_path):
    config = load_config(SMOKE, ["--config.data.source=tar",
                                 f"--config.data.path={tmp_path}/nope.tar.gz"])
    with pytest.raises(ValueError, match="data.path=.*nope.tar.gz.*does not exist"):
        loop.train_and_evaluate(config, str(tmp_path / "w"))
    config = load_config(SMOKE, [f"--config.data.data_dir={tmp_path}/missing"])
    with pytest.raises(ValueError, match="data.data_dir"):
        loop.train_and_evaluate(config, str(tmp_path / "w"))


def test_chunks_are_aligned_to_boundaries():
    """Dispatches end at every eval and checkpoint step (their state is needed) and at the
    end; a log step needs only the per-step metrics, so it cuts nothing."""
    train = load_config(SMOKE, ["--config.train.steps_per_dispatch=4",
                                "--config.train.log_every_steps=3",
                                "--config.train.checkpoint_every_steps=6",
                                "--config.train.num_steps=11"]).train
    steps, step = [], 0
    while step < train.num_steps:
        k = feed.chunk_size(step, train)
        steps.append(k)
        step += k
    assert steps == [4, 2, 2, 3]  # cut at 4 (eval), 6 (checkpoint), 8 (eval), 11 (the end)
    # A run resumed at 6 dispatches exactly the rest of these chunks.
    assert list(feed.schedule(6, train)) == [(6, 2), (8, 3)]


def test_log_rows_inside_a_dispatch_are_those_of_single_steps(tmp_path):
    """Logs every 3 steps in dispatches of 4: rows at 3, 6 (inside dispatches) and at the
    evals, each the mean of its own steps, as a run of one step per dispatch logs them."""
    over = ["--config.train.log_every_steps=3"]
    rows = {}
    for k in (4, 1):
        workdir = str(tmp_path / f"k{k}")
        loop.train_and_evaluate(
            load_config(SMOKE, over + [f"--config.train.steps_per_dispatch={k}"]), workdir)
        rows[k] = _comparable(read_metrics(workdir))
    assert [(r["step"], r["split"]) for r in rows[4]] == [
        (3, "train"), (4, "val"), (6, "train"), (8, "train"), (8, "val")]
    assert rows[4] == rows[1]


def _poison_step(monkeypatch, bad_step):
    """Make the real train step meet a NaN at `bad_step`: the images of that one batch are
    NaN, so its loss and gradient are. Nothing else is changed: keeping the state finite is
    left to the step's own guards (the test fails without them)."""
    import jax.numpy as jnp

    from resnet_jax.train import dispatch
    real = dispatch.train_step

    def poisoned(state, batch, rng, **kw):
        images = batch["image"].astype(jnp.float32)
        images = jnp.where(state.step == bad_step, jnp.nan, images)
        return real(state, dict(batch, image=images), rng, **kw)

    monkeypatch.setattr(dispatch, "train_step", poisoned)


def _record_states(monkeypatch) -> list:
    """The state every dispatch of the loop returns (host copies), in order: what the run
    holds when it stops. Observes only."""
    from resnet_jax.train import dispatch
    real, seen = dispatch.make_train_fn, []

    def make(*args, **kwargs):
        fn = real(*args, **kwargs)

        def recorded(state, chunk, rng, ok=None, stop=None):
            state, metrics = fn(state, chunk, rng, ok, stop=stop)
            seen.append(jax.device_get(state))
            return state, metrics
        return recorded

    monkeypatch.setattr(dispatch, "make_train_fn", make)
    return seen


NAN_RUN = ["--config.train.num_steps=12", "--config.train.log_every_steps=6",
           "--config.train.eval_every_steps=12", "--config.optim.boundaries=100"]


@pytest.mark.parametrize("k, every, bad, kept", [
    (1, 2, 3, [2]),      # a checkpoint boundary (4) comes before the next log (6)
    (2, 2, 3, [2]),      # inside a dispatch of two steps
    (1, 6, 1, []),       # no boundary before the next dispatch: caught one dispatch late
])
def test_nan_stops_cleanly_and_nothing_non_finite_is_saved(tmp_path, monkeypatch, capsys, k,
                                                           every, bad, kept):
    overrides = NAN_RUN + [f"--config.train.steps_per_dispatch={k}",
                           f"--config.train.checkpoint_every_steps={every}"]
    workdir = str(tmp_path / "w")
    _poison_step(monkeypatch, bad)
    states = _record_states(monkeypatch)
    rc = cli.main(["train", "--config", SMOKE, "--workdir", workdir, *overrides])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err
    # The step's guards kept the state of the last finite step, also in the dispatches that
    # ran after the NaN before the loop looked.
    assert int(states[-1].step) == bad
    assert all(np.isfinite(p).all() for p in jax.tree.leaves(states[-1].params))
    assert f"non-finite loss or gradient at step {bad} (loss=nan" in err[0]
    assert (f"newest checkpoint (step {kept[-1]})" if kept else "no checkpoint") in err[0]
    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        assert checkpointer.all_steps() == kept          # nothing saved past the NaN
    finally:
        checkpointer.close()
    assert not os.path.exists(os.path.join(workdir, "results.json"))
    assert all(r["step"] <= bad for r in read_metrics(workdir))
    if kept:
        assert all(np.isfinite(p).all() for p in _params(workdir))
    # The same command without the NaN resumes from the last finite checkpoint and finishes
    # exactly as a run that never met one.
    monkeypatch.undo()
    config = load_config(SMOKE, overrides)
    resumed = loop.train_and_evaluate(config, workdir)
    clean = loop.train_and_evaluate(config, str(tmp_path / "clean"))
    assert resumed["final"] == clean["final"]
    for a, b in zip(_params(workdir), _params(str(tmp_path / "clean")), strict=True):
        np.testing.assert_array_equal(a, b)


def test_resume_after_a_torn_metrics_line(finished, tmp_path):
    """SIGKILL while a metrics row is written leaves half a line: the resumed run drops it and
    its log is the uninterrupted one."""
    full_dir, full = finished
    workdir = str(tmp_path / "torn")

    _interrupted_run(workdir)   # saves the checkpoints of steps 4 and 6
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write('{"step": 8, "epoch": 0.8, "split": "tra')
    resumed = loop.train_and_evaluate(load_config(SMOKE), workdir)
    assert resumed["final"] == full["final"]
    assert _comparable(read_metrics(workdir)) == _comparable(read_metrics(full_dir))
    results = json.loads(open(os.path.join(workdir, "results.json")).read())
    assert results["final"] == full["final"]
    assert sorted(os.listdir(workdir)) == [   # no temporary left
        "checkpoints", "class_names.txt", "config.json", "metrics.jsonl", "preprocessing.json",
        "results.json", "tb"]


def _truncate_data(step_dir):
    for root, _, names in os.walk(os.path.join(step_dir, "state")):
        for name in names:
            if os.path.basename(root) == "d":
                path = os.path.join(root, name)
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 2)


def _delete_metadata(step_dir):
    os.remove(os.path.join(step_dir, "state", "_METADATA"))


@pytest.mark.parametrize("tear", [_truncate_data, _delete_metadata])
def test_unreadable_newest_checkpoint_the_run_goes_past_it_and_finishes(finished, tmp_path,
                                                                        capfd, monkeypatch,
                                                                        tear):
    """The same command twice after the newest checkpoint was torn: eval falls back quietly,
    training sets the step aside, resumes from the one before, saves that step again and
    finishes exactly as the uninterrupted run."""
    full_dir, full = finished
    workdir = str(tmp_path / "w")

    _interrupted_run(workdir)   # saves the checkpoints of steps 4 and 5
    ckdir = os.path.join(workdir, "checkpoints")
    tear(os.path.join(ckdir, "5"))
    capfd.readouterr()
    # The failed read's leftovers reach sys.unraisablehook (pytest would swallow them).
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    assert cli.main(["eval", "--workdir", workdir, "--json"]) == 0
    time.sleep(0.5)
    gc.collect()
    assert not unraisable, [str(u.exc_value)[:200] for u in unraisable[:3]]
    out, err = capfd.readouterr()
    assert json.loads(out.strip().splitlines()[-1])["step"] == 4
    assert "Traceback" not in err and "Event loop is closed" not in err, err[:2000]
    # Every load falls back the same way (export and eval --data took the newest step
    # explicitly and ended in a RuntimeError traceback).
    from PIL import Image
    for i in range(10):
        folder = tmp_path / "images" / f"class_{i}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), 25 * i, np.uint8)).save(folder / f"{i}.png")
    assert cli.main(["eval", "--workdir", workdir, "--data", str(tmp_path / "images"),
                     "--json"]) == 0
    out, err = capfd.readouterr()
    assert (json.loads(out.strip().splitlines()[-1])["step"], "Traceback" in err) == (4, False)
    assert cli.main(["export", "--workdir", workdir, "--out", str(tmp_path / "m")]) == 0
    out, err = capfd.readouterr()
    assert "step 4" in out and "Traceback" not in err, out + err
    assert loop.load_trained(workdir)[0] is not None
    assert sorted(os.listdir(ckdir)) == ["4", "5"]                     # eval moves nothing
    for _ in range(2):   # the second run finds a complete workdir: nothing else to set aside
        resumed = loop.train_and_evaluate(load_config(SMOKE), workdir)
        assert resumed["final"] == full["final"]
    assert "5.unreadable" in os.listdir(ckdir) and "8" in os.listdir(ckdir)
    for a, b in zip(_params(full_dir), _params(workdir), strict=True):
        np.testing.assert_array_equal(a, b)
    assert _comparable(read_metrics(workdir)) == _comparable(read_metrics(full_dir))
    _, err = capfd.readouterr()
    assert "Traceback" not in err, err[:2000]


def test_rerun_of_a_finished_run_adds_no_event_file(finished, tmp_path):
    import shutil
    workdir = str(tmp_path / "copy")
    shutil.copytree(finished[0], workdir)
    before = sorted(os.listdir(os.path.join(workdir, "tb")))
    loop.train_and_evaluate(load_config(SMOKE), workdir)
    assert sorted(os.listdir(os.path.join(workdir, "tb"))) == before


def _fail_the_save_of(monkeypatch, bad_step):
    """A full disk when the checkpoint of `bad_step` is committed (its files written, the
    commit file and rename to come: nothing of it is still being written when the error
    surfaces, as when a process exits); every other save works."""
    from orbax.checkpoint._src.path import atomicity
    real = atomicity.AtomicRenameTemporaryPath.finalize

    async def disk_full(self, *args, **kwargs):
        if self.get().name.startswith(f"{bad_step}.orbax-checkpoint-tmp"):
            raise OSError(28, "No space left on device")
        return await real(self, *args, **kwargs)
    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", disk_full)


def test_a_failed_save_is_one_line_and_the_rerun_ends_as_an_uninterrupted_run(
        finished, tmp_path, monkeypatch, capsys):
    """A full disk during the save of the last step (8): one line naming that step and the
    checkpoint a rerun resumes from (it was "near step 4611686018427387904", with a
    traceback), exit code 4, and no results.json (the run is not complete); the same command
    again ends exactly as the uninterrupted run."""
    full_dir, full = finished
    workdir = str(tmp_path / "w")
    _fail_the_save_of(monkeypatch, 8)
    rc = cli.main(["train", "--config", SMOKE, "--workdir", workdir])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 4 and len(err) == 1, err
    assert err[0].startswith("resnet-jax train: error: saving the checkpoint of step 8 in ")
    assert "No space left on device" in err[0] and "step 4, reads back" in err[0]
    assert not os.path.exists(os.path.join(workdir, "results.json"))
    assert not [n for n in os.listdir(workdir) if n.startswith("lease.")]  # given back
    monkeypatch.undo()
    resumed = loop.train_and_evaluate(load_config(SMOKE), workdir)
    assert resumed["final"] == full["final"] and resumed["best"] == full["best"]
    for a, b in zip(_params(full_dir), _params(workdir), strict=True):
        np.testing.assert_array_equal(a, b)
    assert _comparable(read_metrics(workdir)) == _comparable(read_metrics(full_dir))


def test_a_run_that_loses_its_lease_stops_before_writing_again(finished, tmp_path,
                                                               monkeypatch):
    """Another run took the workdir over (this one stalled past its lease's expiry): this run
    stops at its next boundary without saving or logging, exit code 3, and leaves the other's
    lease alone. When the other is gone, the same command ends as the uninterrupted run."""
    from resnet_jax.train import lease as lease_lib
    full_dir, full = finished
    workdir = str(tmp_path / "w")
    monkeypatch.setattr(lease_lib, "HEARTBEAT_S", 0.02)

    def taken_over(step):  # what a run that takes an expired lease over does
        if step == 4:
            mine = max(int(n.split(".")[1]) for n in os.listdir(workdir)
                       if n.startswith("lease."))
            with open(os.path.join(workdir, f"lease.{mine + 1}.json"), "w") as f:
                json.dump({"host": "elsewhere", "pid": 7, "since": time.time(),
                           "renewed": time.time(), "heartbeat_s": 10, "ttl_s": 60,
                           "token": "t"}, f)
            os.remove(os.path.join(workdir, f"lease.{mine}.json"))
            time.sleep(0.5)  # a few heartbeats: the lease finds out
    with pytest.raises(lease_lib.LeaseLostError, match="taken over by host elsewhere, pid 7"):
        loop.train_and_evaluate(load_config(SMOKE), workdir, on_step=taken_over)
    assert cli.exit_code(lease_lib.LeaseLostError("x")) == 3
    assert max(r["step"] for r in read_metrics(workdir)) == 4
    checkpoints = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        assert checkpoints.all_steps() == [4]
    finally:
        checkpoints.close()
    assert sorted(n for n in os.listdir(workdir) if n.startswith("lease.")) == ["lease.1.json"]
    os.remove(os.path.join(workdir, "lease.1.json"))  # the other run ended
    resumed = loop.train_and_evaluate(load_config(SMOKE), workdir)
    assert resumed["final"] == full["final"]
    for a, b in zip(_params(full_dir), _params(workdir), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_non_finite_evaluation_is_never_the_best(tmp_path, monkeypatch, replicas):
    """An evaluation with a NaN loss (labels the model does not know) and the lowest top-1
    error of the run: results.json's best and the best checkpoint are the best finite one
    (with 2 replicas, replica 1's evaluation at step 4: replica 1's best)."""
    from resnet_jax.train import run as run_lib
    real, bad = run_lib.evaluate_all, replicas - 1

    def nan_at_4(run, state, eval_fn=None):
        summaries = real(run, state, eval_fn)
        if int(np.ravel(jax.device_get(state.step))[0]) == 4:
            summaries[bad] = dict(summaries[bad], loss=float("nan"), top1_error=0.0)
        return summaries
    monkeypatch.setattr(run_lib, "evaluate_all", nan_at_4)
    config = load_config(f"{SMOKE}:replicas={replicas}", ["--config.train.eval_every_steps=2",
                                                          "--config.train.keep_checkpoints=1"])
    workdir = str(tmp_path / "w")
    results = loop.train_and_evaluate(config, workdir)
    rows = [r for r in read_metrics(workdir) if r["split"] == "val"]
    bests = []
    for i in range(replicas):
        val = [r for r in rows if r.get("replica", 0) == i]
        assert [r["step"] for r in val] == [2, 4, 6, 8]
        assert (val[1]["loss"] is None) == (i == bad)
        bests.append(min((r for r in val if r["loss"] is not None),
                         key=lambda r: r["top1_error"])["step"])
    on_disk = json.loads(open(os.path.join(workdir, "results.json")).read())
    for got in (results, on_disk):
        each = [got["best"]] if replicas == 1 else [r["best"] for r in got["replicas"]]
        assert [b["step"] for b in each] == bests and bests[bad] != 4
    monkeypatch.undo()
    from resnet_jax.interop import workdir as workdir_lib
    assert workdir_lib.checkpoint_step(workdir, "best", None if replicas == 1 else bad) == \
        bests[bad]
    checkpoints = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
    try:  # the newest one, and the ones orbax keeps as the best by their metric
        assert checkpoints.all_steps() == sorted({*bests, 8})
    finally:
        checkpoints.close()


class _SlowStream:
    """The run's in-memory pipeline read through a slow generator, which `close()` closes, as
    the streaming pipeline reads and closes its stream: what the shutdown must not race."""

    def __init__(self, inner, delay_s):
        self.inner, self.delay_s = inner, delay_s  # delay_s(step): seconds to read it
        self._stream, self._next = None, None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _steps(self, step):
        while True:
            time.sleep(self.delay_s(step))
            yield self.inner.train_chunk(step, 1)
            step += 1

    def train_chunk(self, step, k):
        if self._stream is None or step != self._next:
            self.close()
            self._stream = self._steps(step)
        parts = [next(self._stream) for _ in range(k)]
        self._next = step + k
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

    def close(self):
        if self._stream is not None:
            self._stream.close()  # "generator already executing" if the producer is inside
            self._stream = None


def _slow_source(monkeypatch, delay_s=lambda step: 0.3):
    import resnet_jax.data as data_lib
    real = data_lib.make_pipeline
    monkeypatch.setattr(data_lib, "make_pipeline",
                        lambda *a, **kw: _SlowStream(real(*a, **kw), delay_s))


def test_a_nan_stop_with_a_slow_source_reports_its_own_error(tmp_path, monkeypatch, capsys):
    """The producer thread is inside the source's next() when a NaN stops the run: it is
    stopped and joined before the source closes, so the run ends with the NaN's line (it
    ended with "generator already executing", exit code 2)."""
    _slow_source(monkeypatch)
    _poison_step(monkeypatch, 3)
    rc = cli.main(["train", "--config", SMOKE, "--workdir", str(tmp_path / "w"), *NAN_RUN,
                   "--config.train.steps_per_dispatch=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "non-finite loss or gradient at step 3" in err[0], err


def test_a_preempted_run_with_a_slow_source_exits_0_and_resumes_bitwise(finished, tmp_path,
                                                                        monkeypatch, capsys):
    """The producer thread is inside the source's slow read of step 6 while the run saves
    step 5 and stops: it is joined before the source closes, so the run exits 0 (it exited 2
    with "generator already executing", and a sweep recorded it as failed)."""
    full_dir, full = finished
    workdir = str(tmp_path / "w")
    _slow_source(monkeypatch, lambda step: 3.0 if step >= 6 else 0.05)
    from resnet_jax.train import feed
    real_chunk = feed.Chunk

    def chunk(step, size, data):  # SIGTERM while the chunk of step 4 is made
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_chunk(step, size, data)
    monkeypatch.setattr(feed, "Chunk", chunk)
    assert cli.main(["train", "--config", SMOKE, "--workdir", workdir]) == 0
    out, err = capsys.readouterr()
    assert "preempted (SIGTERM): saved the checkpoint" in out and err.strip() == "", err
    monkeypatch.undo()
    resumed = loop.train_and_evaluate(load_config(SMOKE), workdir)
    assert resumed["final"] == full["final"]
    for a, b in zip(_params(full_dir), _params(workdir), strict=True):
        np.testing.assert_array_equal(a, b)
    assert _comparable(read_metrics(workdir)) == _comparable(read_metrics(full_dir))


def test_eval_and_export_leave_a_save_in_progress_alone(finished, tmp_path, capsys):
    """Readers of a workdir whose run is saving right now: each opened the checkpoints as a
    writer, and orbax's cleanup of unfinished saves deleted the run's save in progress."""
    import shutil
    workdir = str(tmp_path / "copy")
    shutil.copytree(finished[0], workdir)
    in_progress = os.path.join(workdir, "checkpoints", "9.orbax-checkpoint-tmp")
    os.makedirs(os.path.join(in_progress, "state"))   # what orbax names a save under way
    assert loop.load_trained(workdir)[0] is not None
    assert cli.main(["eval", "--workdir", workdir, "--json"]) == 0
    assert cli.main(["export", "--workdir", workdir, "--out", str(tmp_path / "m")]) == 0
    capsys.readouterr()
    assert os.path.isdir(os.path.join(in_progress, "state"))

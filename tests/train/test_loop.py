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


def _interrupted_run(workdir):
    """The smoke run stopped by a real SIGTERM sent after step 4: the next CPU dispatch (steps
    4, 5) stops after its first step and saves step 5 (4 is a checkpoint step too)."""
    def preempt(step):
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)
    return loop.train_and_evaluate(load_config(SMOKE), workdir, on_step=preempt)


def test_sigterm_then_resume_is_bitwise_identical(finished, tmp_path):
    full_dir, full = finished
    workdir = str(tmp_path / "interrupted")

    first = _interrupted_run(workdir)
    assert first == {"preempted": True, "step": 5}  # the CPU dispatch 4..6 stops after 4
    assert not os.path.exists(os.path.join(workdir, "results.json"))
    second = loop.train_and_evaluate(load_config(SMOKE), workdir)
    assert second["final"] == full["final"] and second["best"] == full["best"]
    for a, b in zip(_params(full_dir), _params(workdir)):
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
    for i, (image, label) in enumerate(zip(*pipeline.eval_arrays)):
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
    """Make the real train step meet a NaN at `bad_step`: its params are NaN for that one
    update, so the loss is NaN and the step's own guard must keep the state it was given."""
    import jax.numpy as jnp

    from resnet_jax.train import dispatch
    real = dispatch.train_step

    def poisoned(state, batch, rng, **kw):
        bad = state.step == bad_step
        params = jax.tree.map(lambda p: jnp.where(bad, jnp.nan, p), state.params)
        new, metrics = real(state.replace(params=params), batch, rng, **kw)
        kept = jax.tree.map(lambda a, b: jnp.where(metrics["finite"], a, b), new, state)
        return kept, metrics

    monkeypatch.setattr(dispatch, "train_step", poisoned)


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
    rc = cli.main(["train", "--config", SMOKE, "--workdir", workdir, *overrides])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err
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
    for a, b in zip(_params(workdir), _params(str(tmp_path / "clean"))):
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
    assert sorted(os.listdir(ckdir)) == ["4", "5"]                     # eval moves nothing
    for _ in range(2):   # the second run finds a complete workdir: nothing else to set aside
        resumed = loop.train_and_evaluate(load_config(SMOKE), workdir)
        assert resumed["final"] == full["final"]
    assert "5.unreadable" in os.listdir(ckdir) and "8" in os.listdir(ckdir)
    for a, b in zip(_params(full_dir), _params(workdir)):
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

"""Runs stopped and resumed (tiny smoke model, 8 fake CPU devices): SIGTERM or Ctrl-C, a torn
metrics line, a torn newest checkpoint, a full disk during a save, a lease taken over, a
preemption while the source is inside a slow read; each resumed run ends bitwise as the
uninterrupted one (`finished`, tests/train/conftest.py)."""
import gc
import json
import os
import signal
import sys
import time

import numpy as np
import pytest

from resnet_jax import cli
from resnet_jax.config import load_config
from resnet_jax.train import checkpoint as ckpt_lib
from resnet_jax.train import loop
from resnet_jax.train.logging import read_metrics


@pytest.mark.parametrize("signum, said", [(signal.SIGTERM, "preempted (SIGTERM)"),
                                           (signal.SIGINT, "interrupted (Ctrl-C)"),
                                           (signal.SIGHUP, "terminal closed (SIGHUP)")])
def test_sigterm_or_ctrl_c_then_resume_is_bitwise_identical(helpers, finished, tmp_path, capsys,
                                                            signum, said):
    """A first Ctrl-C saves and stops as a preemption does (it raised KeyboardInterrupt,
    losing everything since the last periodic checkpoint); so does a closed terminal (SIGHUP
    killed the run, unsaved).

    Slow: a stopped run and its resume.
    """
    full_dir, full = finished
    workdir = str(tmp_path / "interrupted")

    first = helpers.interrupted_run(workdir, signum)
    assert first == {"preempted": True, "step": 5}  # the CPU dispatch 4..6 stops after 4
    assert f"{said}: saved the checkpoint of step 5" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    assert not os.path.exists(os.path.join(workdir, "results.json"))
    second = loop.train_and_evaluate(load_config(helpers.SMOKE), workdir)
    assert second["final"] == full["final"] and second["best"] == full["best"]
    for a, b in zip(helpers.params(full_dir), helpers.params(workdir), strict=True):
        np.testing.assert_array_equal(a, b)
    # The resumed run's log is the uninterrupted one: no step twice, none missing.
    assert helpers.rows(workdir) == helpers.rows(full_dir)


def test_a_dropout_shortcut_run_stopped_and_resumed_is_bitwise(helpers, finished, tmp_path):
    """The dropout shortcut (He et al. 2016) draws its masks from the step's key: a run stopped
    by SIGTERM and resumed ends bitwise as the uninterrupted one, and the masks do act in
    training (the run is not the identity-shortcut run).

    Slow: a dropout-shortcut model compiled, run once whole, once stopped and resumed."""
    change = ["--config.model.shortcut_variant=dropout"]
    whole, stopped = str(tmp_path / "whole"), str(tmp_path / "stopped")
    full = loop.train_and_evaluate(load_config(helpers.SMOKE, change), whole)
    assert helpers.interrupted_run(stopped, overrides=change) == {"preempted": True, "step": 5}
    second = loop.train_and_evaluate(load_config(helpers.SMOKE, change), stopped)
    assert second["final"] == full["final"]
    for a, b in zip(helpers.params(whole), helpers.params(stopped), strict=True):
        np.testing.assert_array_equal(a, b)
    assert helpers.rows(stopped) == helpers.rows(whole)
    identity = helpers.params(finished[0])
    assert any(not np.array_equal(a, b) for a, b in zip(identity, helpers.params(whole),
                                                         strict=True))


def test_resume_after_a_torn_metrics_line(helpers, finished, tmp_path):
    """SIGKILL while a metrics row is written leaves half a line: the resumed run drops it and
    its log is the uninterrupted one.

    Slow: a stopped run and its resume.
    """
    full_dir, full = finished
    workdir = str(tmp_path / "torn")

    helpers.interrupted_run(workdir)   # saves the checkpoints of steps 4 and 6
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write('{"step": 8, "epoch": 0.8, "split": "tra')
    resumed = loop.train_and_evaluate(load_config(helpers.SMOKE), workdir)
    assert resumed["final"] == full["final"]
    assert helpers.rows(workdir) == helpers.rows(full_dir)
    results = json.loads(open(os.path.join(workdir, "results.json")).read())
    assert results["final"] == full["final"]
    assert sorted(os.listdir(workdir)) == [   # no temporary left; the lease given back
        "checkpoints", "class_names.txt", "config.json", "data.json", "lease.1.json",
        "metrics.jsonl", "preprocessing.json", "results.json", "tb"]
    assert json.loads(open(os.path.join(workdir, "lease.1.json")).read())["released"]


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
def test_unreadable_newest_checkpoint_the_run_goes_past_it_and_finishes(
        helpers, finished, tmp_path, capfd, monkeypatch, tear):
    """The same command twice after the newest checkpoint was torn: eval falls back quietly,
    training sets the step aside, resumes from the one before, saves that step again and
    finishes exactly as the uninterrupted run.

    Slow: a preempted run, eval and export of it, then two resumed runs.
    """
    full_dir, full = finished
    workdir = str(tmp_path / "w")

    helpers.interrupted_run(workdir)   # saves the checkpoints of steps 4 and 5
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
        resumed = loop.train_and_evaluate(load_config(helpers.SMOKE), workdir)
        assert resumed["final"] == full["final"]
    assert "5.unreadable" in os.listdir(ckdir) and "8" in os.listdir(ckdir)
    for a, b in zip(helpers.params(full_dir), helpers.params(workdir), strict=True):
        np.testing.assert_array_equal(a, b)
    assert helpers.rows(workdir) == helpers.rows(full_dir)
    _, err = capfd.readouterr()
    assert "Traceback" not in err, err[:2000]


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
        helpers, finished, tmp_path, monkeypatch, capsys):
    """A full disk during the save of the last step (8): one line naming that step and the
    checkpoint a rerun resumes from (it was "near step 4611686018427387904", with a
    traceback), exit code 4, and no results.json (the run is not complete); the same command
    again ends exactly as the uninterrupted run.

    Slow: a run that fails its last save and its rerun.
    """
    full_dir, full = finished
    workdir = str(tmp_path / "w")
    _fail_the_save_of(monkeypatch, 8)
    rc = cli.main(["train", "--config", helpers.SMOKE, "--workdir", workdir])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 4 and len(err) == 1, err
    assert err[0].startswith("resnet-jax train: error: saving the checkpoint of step 8 in ")
    assert "No space left on device" in err[0] and "step 4, reads back" in err[0]
    assert not os.path.exists(os.path.join(workdir, "results.json"))
    leases = [n for n in os.listdir(workdir) if n.startswith("lease.")]
    assert [json.loads(open(os.path.join(workdir, n)).read())["released"] for n in leases] == \
        [True]  # given back
    monkeypatch.undo()
    resumed = loop.train_and_evaluate(load_config(helpers.SMOKE), workdir)
    assert resumed["final"] == full["final"] and resumed["best"] == full["best"]
    for a, b in zip(helpers.params(full_dir), helpers.params(workdir), strict=True):
        np.testing.assert_array_equal(a, b)
    assert helpers.rows(workdir) == helpers.rows(full_dir)


def test_a_run_that_loses_its_lease_stops_before_writing_again(helpers, finished, tmp_path,
                                                               monkeypatch):
    """Another run took the workdir over (this one stalled past its lease's expiry, and no
    heartbeat ran since to tell it): this run stops at its next boundary without saving or
    logging, exit code 3, and leaves the other's lease alone. When the other is gone, the
    same command ends as the uninterrupted run.

    Slow: a run that loses its lease and its rerun.
    """
    from resnet_jax.train import lease as lease_lib
    full_dir, full = finished
    workdir = str(tmp_path / "w")
    monkeypatch.setattr(lease_lib, "HEARTBEAT_S", 3600.0)

    def taken_over(step):  # what a run that takes an expired lease over does
        if step == 4:
            mine = max(int(n.split(".")[1]) for n in os.listdir(workdir)
                       if n.startswith("lease."))
            with open(os.path.join(workdir, f"lease.{mine + 1}.json"), "w") as f:
                json.dump({"host": "elsewhere", "pid": 7, "since": time.time(),
                           "renewed": time.time(), "heartbeat_s": 10, "ttl_s": 60,
                           "token": "t"}, f)
            os.remove(os.path.join(workdir, f"lease.{mine}.json"))
    with pytest.raises(lease_lib.LeaseLostError, match="taken over by host elsewhere, pid 7"):
        loop.train_and_evaluate(load_config(helpers.SMOKE), workdir, on_step=taken_over)
    assert cli.exit_code(lease_lib.LeaseLostError("x")) == 3
    assert max(r["step"] for r in read_metrics(workdir)) == 4
    checkpoints = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        assert checkpoints.all_steps() == [4]
    finally:
        checkpoints.close()
    assert sorted(n for n in os.listdir(workdir) if n.startswith("lease.")) == ["lease.1.json"]
    os.remove(os.path.join(workdir, "lease.1.json"))  # the other run ended
    resumed = loop.train_and_evaluate(load_config(helpers.SMOKE), workdir)
    assert resumed["final"] == full["final"]
    for a, b in zip(helpers.params(full_dir), helpers.params(workdir), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_preempted_run_with_a_slow_source_exits_0_and_resumes_bitwise(
        helpers, finished, tmp_path, monkeypatch, capsys):
    """The producer thread is inside the source's slow read of step 6 while the run saves
    step 5 and stops: it is joined before the source closes, so the run exits 0 (it exited 2
    with "generator already executing", and a sweep recorded it as failed).

    Slow: the source sleeps 3 s in the read the run stops in (what is tested), then a resumed
    run.
    """
    full_dir, full = finished
    workdir = str(tmp_path / "w")
    helpers.slow_source(monkeypatch, lambda step: 3.0 if step >= 6 else 0.05)
    from resnet_jax.train import feed
    real_chunk = feed.Chunk

    def chunk(step, size, data):  # SIGTERM while the chunk of step 4 is made
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_chunk(step, size, data)
    monkeypatch.setattr(feed, "Chunk", chunk)
    assert cli.main(["train", "--config", helpers.SMOKE, "--workdir", workdir]) == 0
    out, err = capsys.readouterr()
    assert "preempted (SIGTERM): saved the checkpoint" in out and err.strip() == "", err
    monkeypatch.undo()
    resumed = loop.train_and_evaluate(load_config(helpers.SMOKE), workdir)
    assert resumed["final"] == full["final"]
    for a, b in zip(helpers.params(full_dir), helpers.params(workdir), strict=True):
        np.testing.assert_array_equal(a, b)
    assert helpers.rows(workdir) == helpers.rows(full_dir)

"""Runs of several replicas end to end (configs/smoke.py:replicas=2, 8 fake CPU devices):
each replica is the solo run of its seed, a SIGTERM-resumed packed run is bitwise the
uninterrupted one, a replica that turns non-finite is frozen, reported and stays frozen across
a resume while the other trains on, eval / export take --replica, and bad input is one line
with nothing written."""
import json
import os
import shutil
import signal

import jax
import numpy as np
import pytest

from resnet_jax import cli
from resnet_jax.config import load_config
from resnet_jax.train import checkpoint as ckpt_lib
from resnet_jax.train import loop, replicas

PACKED = "configs/smoke.py:replicas=2"



@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """An uninterrupted smoke run of 2 replicas (seeds 0 and 1): (workdir, results)."""
    workdir = str(tmp_path_factory.mktemp("packed"))
    return workdir, loop.train_and_evaluate(load_config(PACKED), workdir)


def test_each_replica_is_the_solo_run_of_its_seed(helpers, packed, finished, tmp_path):
    """Replica i = the run with seed i, bitwise on CPU (whose runs step the replicas one after
    the other: `dispatch.replica_kind`; vmapped, they agree to float32 rounding,
    tests/train/test_replicas.py): the same rows, best and final, and parameters. (The solo
    run of seed 0 is the session's `finished` smoke run.)

    Slow: a whole solo run (seed 1) beside the packed one (fixtures: the packed run, and the
    session's solo run of seed 0).
    """
    workdir, results = packed
    assert [r["seed"] for r in results["replicas"]] == [0, 1]
    seed1_dir = str(tmp_path / "seed1")
    solos = [finished, (seed1_dir, loop.train_and_evaluate(
        load_config("configs/smoke.py", ["--config.seed=1"]), seed1_dir))]
    for i, (solo_dir, solo) in enumerate(solos):
        assert helpers.rows(workdir, i) == helpers.rows(solo_dir)
        for which in ("best", "final"):
            assert results["replicas"][i][which] == solo[which]
        for a, b in zip(helpers.params(workdir, i), helpers.params(solo_dir), strict=True):
            np.testing.assert_array_equal(a, b)
    assert helpers.rows(workdir, 0) != helpers.rows(workdir, 1)
    finals = [r["final"]["top1_error"] for r in results["replicas"]]
    assert results["summary"]["final"]["top1_error"]["mean"] == pytest.approx(np.mean(finals))
    assert results["summary"]["runs"] == 2 and results["params"] == 5006
    assert sorted(os.listdir(os.path.join(workdir, "tb"))) == ["replica_0", "replica_1"]
    on_disk = json.loads(open(os.path.join(workdir, "results.json")).read())
    assert on_disk == json.loads(json.dumps(results))


def _preempted_at_4(config, workdir):
    """A real SIGTERM after step 4: the CPU dispatch 4..6 stops after step 4, saving step 5."""
    def preempt(step):
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)
    return loop.train_and_evaluate(config, workdir, on_step=preempt)


def test_sigterm_then_resume_of_a_packed_run_is_bitwise(helpers, packed, tmp_path):
    full_dir, full = packed
    workdir = str(tmp_path / "w")
    assert _preempted_at_4(load_config(PACKED), workdir) == {"preempted": True, "step": 5}
    resumed = loop.train_and_evaluate(load_config(PACKED), workdir)
    assert resumed["replicas"] == full["replicas"] and resumed["summary"] == full["summary"]
    for i in range(2):
        for a, b in zip(helpers.params(full_dir, i), helpers.params(workdir, i)):
            np.testing.assert_array_equal(a, b)
    assert helpers.rows(workdir) == helpers.rows(full_dir)


def test_a_non_finite_replica_is_frozen_reported_and_stays_frozen_across_a_resume(
        helpers, packed, tmp_path, monkeypatch, capsys):
    """Replica 1 meets a NaN at step 3: it is frozen there (reported, no more rows, no final),
    replica 0 trains exactly as in a clean run, and a run preempted after the NaN resumes with
    replica 1 still frozen, ending bitwise as the uninterrupted one.

    Slow: three runs of 2 replicas (poisoned, preempted, resumed).
    """
    _, clean = packed
    helpers.poison_step(monkeypatch, 3, seeds=[1])
    full_dir, workdir = str(tmp_path / "full"), str(tmp_path / "resumed")
    full = loop.train_and_evaluate(load_config(PACKED), full_dir)
    out = capsys.readouterr().out
    assert "replica 1 (seed 1): non-finite loss or gradient at step 3 (loss=nan" in out
    assert full["replicas"][0] == clean["replicas"][0]
    assert full["replicas"][1] == {"seed": 1, "best": None, "final": None,
                                   "non_finite_step": 3}
    assert (full["summary"]["runs"], full["summary"]["replicas"]) == (1, 2)
    assert [(r["step"], r["split"]) for r in helpers.rows(full_dir, 1)] == [(2, "train"),
                                                                     (4, "train")]
    assert helpers.rows(full_dir, 0) == helpers.rows(packed[0], 0)
    frozen = helpers.params(full_dir, 1)
    assert all(np.isfinite(p).all() for p in frozen)

    assert _preempted_at_4(load_config(PACKED), workdir) == {"preempted": True, "step": 5}
    checkpoints = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        assert checkpoints.read_meta(5)["frozen"] == {"1": 3}
    finally:
        checkpoints.close()
    resumed = loop.train_and_evaluate(load_config(PACKED), workdir)
    assert resumed["replicas"] == full["replicas"]
    for i in range(2):
        for a, b in zip(helpers.params(full_dir, i), helpers.params(workdir, i)):
            np.testing.assert_array_equal(a, b)
    assert helpers.rows(workdir) == helpers.rows(full_dir)


def test_every_replica_non_finite_stops_the_run_with_one_line(helpers, tmp_path, monkeypatch,
                                                              capsys):
    helpers.poison_step(monkeypatch, 3, seeds=[0, 1])
    workdir = str(tmp_path / "w")
    assert cli.main(["train", "--config", PACKED, "--workdir", workdir]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    words = "every replica turned non-finite (replica 0 at step 3, replica 1 at step 3)"
    assert len(err) == 1 and words in err[0], err
    assert not os.path.exists(os.path.join(workdir, "results.json"))


def _tree(path):
    return sorted((os.path.relpath(os.path.join(d, f), path), os.path.getsize(os.path.join(d, f)))
                  for d, _, names in os.walk(path) for f in names)


def test_eval_and_export_take_a_replica(helpers, packed, tmp_path, capsys):
    workdir, results = packed
    for i in range(2):
        assert cli.main(["eval", "--workdir", workdir, "--replica", str(i), "--json"]) == 0
        got = json.loads(capsys.readouterr().out)
        want = results["replicas"][i]["final"]
        assert (got["replica"], got["step"], got["count"]) == (i, 8, 64)
        assert {k: got[k] for k in want if k != "step"} == {k: v for k, v in want.items()
                                                            if k != "step"}
    assert os.path.exists(os.path.join(workdir, "eval", "run-validation-center-replica1.json"))
    best = results["replicas"][1]["best"]
    assert cli.main(["eval", "--workdir", workdir, "--replica", "1", "--checkpoint", "best",
                     "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert (got["step"], got["top1_error"]) == (best["step"], best["top1_error"])

    out = tmp_path / "model"
    assert cli.main(["export", "--workdir", workdir, "--replica", "1", "--out", str(out)]) == 0
    import resnet_jax
    exported = jax.tree.leaves(resnet_jax.load(str(out)).variables)
    for a, b in zip(exported, helpers.params(workdir, 1)):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(exported, helpers.params(workdir, 0)))

    before = _tree(workdir)
    for argv, words in (
            (["eval", "--workdir", workdir], "pass --replica i with i in 0..1"),
            (["eval", "--workdir", workdir, "--replica", "2"], "--replica 2 is out of range"),
            (["export", "--workdir", workdir, "--replica", "-1", "--out", str(tmp_path / "x")],
             "--replica -1 is out of range"),
            (["export", "--workdir", workdir, "--out", str(tmp_path / "x")],
             "pass --replica i")):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert _tree(workdir) == before and not (tmp_path / "x").exists()


def test_a_workdir_of_another_replica_count_is_refused_untouched(packed, tmp_path, capsys):
    """Every file of the run as it was; the workdir's lease (taken to look, then given back)
    is the only file that changed: one, released."""
    workdir = str(tmp_path / "copy")
    shutil.copytree(packed[0], workdir)

    def run_files():
        return [f for f in _tree(workdir) if not f[0].startswith("lease.")]
    before = run_files()
    for spec in ("configs/smoke.py", "configs/smoke.py:replicas=3"):
        assert cli.main(["train", "--config", spec, "--workdir", workdir]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "train.replicas=" in err[0] and "hold 2 replica(s)" in err[0]
    assert run_files() == before
    (lease,) = [n for n in os.listdir(workdir) if n.startswith("lease.")]
    assert json.loads(open(os.path.join(workdir, lease)).read())["released"]


@pytest.mark.parametrize("overrides, words", [
    (["--config.train.replicas=0"], "train.replicas=0 must be a positive integer"),
    (["--config.train.replicas=2", "--config.train.batch_size=12"],
     "train.batch_size=12 (the batch of each of the train.replicas=2 replicas"),
    (["--config.train.replicas=2", "--config.data.pipeline=streaming",
      "--config.data.source=folder", "--config.data.path=/nowhere",
      "--config.data.train_augment=scale", "--config.data.normalize=per_channel"],
     "train.replicas=2 needs data.pipeline='in_memory'"),
])
def test_bad_replica_configs_are_one_line_and_write_nothing(tmp_path, capsys, overrides, words):
    workdir = tmp_path / "w"
    assert cli.main(["train", "--config", "configs/smoke.py", "--workdir", str(workdir),
                     *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not workdir.exists()


def test_replica_seeds_and_count():
    config = load_config(PACKED, ["--config.seed=10"])
    assert replicas.seeds(config) == [10, 11] and replicas.count(config) == 2

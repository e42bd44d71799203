"""Non-finite numbers in a run (tiny smoke model, 8 fake CPU devices): a NaN step stops the run
cleanly with nothing non-finite saved, and the same command resumes to the run that never met
one; a non-finite evaluation is never the best; a NaN stop while the source is inside a slow
read reports the NaN."""
import json
import os

import jax
import numpy as np
import pytest

from resnet_jax import cli
from resnet_jax.config import load_config
from resnet_jax.train import checkpoint as ckpt_lib
from resnet_jax.train import loop
from resnet_jax.train.logging import read_metrics


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


@pytest.mark.parametrize("k, every, bad, kept", [
    (1, 2, 3, [2]),      # a checkpoint boundary (4) comes before the next log (6)
    (2, 2, 3, [2]),      # inside a dispatch of two steps
    (1, 6, 1, []),       # no boundary before the next dispatch: caught one dispatch late
])
def test_nan_stops_cleanly_and_nothing_non_finite_is_saved(helpers, tmp_path, monkeypatch,
                                                           capsys, k, every, bad, kept):
    """Slow: three whole runs (the poisoned one, its resume and a clean one); the first case
    also compiles the poisoned step."""
    overrides = helpers.NAN_RUN + [f"--config.train.steps_per_dispatch={k}",
                           f"--config.train.checkpoint_every_steps={every}"]
    workdir = str(tmp_path / "w")
    helpers.poison_step(monkeypatch, bad)
    states = _record_states(monkeypatch)
    rc = cli.main(["train", "--config", helpers.SMOKE, "--workdir", workdir, *overrides])
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
        assert all(np.isfinite(p).all() for p in helpers.params(workdir))
    # The same command without the NaN resumes from the last finite checkpoint and finishes
    # exactly as a run that never met one.
    monkeypatch.undo()
    config = load_config(helpers.SMOKE, overrides)
    resumed = loop.train_and_evaluate(config, workdir)
    clean = loop.train_and_evaluate(config, str(tmp_path / "clean"))
    assert resumed["final"] == clean["final"]
    for a, b in zip(helpers.params(workdir), helpers.params(str(tmp_path / "clean")), strict=True):
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
    config = load_config(f"configs/smoke.py:replicas={replicas}", [
        "--config.train.eval_every_steps=2", "--config.train.keep_checkpoints=1"])
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


def test_a_nan_stop_with_a_slow_source_reports_its_own_error(helpers, tmp_path, monkeypatch,
                                                            capsys):
    """The producer thread is inside the source's next() when a NaN stops the run: it is
    stopped and joined before the source closes, so the run ends with the NaN's line (it
    ended with "generator already executing", exit code 2)."""
    helpers.slow_source(monkeypatch)
    helpers.poison_step(monkeypatch, 3)
    rc = cli.main(["train", "--config", helpers.SMOKE, "--workdir", str(tmp_path / "w"),
                   *helpers.NAN_RUN, "--config.train.steps_per_dispatch=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "non-finite loss or gradient at step 3" in err[0], err

"""Checkpoints: round trip onto the mesh, retention, fallback past a corrupt newest save,
model mismatch, a failed save that leaves the previous checkpoint restorable, SIGTERM flag."""
import logging
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

from resnet_jax.train import checkpoint as ckpt
from resnet_jax.train import preemption


def _state(value: float):
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    rep = NamedSharding(mesh, jax.P())
    tree = {"step": jnp.asarray(3, jnp.int32),
            "params": {"w": jnp.full((4, 3), value, jnp.float32), "b": jnp.arange(3.0) + value}}
    return jax.device_put(tree, rep)


def _assert_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


META = {"model": {"name": "cifar_resnet8"}}


def test_round_trip_with_rng_and_step(tmp_path):
    c = ckpt.Checkpointer(str(tmp_path / "ck"), keep=2)
    rng = jax.random.PRNGKey(42)
    c.save(5, _state(1.5), rng, META)
    c.wait()
    state, new_rng, step, meta = c.restore_latest(_state(0.0), jax.random.PRNGKey(0))
    assert step == 5 and meta["model"] == META["model"]
    _assert_equal(state, _state(1.5))
    np.testing.assert_array_equal(new_rng, rng)
    assert state["params"]["w"].sharding == _state(0.0)["params"]["w"].sharding
    typed = jax.random.key(7)
    c.save(6, _state(2.0), typed, META)
    c.wait()
    _, back, _, _ = c.restore_latest(_state(0.0), jax.random.key(0))
    np.testing.assert_array_equal(jax.random.key_data(back), jax.random.key_data(typed))
    c.close()


def test_relative_directory_saves_and_restores(tmp_path, monkeypatch):
    """`--workdir runs/x`: orbax itself refuses relative paths, in its background thread."""
    monkeypatch.chdir(tmp_path)
    c = ckpt.Checkpointer(os.path.join("runs", "ck"), keep=2)
    c.save(1, _state(0.5), jax.random.PRNGKey(1), META)
    c.wait()
    state, _, step, _ = c.restore_latest(_state(0.0), jax.random.PRNGKey(0))
    c.close()
    assert step == 1 and os.path.isdir(tmp_path / "runs" / "ck" / "1")
    _assert_equal(state, _state(0.5))


def test_empty_directory_restores_none(tmp_path):
    c = ckpt.Checkpointer(str(tmp_path / "ck"))
    assert c.restore_latest(_state(0.0), jax.random.PRNGKey(0)) is None


def test_keeps_last_k_plus_best(tmp_path):
    c = ckpt.Checkpointer(str(tmp_path / "ck"), keep=2)
    errors = {1: 50.0, 2: 10.0, 3: 40.0, 4: 30.0, 5: 35.0}
    for step, err in errors.items():
        c.save(step, _state(step), jax.random.PRNGKey(0), META, metrics={"top1_error": err})
        c.wait()
    assert c.all_steps() == [2, 4, 5]  # last two + the best (step 2)
    c.close()


def _truncate_step(directory, step):
    for root, _, files in os.walk(os.path.join(directory, str(step), "state")):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)


def _saved(directory, steps=(1, 2)):
    c = ckpt.Checkpointer(directory, keep=3)
    for step in steps:
        c.save(step, _state(float(step)), jax.random.PRNGKey(step), META)
        c.wait()
    c.close()


def test_unreadable_newest_is_set_aside_and_the_step_can_be_saved_again(tmp_path, caplog):
    tear = _truncate_step
    directory = str(tmp_path / "ck")
    _saved(directory)
    tear(directory, 2)
    c = ckpt.Checkpointer(directory, keep=3)
    with caplog.at_level(logging.WARNING):
        state, rng, step, _ = c.restore_latest(_state(0.0), jax.random.PRNGKey(0))
    assert step == 1
    _assert_equal(state, _state(1.0))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "step 2" in warnings[0] and "2.unreadable" in warnings[0] and "step 1" in warnings[0]
    assert sorted(os.listdir(directory)) == ["1", "2.unreadable"]   # kept, never deleted
    assert c.all_steps() == [1]
    # What used to fail on every rerun (StepAlreadyExistsError): saving that step again.
    c.save(2, _state(2.5), jax.random.PRNGKey(2), META)
    c.wait()
    assert c.restore_latest(_state(0.0), jax.random.PRNGKey(0)).step == 2
    c.close()
    # A second tear of the same step is set aside beside the first.
    tear(directory, 2)
    c = ckpt.Checkpointer(directory, keep=3)
    assert c.restore_latest(_state(0.0), jax.random.PRNGKey(0)).step == 1
    assert sorted(os.listdir(directory)) == ["1", "2.unreadable", "2.unreadable.2"]
    c.close()


def test_read_only_fallback_changes_nothing(tmp_path, caplog):
    directory = str(tmp_path / "ck")
    _saved(directory)
    _truncate_step(directory, 2)
    c = ckpt.Checkpointer(directory, keep=3)
    with caplog.at_level(logging.WARNING):
        assert c.restore_latest(_state(0.0), jax.random.PRNGKey(0), set_aside=False).step == 1
    assert "using step 1" in caplog.text
    assert sorted(os.listdir(directory)) == ["1", "2"]


def test_no_readable_checkpoint_is_an_error_and_moves_nothing(tmp_path):
    directory = str(tmp_path / "ck")
    _saved(directory)
    for step in (1, 2):
        _truncate_step(directory, step)
    c = ckpt.Checkpointer(directory, keep=3)
    with pytest.raises(RuntimeError, match="no readable checkpoint.*2: .*1: "):
        c.restore_latest(_state(0.0), jax.random.PRNGKey(0))
    assert sorted(os.listdir(directory)) == ["1", "2"]


def test_model_mismatch_is_a_clear_error(tmp_path):
    c = ckpt.Checkpointer(str(tmp_path / "ck"))
    c.save(1, _state(1.0), jax.random.PRNGKey(0), META)
    c.wait()
    check = ckpt.check_same_model({"name": "cifar_resnet20"})
    with pytest.raises(ckpt.CheckpointMismatchError, match="cifar_resnet8.*cifar_resnet20"):
        c.restore_latest(_state(0.0), jax.random.PRNGKey(0), check_meta=check)
    # A key newer than the checkpoint counts as its older implicit value, and only that.
    older = {"name": "cifar_resnet8", "scan_blocks": False}
    assert c.restore_latest(_state(0.0), jax.random.PRNGKey(0), check_meta=ckpt.check_same_model(
        older, added={"scan_blocks": False})).step == 1
    assert c.restore_latest(_state(0.0), jax.random.PRNGKey(0), check_meta=ckpt.check_same_model(
        {"name": "cifar_resnet8"}, added={"scan_blocks": False})).step == 1  # both older
    with pytest.raises(ckpt.CheckpointMismatchError):
        c.restore_latest(_state(0.0), jax.random.PRNGKey(0), check_meta=ckpt.check_same_model(
            {**older, "scan_blocks": True}, added={"scan_blocks": False}))


@pytest.mark.parametrize("recipe", ["configs/cifar10.py:depth=110",
                                    "configs/imagenet_paper.py:depth=50"])
def test_checkpoints_older_than_the_variants_are_the_default_variant(recipe):
    """A checkpoint's meta written before `block` and the unit/shortcut variants existed is
    the post-activation, identity-shortcut net of its family's block; nothing else."""
    from resnet_jax import config as cfg
    from resnet_jax import schema
    from resnet_jax.train import run as run_lib
    meta = run_lib.model_meta(cfg.load_config(recipe), 10, (32, 32, 3))
    older = {k: v for k, v in meta.items() if k not in ("block", *schema.VARIANT_DEFAULTS)}
    run_lib.check_model(meta)({"model": older, "step": 1})
    for change in (["--config.model.unit=preact"], ["--config.model.shortcut_variant=dropout"]):
        other = run_lib.model_meta(cfg.load_config(recipe, change), 10, (32, 32, 3))
        with pytest.raises(ckpt.CheckpointMismatchError):
            run_lib.check_model(other)({"model": older, "step": 1})


def _failing_save(c, step):
    """Saves `step` and waits: the CheckpointSaveError, from whichever of the two raised."""
    with pytest.raises(ckpt.CheckpointSaveError) as raised:
        c.save(step, _state(float(step)), jax.random.PRNGKey(step), META)
        c.wait()
    return str(raised.value)


def test_failed_save_names_its_step_and_claims_only_what_reads_back(tmp_path, monkeypatch):
    """A failed (async) save's message names the step that failed (it said "near step
    4611686018427387904" when the failure surfaced in `wait`) and calls an earlier checkpoint
    good only when it reads back (it called a step "intact" whose directory was empty)."""
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as jh
    directory = str(tmp_path / "ck")
    c = ckpt.Checkpointer(directory, keep=5)
    c.save(1, _state(1.0), jax.random.PRNGKey(1), META)
    c.wait()

    async def disk_full(self, x, directory):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(jh.JsonCheckpointHandler, "_save_fn", disk_full)
    message = _failing_save(c, 2)
    assert "\n" not in message and "4611686018427387904" not in message
    assert "checkpoint of step 2" in message and "No space left on device" in message
    assert "step 1, reads back" in message
    # The earlier checkpoint's files gone too: the message must not call it good.
    os.remove(os.path.join(directory, "1", "meta", "metadata"))
    message = _failing_save(c, 3)
    assert "checkpoint of step 3" in message and "step 1" not in message
    assert "no earlier checkpoint reads back" in message


def test_failed_save_keeps_previous_restorable(tmp_path, monkeypatch):
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as jh
    directory = str(tmp_path / "ck")
    c = ckpt.Checkpointer(directory, keep=1)
    c.save(1, _state(1.0), jax.random.PRNGKey(1), META)
    c.wait()

    async def disk_full(self, x, directory):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(jh.JsonCheckpointHandler, "_save_fn", disk_full)
    assert "step 1, reads back" in _failing_save(c, 2)
    monkeypatch.undo()
    fresh = ckpt.Checkpointer(directory, keep=1)
    assert fresh.all_steps() == [1]
    state, _, step, _ = fresh.restore_latest(_state(0.0), jax.random.PRNGKey(0))
    assert step == 1
    _assert_equal(state, _state(1.0))


def test_sigterm_sets_the_stop_flag():
    with preemption.PreemptionWatcher() as watcher:
        assert not watcher.should_stop(0)
        os.kill(os.getpid(), signal.SIGTERM)
        assert watcher.should_stop(1)
    assert signal.getsignal(signal.SIGTERM) is not watcher._handle


def test_failed_read_leftovers_are_silenced_other_unraisables_are_not(tmp_path, monkeypatch):
    """TensorStore's late failures after a failed restore reach sys.unraisablehook (seen: 693
    and 2,534 lines of tracebacks in 2 of 5 evals); only those are dropped."""
    import sys
    import types
    directory = str(tmp_path / "ck")
    _saved(directory)
    _truncate_step(directory, 2)
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    c = ckpt.Checkpointer(directory, keep=3)
    assert c.restore_latest(_state(0.0), jax.random.PRNGKey(0), set_aside=False).step == 1

    def raise_unraisable(err):
        sys.unraisablehook(types.SimpleNamespace(exc_type=type(err), exc_value=err,
                                                 exc_traceback=None, err_msg=None, object=None))

    raise_unraisable(RuntimeError("Event loop is closed"))
    raise_unraisable(Exception("Encountered error while reading array index: (slice(0, 3))"))
    assert seen == []
    other = RuntimeError("something else")
    raise_unraisable(other)
    assert [u.exc_value for u in seen] == [other]


def test_orphaned_read_tasks_of_a_failed_restore_are_not_logged_other_tasks_are(tmp_path,
                                                                                  caplog):
    """A torn gs:// checkpoint, set aside with one line, was followed in the console by
    asyncio's "Task exception was never retrieved" for orbax's other reads of it (each with a
    tensorstore traceback of thousands of characters), whenever their tasks were collected."""
    import asyncio
    import gc

    ckpt.Checkpointer(str(tmp_path / "ck"), keep=3)  # what every run makes first

    async def async_deserialize():  # the name of orbax's read coroutine
        raise ValueError("OUT_OF_RANGE: Error opening \"zarr\" driver: Error reading ...")

    async def train_something():
        raise ValueError("a bug of ours")

    def orphan(coroutine):
        loop = asyncio.new_event_loop()
        task = loop.create_task(coroutine())
        loop.run_until_complete(asyncio.wait([task]))  # done; its exception never retrieved
        loop.close()
        del task
        gc.collect()

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        orphan(async_deserialize)
        assert not [r for r in caplog.records if r.name == "asyncio"]
        orphan(train_something)
    logged = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert len(logged) == 1 and "train_something" in logged[0], logged


def test_gs_directory_without_google_cloud_storage_is_refused_at_once(monkeypatch):
    """orbax needs google-cloud-storage to list a gs:// directory's steps, only once there are
    some: without it, a run would train, save, and fail to resume. Refused before anything."""
    import sys
    monkeypatch.setitem(sys.modules, "google.cloud.storage", None)  # as if not installed
    with pytest.raises(ImportError, match=r"gs://bucket/run/checkpoints need google-cloud-stor"
                                          r".*pip install 'resnet-jax\[gcs\]'"):
        ckpt.Checkpointer("gs://bucket/run/checkpoints")


def test_a_long_storage_error_keeps_its_cause():
    """TensorStore's errors put the OS error last, after two long paths: the one line kept of
    them used to end before it."""
    from resnet_jax.train import checkpoint_reads
    err = ValueError('RESOURCE_EXHAUSTED: Error writing local file "/w/checkpoints/8.orbax-chec'
                     'kpoint-tmp/state.orbax-checkpoint-tmp/_sharding": Failed writing: "/w/che'
                     'ckpoints/8.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/_sharding.__lo'
                     'ck": Failed to write 173 bytes to file 5: No space left on device '
                     "[os_error_code='28']")
    line = checkpoint_reads.reason(err)
    assert line.startswith("ValueError: RESOURCE_EXHAUSTED: Error writing local file")
    assert line.endswith("No space left on device [os_error_code='28']") and len(line) < 260

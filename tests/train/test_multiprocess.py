"""2 processes x 4 CPU devices (jax.distributed on localhost, gloo collectives) train exactly
like 1 process x 8 devices: same losses, parameters and BN statistics after a few steps, and
the same masked evaluation of a dataset that is not a multiple of the batch; for one net and
for 2 replicas of it trained as one program."""
import pathlib

import numpy as np
import pytest

WORKER = pathlib.Path(__file__).with_name("_mp_worker.py")


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, mp_worker):
    """Slow: 2 processes compile and run each of 3 training setups, then this process does;
    2 real processes are the thing tested."""
    mp_worker.run_workers(WORKER, tmp_path, timeout=300)
    # this process: 8 devices (conftest)
    reference = {**mp_worker.run_steps(0, 1), **mp_worker.run_steps(0, 1, 2, "vmap"),
                 **mp_worker.run_steps(0, 1, 2, "sequential")}
    for i in range(2):
        got = dict(np.load(tmp_path / f"p{i}.npz"))
        assert sorted(got) == sorted(reference)
        for key, value in reference.items():
            np.testing.assert_allclose(got[key], value, rtol=2e-5, atol=2e-6, err_msg=key)
    assert all(np.isfinite(reference[f"{t}_losses"]).all()
               for t in ("r1", "r2vmap", "r2sequential"))
    assert reference["r1_eval_sums"][3] == 21  # each eval example counted once
    for t in ("r2vmap", "r2sequential"):
        assert reference[f"{t}_eval_sums"][3].tolist() == [21, 21]   # ... by each replica
        assert reference[f"{t}_losses"].shape == (3, 2)
        assert not np.allclose(reference[f"{t}_losses"][:, 0], reference[f"{t}_losses"][:, 1])
    np.testing.assert_allclose(reference["r2vmap_losses"], reference["r2sequential_losses"],
                               rtol=1e-5)


LIFECYCLE_WORKER = pathlib.Path(__file__).with_name("_mp_lifecycle_worker.py")


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory, mp_worker):
    """What each of 2 processes saw in `_mp_lifecycle_worker.py`: [process 0's, process 1's]."""
    root, nproc = tmp_path_factory.mktemp("lifecycle"), 2
    mp_worker.run_workers(LIFECYCLE_WORKER, root, nproc=nproc, unoptimized=True)
    import json
    return [json.loads((root / f"p{i}.json").read_text()) for i in range(nproc)]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_one_restore_decision_for_all_processes(lifecycle):
    """Only process 1 sees a failure: each time both processes act alike (each used to pick
    its own fallback, and a failure worth retrying counted as damage).
    Slow: the first test of the `lifecycle` fixture, whose 2 processes (joined by
    jax.distributed: the thing tested) run every scenario of `_mp_lifecycle_worker.py`."""
    p0, p1 = (p["restore"] for p in lifecycle)
    for p in (p0, p1):
        # Worth retrying, and retries did not help: both stop, nothing set aside.
        assert p["transient"]["error"] == "CheckpointReadError"
        assert p["transient"]["listing"] == ["1", "2"]
        # Once only: process 1's retry reads it; both on step 2.
        assert (p["transient_once"]["step"], p["transient_once"]["w"]) == (2, 2.0)
        # Damage on one process: step 2 set aside (once), both on step 1.
        assert (p["damaged"]["step"], p["damaged"]["w"]) == (1, 1.0)
        assert p["damaged"]["listing"] == ["1", "2.unreadable"]
    assert "UNAVAILABLE" in p1["transient"]["message"]
    assert "process 1 cannot read the checkpoint of step 2" in p0["transient"]["message"]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_the_lease_is_held_by_process_0_for_all(lifecycle):
    p0, p1 = (p["lease"] for p in lifecycle)
    assert (p0["held_by_me"], p1["held_by_me"]) == (True, False)
    assert p0["files"] == p1["files"] == ["lease.0.json"]
    assert "is in use by another run" in p0["second"]
    assert "process 0 could not take the workdir's lease" in p1["second"]
    assert "taken over by host elsewhere, pid 9" in p0["lost"]
    assert "process 0 lost the workdir's lease" in p1["lost"]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_any_failure_to_take_the_lease_stops_every_process(lifecycle):
    """Process 0's store raised an error the lease does not know (it used to forward only 3
    kinds: process 1 then waited for process 0 in a broadcast for ever)."""
    p0, p1 = (p["lease_failure"] for p in lifecycle)
    assert p0 == {"error": "KeyError", "message": "'the store broke'"}
    assert p1["error"] == "RuntimeError"
    assert "process 0 could not take the workdir's lease" in p1["message"]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_one_start_decision_for_all_processes(lifecycle):
    """checkpoints/ appeared between process 0's look and a slow process 1's: both start
    the new run (process 1 resumed, and entered the restore's collectives while process 0
    was in the fresh start's; a look of its own at any point would see the folder)."""
    assert [p["start"]["took"] for p in lifecycle] == [["fresh"], ["fresh"]]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_eval_data_pairs_predictions_with_labels_whatever_the_device_order(lifecycle):
    """Labels are the model's own top-1: 0% error when every prediction meets its own label.
    On a mesh that puts process 1's devices first, process 0's labels met process 1's
    predictions (the global rows follow the mesh, not the processes)."""
    for p in lifecycle:
        e = p["eval"]
        assert e["permuted"] == e["process_order"]
        assert e["permuted"]["count"] == 20
        assert e["permuted"]["top1_error"] <= 5.0, e   # 0 unless a near tie flips (margin)

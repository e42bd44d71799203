"""One writer per workdir (`resnet_jax.train.lease`): a second holder is refused naming the
first, a dead holder's lease is taken over (at once on its own host, after its ttl
elsewhere), a holder taken over finds out and stops, the same on gs://, and a workdir that
cannot be written is one clear error that leaves nothing behind."""
import json
import os
import subprocess
import sys
import time

import pytest

from resnet_jax.errors import WorkdirBusyError
from resnet_jax.train import lease as lease_lib
from resnet_jax.train import lease_stores


class FakeClock:
    """time.time / time.monotonic / time.sleep that only move when slept."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _lease(workdir, clock=None, **kw):
    clock = clock or FakeClock()
    kw.setdefault("say", lambda text: None)
    return lease_lib.Lease(str(workdir), clock=clock.time, monotonic=clock.time,
                           sleep=clock.sleep, **kw)


def _files(workdir):
    return sorted(n for n in os.listdir(workdir) if n.startswith("lease."))


def _write_holder(workdir, n, **fields):
    record = {"host": "elsewhere", "pid": 1, "since": 0.0, "renewed": 0.0,
              "heartbeat_s": 10.0, "ttl_s": 60.0, "token": "x", **fields}
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, f"lease.{n}.json"), "w") as f:
        json.dump(record, f)


def test_second_holder_is_refused_in_one_line_naming_the_first(tmp_path):
    first = _lease(tmp_path / "w", heartbeat_s=3600)
    first.acquire()
    try:
        with pytest.raises(WorkdirBusyError) as refused:
            _lease(tmp_path / "w").acquire()
        message = str(refused.value)
        assert "\n" not in message
        assert f"pid {os.getpid()}" in message and first.host in message
        assert "since 19" in message or "since 20" in message  # a date
        assert _files(tmp_path / "w") == ["lease.0.json"]       # untouched
    finally:
        first.release()
    assert not (tmp_path / "w").exists()   # made for the lease alone: removed with it
    again = _lease(tmp_path / "w")
    again.acquire()
    again.release()


def test_a_dead_holder_on_this_host_is_taken_over_at_once(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    workdir = tmp_path / "w"
    _write_holder(workdir, 4, host=lease_lib.socket.gethostname(), pid=dead.pid,
                  renewed=time.time())
    clock = FakeClock(time.time())
    mine = _lease(workdir, clock)
    mine.acquire()
    try:
        assert clock.now == pytest.approx(time.time(), abs=30)  # no waiting
        assert _files(workdir) == ["lease.5.json"]
        held = json.loads((workdir / "lease.5.json").read_text())
        assert held["pid"] == os.getpid() and held["token"] != "x"
    finally:
        mine.release()


def test_a_holder_elsewhere_is_refused_while_it_renews_and_taken_over_when_it_stops(tmp_path):
    workdir, clock = tmp_path / "w", FakeClock()
    # Renewed a moment ago: refused at once.
    _write_holder(workdir, 0, renewed=clock.now - 1)
    with pytest.raises(WorkdirBusyError, match="host elsewhere, pid 1"):
        _lease(workdir, clock).acquire()
    # Late, but it renews while we watch: refused.
    _write_holder(workdir, 0, renewed=clock.now - 30)
    real_sleep = clock.sleep

    def sleep_and_renew(seconds):
        real_sleep(seconds)
        _write_holder(workdir, 0, renewed=clock.now)
    clock.sleep = sleep_and_renew
    said = []
    with pytest.raises(WorkdirBusyError):
        _lease(workdir, clock, say=said.append).acquire()
    assert len(said) == 1 and "waiting up to 60 s" in said[0]
    # Late and silent: taken over once its ttl (its own, 60 s) passed since we first looked.
    clock.sleep = real_sleep
    _write_holder(workdir, 0, renewed=clock.now - 30)
    started = clock.now
    mine = _lease(workdir, clock)
    mine.acquire()
    try:
        assert 60 <= clock.now - started <= 70
        assert _files(workdir) == ["lease.1.json"]
    finally:
        mine.release()


def test_a_holder_taken_over_finds_out_and_leaves_the_new_lease_alone(tmp_path):
    workdir, clock = tmp_path / "w", FakeClock()
    mine = _lease(workdir, clock, heartbeat_s=3600)
    mine.acquire()
    mine.renew()
    mine.check()   # held
    _write_holder(workdir, 1, renewed=clock.now)  # what a taker of an expired lease writes
    mine.renew()
    with pytest.raises(lease_lib.LeaseLostError, match="taken over by host elsewhere, pid 1"):
        mine.check()
    mine.release()
    assert _files(workdir) == ["lease.1.json"]  # ours (garbage now) gone, the taker's kept


def test_a_holder_that_cannot_renew_for_a_ttl_gives_up(tmp_path, monkeypatch):
    workdir, clock = tmp_path / "w", FakeClock()
    mine = _lease(workdir, clock, heartbeat_s=10, ttl_s=60)
    mine.acquire()

    def unavailable(*args):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(lease_stores.LocalStore, "numbers", unavailable)
    clock.sleep(30)
    mine.renew()
    mine.check()   # a hiccup: still held
    clock.sleep(30)
    mine.renew()
    with pytest.raises(lease_lib.LeaseLostError, match="could not be renewed for 60 s"):
        mine.check()
    monkeypatch.undo()
    mine.release()


def test_the_heartbeat_thread_renews(tmp_path):
    mine = lease_lib.Lease(str(tmp_path / "w"), heartbeat_s=0.05)
    mine.acquire()
    try:
        first = json.loads((tmp_path / "w" / "lease.0.json").read_text())["renewed"]
        deadline = time.time() + 10
        while time.time() < deadline:
            text = (tmp_path / "w" / "lease.0.json").read_text()
            if text and json.loads(text)["renewed"] > first:
                break
            time.sleep(0.02)
        else:
            raise AssertionError("no heartbeat in 10 s")
    finally:
        mine.release()


@pytest.mark.parametrize("make, why", [
    (lambda root: (root / "README.md").write_text("x") and root / "README.md" / "run",
     "a file where a folder is expected"),
])
def test_a_workdir_that_cannot_be_written_is_one_line_and_leaves_nothing(tmp_path, make, why):
    workdir = make(tmp_path)
    with pytest.raises(ValueError) as refused:
        _lease(workdir).acquire()
    assert str(refused.value).startswith(f"--workdir {workdir} cannot be written: {why}")
    assert sorted(os.listdir(tmp_path)) == ["README.md"]


def test_a_read_only_workdir_is_one_line_and_the_folders_made_are_removed(tmp_path,
                                                                         monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system", args[0])
    monkeypatch.setattr(lease_stores.LocalStore, "create", read_only)
    with pytest.raises(ValueError, match=r"cannot be written: Read-only file system"):
        _lease(tmp_path / "new" / "run").acquire()
    assert os.listdir(tmp_path) == []   # new/ and new/run made for the lease, removed again


def test_gs_lease(gcs_emulator):
    """The same on gs:// (generation preconditions of the emulator): refused while held,
    released, a dead holder taken over, a lost lease noticed."""
    workdir = "gs://bucket/run"
    first = _lease(workdir, heartbeat_s=3600)
    first.acquire()
    assert gcs_emulator.names() == ["run/lease.0.json"]
    with pytest.raises(WorkdirBusyError, match=f"pid {os.getpid()}"):
        _lease(workdir).acquire()
    # Two contenders for the same number: only one create succeeds (ifGenerationMatch=0).
    store = lease_stores.GcsStore(workdir)
    assert not store.create(0, "{}")
    first.release()
    assert gcs_emulator.names() == ["run/lease.0.json"]   # released: numbers never go down
    assert lease_lib.Holder.parse(store.read(0)).released
    # A holder on another host that stopped renewing: taken over after its ttl.
    clock = FakeClock()
    store.create(3, json.dumps({"host": "elsewhere", "pid": 1, "since": 0.0,
                                "renewed": clock.now - 100, "heartbeat_s": 10.0,
                                "ttl_s": 60.0, "token": "x"}))
    mine = _lease(workdir, clock, heartbeat_s=3600)
    mine.acquire()
    assert gcs_emulator.names() == ["run/lease.4.json"]
    assert store.create(5, json.dumps({"host": "h2", "pid": 2, "since": 0.0, "renewed": 0.0,
                                       "heartbeat_s": 1.0, "ttl_s": 1.0, "token": "y"}))
    with pytest.raises(lease_lib.LeaseLostError, match="host h2, pid 2"):
        mine.check()   # no heartbeat since: the check lists the bucket itself
    mine.release()
    assert gcs_emulator.names() == ["run/lease.5.json"]

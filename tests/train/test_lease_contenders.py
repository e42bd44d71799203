"""The workdir lease against real contenders on real clocks (threads; heartbeats and ttls of
a fraction of a second): runs racing for one workdir never both hold it, a holder that was
paused past its ttl finds out before it writes again, a holder whose clock is skewed is
judged by whether its renewals change, and a holder on this hostname in another container
(pid namespace, or boot) is not taken for dead because its pid is not ours."""
import os
import subprocess
import sys
import threading
import time

import pytest

from resnet_jax.errors import WorkdirBusyError
from resnet_jax.train import lease as lease_lib


def _quiet(workdir, **kw):
    return lease_lib.Lease(str(workdir), say=lambda text: None, **kw)


def _files(workdir):
    return sorted(n for n in os.listdir(workdir) if n.startswith("lease."))


def _freeze(lease):
    """What a frozen VM or a killed process leaves: the heartbeat stops, nothing is released."""
    lease._stop.set()
    lease._thread.join()


def test_runs_racing_for_a_workdir_never_both_hold_it(tmp_path, monkeypatch):
    """4 contenders each take and give back one workdir 10 times, as fast as they can, on a
    disk whose reads take a millisecond (NFS): at no moment do two hold it (a contender that
    found the listed lease file gone created the next number from its old listing while
    another created the first: both held it)."""
    from resnet_jax.train import lease_stores
    read = lease_stores.LocalStore.read

    def slow_read(self, n):
        time.sleep(0.001)
        return read(self, n)
    monkeypatch.setattr(lease_stores.LocalStore, "read", slow_read)
    workdir, lock, deadline = tmp_path / "w", threading.Lock(), time.monotonic() + 30
    holding, most, errors = [0], [0], []

    def contend():
        took = 0
        try:
            while took < 10 and time.monotonic() < deadline:
                lease = _quiet(workdir, heartbeat_s=3600)
                try:
                    lease.acquire()
                except WorkdirBusyError:
                    continue
                took += 1
                with lock:
                    holding[0] += 1
                    most[0] = max(most[0], holding[0])
                time.sleep(0.001)
                with lock:
                    holding[0] -= 1
                lease.release()
            assert took == 10, f"took the lease {took} times in 30 s"
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)
    threads = [threading.Thread(target=contend) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert most[0] == 1


def test_a_contender_paused_before_it_creates_the_next_number_cannot_take_a_new_holders(
        tmp_path, monkeypatch):
    """A contender judged a crashed holder's lease 0 stale and was paused before it created
    lease 1; meanwhile a second run took the workdir (lease 1) and ended, and a third took it
    (lease 2, deleting 1). The paused one's create of 1 then succeeds: it must see lease 2
    and refuse. (Had the second run deleted its lease on the way out, the third would have
    created 0, and the paused one 1: both holding it.)"""
    from resnet_jax.train import lease_stores
    workdir, create = tmp_path / "w", lease_stores.LocalStore.create
    paused, go = threading.Event(), threading.Event()

    def create_unless_paused(self, n, text):
        if threading.current_thread().name == "paused":
            paused.set()
            go.wait(10)
        return create(self, n, text)
    monkeypatch.setattr(lease_stores.LocalStore, "create", create_unless_paused)
    crashed = _quiet(workdir, pid=_dead_pid(), heartbeat_s=3600)
    crashed.acquire()
    _freeze(crashed)
    late, outcome = _quiet(workdir), []

    def contend():
        try:
            late.acquire()
            outcome.append("took it")
        except WorkdirBusyError as err:
            outcome.append(str(err))
    thread = threading.Thread(target=contend, name="paused")
    thread.start()
    assert paused.wait(10)
    second = _quiet(workdir, heartbeat_s=3600)
    second.acquire()
    second.release()
    third = _quiet(workdir, heartbeat_s=3600)
    third.acquire()
    go.set()
    thread.join()
    try:
        assert outcome[0].startswith(f"--workdir {workdir} is in use by another run"), outcome
        assert _files(workdir) == [f"lease.{third.number}.json"]
        third.check()
    finally:
        third.release()
        late.release()


def test_a_paused_holder_finds_out_before_it_writes_again(tmp_path):
    """A holder frozen past its ttl (no heartbeat ran, so nothing told it): a run elsewhere
    took the workdir over, and the holder's next check before a write sees it in the store."""
    workdir = tmp_path / "w"
    holder = _quiet(workdir, host="frozen-vm", heartbeat_s=0.05, ttl_s=0.3)
    holder.acquire()
    holder.check()
    _freeze(holder)
    time.sleep(0.1)                       # its last renewal is older than a heartbeat now
    taker = _quiet(workdir, heartbeat_s=3600)
    started = time.monotonic()
    taker.acquire()                       # watched its silent renewals for a ttl, then took it
    assert time.monotonic() - started >= 0.3
    with pytest.raises(lease_lib.LeaseLostError, match="taken over by host "):
        holder.check()                    # thawed: its first write would be the other run's
    holder.release()
    assert _files(workdir) == [f"lease.{taker.number}.json"]
    taker.check()
    taker.release()


def _ahead(seconds):
    return lambda: time.time() + seconds


@pytest.mark.parametrize("skew_s", [3600.0, -3600.0])
def test_a_holder_with_a_skewed_clock_is_watched_not_refused_or_taken_by_its_stamps(tmp_path,
                                                                                   skew_s):
    """A holder elsewhere whose clock is an hour ahead (or behind): while it renews, a second
    run is refused; once it stops, it is taken over a ttl later on the taker's clock (ahead,
    it was refused at once for as long as the skew lasted)."""
    workdir = tmp_path / "w"
    holder = _quiet(workdir, host="skewed", clock=_ahead(skew_s), heartbeat_s=0.05, ttl_s=0.4)
    holder.acquire()
    with pytest.raises(WorkdirBusyError, match="host skewed"):
        _quiet(workdir).acquire()
    _freeze(holder)
    taker = _quiet(workdir, heartbeat_s=3600)
    started = time.monotonic()
    taker.acquire()
    assert 0.4 <= time.monotonic() - started < 5
    taker.release()
    holder.release()


def _dead_pid() -> int:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


@pytest.mark.parametrize("other", [{"pid_ns": "pid:[1]"}, {"boot": "another-boot"}])
def test_a_holder_on_this_hostname_in_another_container_is_not_taken_for_dead(tmp_path, other):
    """Containers that share a hostname but not a pid namespace (or a boot): the holder's pid
    means nothing here, so it is watched like a holder elsewhere; it was taken over at once
    because no process of that pid lives in this namespace."""
    workdir = tmp_path / "w"
    holder = _quiet(workdir, pid=_dead_pid(), heartbeat_s=0.05, ttl_s=0.4, **other)
    holder.acquire()
    try:
        with pytest.raises(WorkdirBusyError, match=f"pid {holder.pid}"):
            _quiet(workdir).acquire()
    finally:
        _freeze(holder)
    time.sleep(0.1)                            # its last renewal is older than a heartbeat
    taker = _quiet(workdir, heartbeat_s=3600)
    started = time.monotonic()
    taker.acquire()
    assert time.monotonic() - started >= 0.4   # a ttl of silence, not at once
    taker.release()

"""One writer per workdir: a lease with a heartbeat, on a local disk or on gs://.

A training run takes the lease of its workdir before it reads any data and gives it back when
it ends; a second run on the same workdir (the same command started twice, or a scheduler
that requeues a job whose old copy is still alive) refuses at once in one line naming the
holder. A crash gives the lease back too: a holder on the same host whose process is gone is
taken over at once; a holder on another host that stops renewing is taken over once its
lease expires (`ttl_s` after its last renewal, measured on the taker's own clock).

Layout: `<workdir>/lease.<n>.json`, n = 0, 1, 2, ...; the file with the highest n is the
lease. Taking a free or expired lease is creating the next number, which only one contender
can do: `O_EXCL` on a local disk (also across NFS clients), `if_generation_match=0` on GCS.
Nothing else needs to be atomic. The holder rewrites its own file every `heartbeat_s`
seconds; when it finds a higher number (it was taken over, e.g. after a pause longer than the
ttl) or cannot renew for a whole ttl, the lease is lost and `check()` raises, so the run
stops before it writes again. With several processes only process 0 holds the lease (`hold`)
and every process learns the outcome from it, so all of them refuse or stop together.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Callable, Iterator, Optional

from resnet_jax.errors import StorageError, WorkdirBusyError
from resnet_jax.train import lease_stores

HEARTBEAT_S = 15.0
TTL_S = 90.0


class LeaseLostError(WorkdirBusyError):
    """This run's lease was taken over (or could not be renewed) while it ran."""


def _start_ticks(pid: int) -> Optional[int]:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart;
    None where /proc has no such process or does not exist."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if fields[0] == "Z":  # a zombie has exited; only its parent has not reaped it yet
        return -1
    return int(fields[19])


def _process_alive(pid: int, start: Optional[int]) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    now = _start_ticks(pid)
    if now == -1:
        return False
    return start is None or now is None or now == start


@dataclasses.dataclass
class Holder:
    """What a lease file says about the run that holds it."""
    host: str
    pid: int
    since: float          # unix time the lease was taken
    renewed: float        # unix time of the last heartbeat (the holder's clock)
    heartbeat_s: float
    ttl_s: float
    token: str
    start: Optional[int] = None
    command: str = ""

    @classmethod
    def parse(cls, text: str) -> Optional["Holder"]:
        try:
            d = json.loads(text)
            return cls(host=str(d["host"]), pid=int(d["pid"]), since=float(d["since"]),
                       renewed=float(d["renewed"]), heartbeat_s=float(d["heartbeat_s"]),
                       ttl_s=float(d["ttl_s"]), token=str(d["token"]), start=d.get("start"),
                       command=str(d.get("command", "")))
        except (ValueError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        since = datetime.datetime.fromtimestamp(self.since, datetime.timezone.utc)
        return f"host {self.host}, pid {self.pid}, since {since:%Y-%m-%d %H:%M:%S} UTC"


def _unusable(workdir: str, err: Exception) -> Exception:
    """The error for a workdir the lease cannot be written to: a full or failing disk, or a
    storage service that fails, is storage (exit code 4); a wrong path, a read-only or
    forbidden folder or bucket is the user's to change (a ValueError, exit code 2)."""
    if isinstance(err, OSError):
        text = f"{err.strerror or err}" + (f" ({err.filename})" if err.filename else "")
        user = err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EIO)
    elif type(err).__module__.startswith("google."):  # google.api_core / google.auth
        text = f"{type(err).__name__}: {err}"
        user = getattr(err, "code", None) in (400, 401, 403, 404) or "auth" in \
            type(err).__module__
    else:
        raise err
    message = f"--workdir {workdir} cannot be written: {text}"
    return ValueError(message) if user else StorageError(message)


def _ago(seconds: float) -> str:
    return f"{seconds:.0f} s ago" if seconds >= 0 else f"{-seconds:.0f} s in the future"


class Lease:
    """The lease of one workdir, held by this process (`acquire` ... `release`).

    Args:
      workdir: local path or gs://...; other remote schemes are not locked (a warning).
      heartbeat_s: how often the holder renews; ttl_s: how long after its last renewal an
        absent holder on another host keeps the lease. Both are written into the lease, so
        the taker judges by the holder's own values.
      say: where the one line "waiting for an expiring lease" goes.
    """

    def __init__(self, workdir: str, *, heartbeat_s: Optional[float] = None,
                 ttl_s: Optional[float] = None,
                 say: Callable[[str], None] = lambda text: print(text, file=sys.stderr),
                 host: Optional[str] = None, pid: Optional[int] = None,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.workdir = workdir if "://" in workdir else os.path.abspath(workdir)
        self.shown = workdir
        self.heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
        self.ttl_s = TTL_S if ttl_s is None else ttl_s
        self.say = say
        self.host = host or socket.gethostname()
        self.pid = os.getpid() if pid is None else pid
        self.clock, self.monotonic, self.sleep = clock, monotonic, sleep
        self.number: Optional[int] = None
        self._store = None
        self._created: list[str] = []
        self._token = uuid.uuid4().hex
        self._since = 0.0
        self._lost: Optional[str] = None
        self._last_renewal = 0.0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ---- taking it ----------------------------------------------------------------------
    def acquire(self) -> None:
        """Takes the lease, or raises WorkdirBusyError naming its holder. Makes the workdir
        (a bad path is a ValueError naming it, before anything else is written)."""
        try:
            self._store = lease_stores.store(self.workdir)
            if self._store is None:
                self.say(f"note: --workdir {self.shown} is not locked against a second run "
                         "(only local paths and gs:// are)")
                return
            self._created = self._store.prepare()
            self._take()
        except (WorkdirBusyError, ValueError, StorageError):
            self._undo()
            raise
        except Exception as err:  # noqa: BLE001 - storage errors, told apart below
            self._undo()
            raise _unusable(self.shown, err) from None
        self._thread = threading.Thread(target=self._heartbeats, name="resnet-jax-lease",
                                        daemon=True)
        self._thread.start()

    def _record(self) -> str:
        now = self.clock()
        return json.dumps({"host": self.host, "pid": self.pid, "start": _start_ticks(self.pid),
                           "since": self._since or now, "renewed": now,
                           "heartbeat_s": self.heartbeat_s, "ttl_s": self.ttl_s,
                           "token": self._token, "command": " ".join(sys.argv)[:300]},
                          indent=1) + "\n"

    def _take(self) -> None:
        watched: dict[int, tuple[float, float]] = {}  # lease n: (its renewal, when first seen)
        said = False
        while True:
            numbers = self._store.numbers()
            top = numbers[-1] if numbers else -1
            if top >= 0:
                verdict, holder = self._judge(top, watched)
                if holder is not None and holder.token == self._token:
                    # Ours: a create whose answer was lost and that was retried.
                    self.number, self._last_renewal = top, self.monotonic()
                    return
                if verdict == "alive":
                    self._refuse(top, holder)
                if verdict == "unreadable":
                    self.sleep(0.1)
                    continue
                if verdict == "watch":
                    left = holder.ttl_s - (self.monotonic() - watched[top][1])
                    if not said:
                        self.say(f"the lease of --workdir {self.shown} ({holder.describe()}) "
                                 f"was last renewed {_ago(self.clock() - holder.renewed)}; "
                                 f"waiting up to {left:.0f} s for it to expire")
                        said = True
                    self.sleep(max(0.05, min(holder.heartbeat_s / 2, left)))
                    continue
            self._since = self.clock()
            if self._store.create(top + 1, self._record()):
                self.number, self._last_renewal = top + 1, self.monotonic()
                for n in numbers:  # the expired ones: this lease is the highest now
                    self._store.delete(n)
                return

    def _judge(self, n: int, watched: dict) -> tuple[str, Optional[Holder]]:
        """'alive' | 'stale' | 'watch' | 'unreadable' for lease file n, and what it says."""
        text = self._store.read(n)
        holder = Holder.parse(text) if text is not None else None
        if text is None:
            return "stale", None  # deleted since it was listed: look again
        if holder is None:
            # A local O_EXCL create is visible before its content: give it a moment.
            first = watched.setdefault(n, (float("nan"), self.monotonic()))
            return ("stale" if self.monotonic() - first[1] > 2.0 else "unreadable"), None
        if holder.host == self.host:
            return ("alive" if _process_alive(holder.pid, holder.start) else "stale"), holder
        if self.clock() - holder.renewed < holder.heartbeat_s:
            return "alive", holder
        seen = watched.get(n)
        if seen is None:
            watched[n] = (holder.renewed, self.monotonic())
            return "watch", holder
        if holder.renewed != seen[0]:
            return "alive", holder  # it renewed while we watched
        if self.monotonic() - seen[1] >= holder.ttl_s:
            return "stale", holder
        return "watch", holder

    def _refuse(self, n: int, holder: Holder) -> None:
        raise WorkdirBusyError(
            f"--workdir {self.shown} is in use by another run ({holder.describe()}; lease "
            f"{self._store.path(n)} renewed {_ago(self.clock() - holder.renewed)}): stop that "
            "run first or use another --workdir (a crashed run's lease is taken over at once "
            f"on its own host, elsewhere {holder.ttl_s:.0f} s after its last renewal)")

    # ---- holding it ---------------------------------------------------------------------
    def _heartbeats(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self.renew()

    def renew(self) -> None:
        """One heartbeat (the thread calls it; tests may too): rewrites the lease, or finds
        it lost."""
        if self.number is None or self._lost:
            return
        try:
            numbers = self._store.numbers()
            if numbers and numbers[-1] > self.number:
                holder = Holder.parse(self._store.read(numbers[-1]) or "")
                who = holder.describe() if holder else "another run"
                self._lost = f"the lease was taken over by {who}"
                return
            if self.number not in numbers:
                self._lost = f"the lease file {self._store.path(self.number)} was removed"
                return
            self._store.overwrite(self.number, self._record())
            self._last_renewal = self.monotonic()
        except Exception as err:  # noqa: BLE001 - storage hiccups: try again next beat
            if self.monotonic() - self._last_renewal > self.ttl_s - self.heartbeat_s:
                self._lost = (f"the lease could not be renewed for "
                              f"{self.monotonic() - self._last_renewal:.0f} s "
                              f"({type(err).__name__}: {err})")

    def lost(self) -> Optional[str]:
        """Why the lease is lost, or None while it is held."""
        return self._lost

    def check(self) -> None:
        """Raises LeaseLostError if another run may be writing to the workdir now."""
        if self._lost:
            raise LeaseLostError(f"--workdir {self.shown}: {self._lost}; this run stopped "
                                 "without writing anything more")

    def release(self) -> None:
        """Stops the heartbeat and gives the lease back (of a lost one, only our own file)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.number is not None:
            with contextlib.suppress(Exception):
                # A lost lease's file is garbage (a higher one exists), but a heartbeat racing
                # the takeover may have written it again after the taker deleted it.
                mine = Holder.parse(self._store.read(self.number) or "")
                if not self._lost or (mine is not None and mine.token == self._token):
                    self._store.delete(self.number)
        self.number = None
        self._undo()

    def _undo(self) -> None:
        if self._store is not None and self._created:
            self._store.remove_if_empty(self._created)
            self._created = []


class _Shared:
    """A lease held by process 0 for all processes: `check()` agrees on every process."""

    def __init__(self, lease: Optional[Lease]):
        self.lease = lease

    def check(self) -> None:
        """Raises LeaseLostError on every process once process 0's lease is lost (with
        several processes this is a collective: every process calls it at the same point)."""
        if _told_by_process_0(self.lease is not None and self.lease.lost() is not None):
            if self.lease is not None:
                self.lease.check()
            raise LeaseLostError("process 0 lost the workdir's lease (its message says how); "
                                 "this process stopped without writing anything more")


def _told_by_process_0(flag: bool) -> bool:
    """Process 0's `flag`, on every process."""
    import jax
    if jax.process_count() == 1:
        return flag
    import numpy as np
    from jax.experimental import multihost_utils
    value = np.int32(flag and jax.process_index() == 0)
    return bool(multihost_utils.broadcast_one_to_all(value))


@contextlib.contextmanager
def hold(workdir: str, **kwargs) -> Iterator[_Shared]:
    """The workdir's lease for the whole `with` block; process 0 takes it for every process.
    Raises WorkdirBusyError (or a ValueError for a workdir that cannot be written) on every
    process when process 0 cannot take it. Yields an object whose `check()` raises
    LeaseLostError on every process once process 0 lost it."""
    import jax
    lease, failure = None, None
    if jax.process_index() == 0:
        lease = Lease(workdir, **kwargs)
        try:
            lease.acquire()
        except (WorkdirBusyError, ValueError, StorageError) as err:
            failure = err
    if _told_by_process_0(failure is not None):
        if failure is not None:
            raise failure
        raise WorkdirBusyError(f"--workdir {workdir}: process 0 could not take the workdir's "
                               "lease (its message says why)")
    try:
        yield _Shared(lease)
    finally:
        if lease is not None:
            lease.release()

"""One writer per workdir: a lease with a heartbeat, on a local disk or on gs://.

A training run takes the lease of its workdir before it reads any data and gives it back when
it ends; a second run on the same workdir (the same command started twice, or a scheduler
that requeues a job whose old copy is still alive) refuses at once in one line naming the
holder. A crash gives the lease back too: a holder on this machine (the same host, boot and
pid namespace, `lease_holders`) whose process is gone is taken over at once; any other holder
once its renewals have not changed for its `ttl_s`, watched on the taker's own clock (the
holder's clock may be skewed either way: its stamps can only say "renewed just now").

Layout: `<workdir>/lease.<n>.json`, n = 0, 1, 2, ...; the file with the highest n is the
lease. Taking a free, released or expired lease is creating the next number, which only one
contender can do: `O_EXCL` on a local disk (also across NFS clients), `if_generation_match=0`
on GCS. The highest number is never deleted (a run that ends marks its file released), so the
number a contender creates was never another holder's: two runs cannot both take the lease.
The holder rewrites its own file every `heartbeat_s` seconds; when it finds a higher number
(it was taken over, e.g. after a pause longer than the ttl) or cannot renew for a whole ttl,
the lease is lost. `check()`, called before every write, looks at the store itself (a pause
may have outlived the lease with no heartbeat since) and raises, so the run stops before it
writes again. With several processes only process 0 holds the lease (`hold`) and every
process learns each outcome, and any failure, from it, so all refuse or stop together.
"""
from __future__ import annotations

import contextlib
import errno
import math
import os
import socket
import sys
import threading
import time
import uuid
from typing import Callable, Iterator, Optional

from resnet_jax.errors import StorageError, WorkdirBusyError
from resnet_jax.train import lease_stores
from resnet_jax.train.lease_holders import Holder, boot_id, pid_namespace, process_alive, \
    start_ticks

HEARTBEAT_S = 15.0
TTL_S = 90.0


class LeaseLostError(WorkdirBusyError):
    """This run's lease was taken over (or could not be renewed) while it ran."""


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
      heartbeat_s: how often the holder renews; ttl_s: how long an absent holder keeps the
        lease after a taker last saw its renewals change. Both are written into the lease,
        so the taker judges by the holder's own values.
      say: where the one line "waiting for an expiring lease" goes.
      host, pid, boot, pid_ns, clock, monotonic, sleep: this process's identity and time
        (the defaults: this machine's; tests pose as other ones).
    """

    def __init__(self, workdir: str, *, heartbeat_s: Optional[float] = None,
                 ttl_s: Optional[float] = None,
                 say: Callable[[str], None] = lambda text: print(text, file=sys.stderr),
                 host: Optional[str] = None, pid: Optional[int] = None,
                 boot: Optional[str] = None, pid_ns: Optional[str] = None,
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
        self.boot = boot or boot_id()
        self.pid_ns = pid_ns or pid_namespace()
        self.clock, self.monotonic, self.sleep = clock, monotonic, sleep
        self.number: Optional[int] = None
        self._store = None
        self._created: list[str] = []
        self._token = uuid.uuid4().hex
        self._since, self._beat = 0.0, 0
        self._lost: Optional[str] = None
        self._last_renewal, self._looked = 0.0, -math.inf
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

    def _record(self, released: bool = False) -> str:
        now = self.clock()
        return Holder(host=self.host, pid=self.pid, since=self._since or now, renewed=now,
                      heartbeat_s=self.heartbeat_s, ttl_s=self.ttl_s, token=self._token,
                      start=start_ticks(self.pid), command=" ".join(sys.argv)[:300],
                      boot_id=self.boot, pid_ns=self.pid_ns, beat=self._beat,
                      released=released).to_json()

    def _take(self) -> None:
        watched: dict[int, tuple] = {}  # lease n: (its renewal mark, when we first saw it)
        said = False
        while True:
            try:
                numbers = self._store.numbers()
            except FileNotFoundError:  # a run that made the folder for itself removed it
                self._created += self._store.prepare()
                continue
            top = numbers[-1] if numbers else -1
            if top >= 0:
                verdict, holder = self._judge(top, watched)
                if holder is not None and holder.token == self._token:
                    # Ours: a create whose answer was lost and that was retried.
                    self.number, self._last_renewal = top, self.monotonic()
                    return
                if verdict == "alive":
                    self._refuse(top, holder)
                if verdict == "vanished":  # deleted since it was listed: list again
                    continue
                if verdict == "unreadable":
                    self.sleep(0.1)
                    continue
                if verdict == "watch":
                    left = holder.ttl_s - (self.monotonic() - watched[top][1])
                    if not said:
                        self.say(f"the lease of --workdir {self.shown} ({holder.describe()}) "
                                 f"was last renewed {_ago(self.clock() - holder.renewed)} "
                                 f"by its clock; waiting up to {left:.0f} s for it to expire")
                        said = True
                    self.sleep(max(0.05, min(holder.heartbeat_s / 2, left)))
                    continue
            self._since = self.clock()
            try:
                created = self._store.create(top + 1, self._record())
            except FileNotFoundError:
                self._created += self._store.prepare()
                continue
            if not created:
                continue
            if self._store.numbers()[-1] > top + 1:
                # Our listing is older than a run that took the lease since (this process was
                # paused before it created): a number below the lease, deleted, made again.
                self._store.delete(top + 1)
                continue
            self.number, self._last_renewal = top + 1, self.monotonic()
            for n in numbers:  # free or expired, and below this lease now
                self._store.delete(n)
            return

    def _judge(self, n: int, watched: dict) -> tuple[str, Optional[Holder]]:
        """'alive' | 'stale' | 'watch' | 'unreadable' | 'vanished' for lease file n, and
        what it says."""
        text = self._store.read(n)
        if text is None:
            return "vanished", None
        holder = Holder.parse(text)
        if holder is None:
            # A local O_EXCL create is visible before its content: give it a moment.
            first = watched.setdefault(n, (None, self.monotonic()))
            return ("stale" if self.monotonic() - first[1] > 2.0 else "unreadable"), None
        if holder.released:
            return "stale", holder
        if holder.beside(self.host, self.boot, self.pid_ns):
            return ("alive" if process_alive(holder.pid, holder.start) else "stale"), holder
        # Elsewhere: its stamp only ever refuses, and only when plausible on our clock (a
        # stamp ahead of it says nothing); taking over needs its renewals to stop changing.
        if 0 <= self.clock() - holder.renewed < holder.heartbeat_s:
            return "alive", holder
        mark = (holder.beat, holder.renewed)
        seen = watched.get(n)
        if seen is None:
            watched[n] = (mark, self.monotonic())
            return "watch", holder
        if mark != seen[0]:
            return "alive", holder  # it renewed while we watched
        if self.monotonic() - seen[1] >= holder.ttl_s:
            return "stale", holder
        return "watch", holder

    def _refuse(self, n: int, holder: Holder) -> None:
        raise WorkdirBusyError(
            f"--workdir {self.shown} is in use by another run ({holder.describe()}; lease "
            f"{self._store.path(n)} renewed {_ago(self.clock() - holder.renewed)}): stop that "
            "run first or use another --workdir (a crashed run's lease is taken over at once "
            f"on its own machine, elsewhere {holder.ttl_s:.0f} s after its last renewal)")

    # ---- holding it ---------------------------------------------------------------------
    def _heartbeats(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self.renew()

    def _look(self) -> bool:
        """Whether the store still shows this lease as the highest (else marks it lost)."""
        numbers = self._store.numbers()
        if numbers and numbers[-1] > self.number:
            holder = Holder.parse(self._store.read(numbers[-1]) or "")
            who = holder.describe() if holder else "another run"
            self._lost = f"the lease was taken over by {who}"
        elif self.number not in numbers:
            self._lost = f"the lease file {self._store.path(self.number)} was removed"
        return not self._lost

    def _unreachable(self, err: Exception) -> None:
        """A store that cannot be read or written: a hiccup, until a ttl would have passed
        for a taker since our last renewal."""
        if self.monotonic() - self._last_renewal > self.ttl_s - self.heartbeat_s:
            self._lost = (f"the lease could not be renewed for "
                          f"{self.monotonic() - self._last_renewal:.0f} s "
                          f"({type(err).__name__}: {err})")

    def renew(self) -> None:
        """One heartbeat (the thread calls it; tests may too): rewrites the lease, or finds
        it lost."""
        if self.number is None or self._lost:
            return
        try:
            if self._look():
                self._beat += 1
                self._store.overwrite(self.number, self._record())
                self._last_renewal = self.monotonic()
        except Exception as err:  # noqa: BLE001 - storage hiccups: try again next beat
            self._unreachable(err)

    def lost(self) -> Optional[str]:
        """Why the lease is lost, or None while it is held, as the store shows it now (a
        remote store: as it showed it less than `look_every_s` ago on our monotonic clock,
        which a pause advances too)."""
        now = self.monotonic()
        if self.number is not None and not self._lost and \
                now - self._looked >= self._store.look_every_s:
            try:
                if self._look():
                    self._looked = now
            except Exception as err:  # noqa: BLE001 - judged as a failed renewal is
                self._unreachable(err)
        return self._lost

    def check(self) -> None:
        """Raises LeaseLostError if another run may be writing to the workdir now (looks at
        the store: call it before every write)."""
        if self.lost():
            raise LeaseLostError(f"--workdir {self.shown}: {self._lost}; this run stopped "
                                 "without writing anything more")

    def release(self) -> None:
        """Stops the heartbeat and gives the lease back: marks its file released (it stays,
        the highest number), or removes it with the folders made for it when nothing else
        was written there; of a lost lease, only removes our own file."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.number is not None:
            with contextlib.suppress(Exception):
                # A lost lease's file is garbage (a higher one exists), but a heartbeat racing
                # the takeover may have written it again after the taker deleted it.
                mine = Holder.parse(self._store.read(self.number) or "")
                if self._lost:
                    if mine is not None and mine.token == self._token:
                        self._store.delete(self.number)
                elif self._created and self._store.holds_only(self.number):
                    self._store.delete(self.number)
                else:
                    try:
                        self._store.overwrite(self.number, self._record(released=True))
                    except Exception:  # noqa: BLE001 - a full disk: give it back as before
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
        """Raises LeaseLostError on every process once process 0's lease is lost, as the
        store shows it now (with several processes this is a collective: every process
        calls it at the same point)."""
        lost = self.lease is not None and self.lease.lost() is not None
        if _from_process_0(int(lost)):
            if self.lease is not None:
                self.lease.check()
            raise LeaseLostError("process 0 lost the workdir's lease (its message says how); "
                                 "this process stopped without writing anything more")


def _from_process_0(value: int) -> int:
    """Process 0's `value`, on every process."""
    import jax
    if jax.process_count() == 1:
        return value
    from resnet_jax import parallel
    return parallel.from_process_0(value)


# What the other processes raise when process 0 failed to take the lease, by its failure.
_FORWARDED = (WorkdirBusyError, ValueError, StorageError, KeyboardInterrupt, RuntimeError)


def _kind(failure: Optional[BaseException]) -> int:
    """0 for none, else 1 + the index of the first `_FORWARDED` class `failure` is one of."""
    if failure is None:
        return 0
    return 1 + next((i for i, cls in enumerate(_FORWARDED) if isinstance(failure, cls)),
                    len(_FORWARDED) - 1)


@contextlib.contextmanager
def hold(workdir: str, **kwargs) -> Iterator[_Shared]:
    """The workdir's lease for the whole `with` block; process 0 takes it for every process.
    When process 0 cannot take it, every process raises: process 0 its own error, the others
    one of the same kind (WorkdirBusyError, a ValueError for a workdir that cannot be written,
    StorageError, KeyboardInterrupt, else RuntimeError), so none is left waiting. Yields an
    object whose `check()` raises LeaseLostError on every process once process 0 lost it."""
    import jax
    lease, failure = None, None
    if jax.process_index() == 0:
        try:
            lease = Lease(workdir, **kwargs)
            lease.acquire()
        except BaseException as err:  # noqa: BLE001 - every failure is told to the others
            failure = err
    kind = _from_process_0(_kind(failure))
    if kind:
        if failure is not None:
            raise failure
        raise _FORWARDED[kind - 1](f"--workdir {workdir}: process 0 could not take the "
                                   "workdir's lease (its message says why)")
    try:
        yield _Shared(lease)
    finally:
        if lease is not None:
            lease.release()

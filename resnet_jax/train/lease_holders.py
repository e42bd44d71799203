"""Who holds a workdir's lease (`Holder`: what a lease file says), and what this machine can
tell about a holder on it: whether its process is alive, and whether "on it" is true at all.

A holder's pid means something only in its own pid namespace and boot: containers that share
a hostname but not a pid namespace (or two boots of one machine) would otherwise see a live
holder as dead, since no process of that pid lives here. So a record names its host, the
boot id and the pid namespace, and only a holder matching all three is judged by its pid.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
from typing import Optional


def start_ticks(pid: int) -> Optional[int]:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart;
    None where /proc has no such process or does not exist; -1 for a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if fields[0] == "Z":  # a zombie has exited; only its parent has not reaped it yet
        return -1
    return int(fields[19])


def process_alive(pid: int, start: Optional[int]) -> bool:
    """Whether process `pid` (started at `start` ticks, if known) runs in this namespace."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    now = start_ticks(pid)
    if now == -1:
        return False
    return start is None or now is None or now == start


def boot_id() -> Optional[str]:
    """This boot of this machine (Linux; the same in every container on it), or None."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip() or None
    except OSError:
        return None


def pid_namespace() -> Optional[str]:
    """This process's pid namespace (`pid:[4026531836]`; Linux), or None."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


@dataclasses.dataclass
class Holder:
    """What a lease file says about the run that holds it (the fields after `command` are
    absent from files written before them: None, 0, False)."""
    host: str
    pid: int
    since: float          # unix time the lease was taken
    renewed: float        # unix time of the last heartbeat (the holder's clock)
    heartbeat_s: float
    ttl_s: float
    token: str
    start: Optional[int] = None
    command: str = ""
    boot_id: Optional[str] = None
    pid_ns: Optional[str] = None
    beat: int = 0          # renewals so far: what a watcher sees change
    released: bool = False  # given back; the file stays so that numbers never go down

    @classmethod
    def parse(cls, text: str) -> Optional["Holder"]:
        try:
            d = json.loads(text)
            return cls(host=str(d["host"]), pid=int(d["pid"]), since=float(d["since"]),
                       renewed=float(d["renewed"]), heartbeat_s=float(d["heartbeat_s"]),
                       ttl_s=float(d["ttl_s"]), token=str(d["token"]), start=d.get("start"),
                       command=str(d.get("command", "")), boot_id=d.get("boot_id"),
                       pid_ns=d.get("pid_ns"), beat=int(d.get("beat", 0)),
                       released=bool(d.get("released", False)))
        except (ValueError, KeyError, TypeError):
            return None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1) + "\n"

    def describe(self) -> str:
        since = datetime.datetime.fromtimestamp(self.since, datetime.timezone.utc)
        return f"host {self.host}, pid {self.pid}, since {since:%Y-%m-%d %H:%M:%S} UTC"

    def beside(self, host: str, boot: Optional[str], pid_ns: Optional[str]) -> bool:
        """Whether this holder's pid can be looked up here: the same host, boot and pid
        namespace (a record without boot or namespace, from before they were written: the
        host alone)."""
        return self.host == host and all(theirs is None or theirs == ours for theirs, ours in
                                          ((self.boot_id, boot), (self.pid_ns, pid_ns)))

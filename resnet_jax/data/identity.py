"""A run's data cannot change under it: what a run trained on is recorded in its workdir
(`data.json`) and checked when it resumes.

The batch of step s is a function of (seed, s) and the data: every epoch's order is a
permutation of the training examples' indices, so a file added or deleted between a run's start
and its resume silently changes every later epoch (and, by index, which image each index
is). `Pipeline.identity()` says what the data is, in a few numbers:

    {"version": 1, "class_names": [...],
     "train": {"examples": N, "fingerprint": sha256 hex},
     "eval": {"split": "val", "examples": M, "fingerprint": sha256 hex}}

Fingerprints: of each example's identity and label in order (streaming: an image's
class/file name, wherever the tree is; a tfds split's name, version and size), or of the
decoded arrays (in memory). Where the data lives (`data.path`), the pipeline and the workers
are not part of it: a copy of the tree elsewhere is the same data.

`check` (every process, before anything is written): a resumed run whose data.json differs
is refused in one line naming what changed; deleting data.json accepts the change (the run
then records the data it resumes on). A workdir from before data records (no data.json)
resumes and records its data then, unchecked.
"""
from __future__ import annotations

import hashlib
import os
from typing import Callable, Optional

import numpy as np

VERSION = 1
FILE = "data.json"


def fingerprint(*parts) -> str:
    """sha256 hex of byte strings, numpy arrays or text, each with its length (so no two
    sequences of parts share one)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            part = np.ascontiguousarray(part).tobytes()
        elif isinstance(part, str):
            part = part.encode()
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def of_split(examples: int, print_: str, split: Optional[str] = None) -> dict:
    """One split's entry of an identity."""
    return {**({"split": split} if split is not None else {}), "examples": int(examples),
            "fingerprint": print_}


def differences(recorded: dict, current: dict) -> list[str]:
    """What changed from `recorded` to `current`, in a few words each ([] when nothing)."""
    out = []
    was, now = recorded.get("class_names"), current["class_names"]
    if was != now:
        out.append(f"class names: {len(now)} classes, was {len(was or [])}" if
                   len(now) != len(was or []) else "class names: other names")
    for key, what in (("train", "training split"), ("eval", "evaluation split")):
        a, b = recorded.get(key) or {}, current[key]
        if a == b:
            continue
        if a.get("examples") != b["examples"]:
            out.append(f"{what}: {b['examples']:,} images, was {a.get('examples', 0):,}")
        elif a.get("split", b.get("split")) != b.get("split"):
            out.append(f"{what}: {b.get('split')!r}, was {a.get('split')!r}")
        else:
            out.append(f"{what}: as many images ({b['examples']:,}), other files or labels")
    return out


def check(workdir: str, pipeline, *, resumed: bool,
          say: Callable[[str], None] = lambda text: None) -> Optional[dict]:
    """The identity to record in `workdir` once the run writes its files (None: the one there
    stands). A resumed run whose recorded data differs raises ValueError (one line); a fresh
    start records its own data whatever an earlier attempt left."""
    from resnet_jax import files  # (etils: not in grain's workers, which import this module)
    current = {"version": VERSION, **pipeline.identity()}
    path = os.path.join(os.fspath(workdir), FILE)
    if not resumed:
        return current
    recorded = files.read_json(path)
    if recorded is None:
        say(f"data: {workdir} has no {FILE} (deleted to accept a change, or a run from before "
            "data records): recording the data it resumes on, unchecked")
        return current
    changed = differences(recorded, current)
    if changed:
        raise ValueError(
            f"--workdir {workdir}: the data changed since this run started ({'; '.join(changed)}"
            "): resuming would train every later epoch on another order of other images. Train "
            f"on the data it started with, or accept the change: delete {path} and run the "
            "same command again")
    return None


def record(workdir: str, identity: Optional[dict]) -> None:
    """Writes `identity` (from `check`) to the workdir's data.json (process 0's job)."""
    from resnet_jax import files
    if identity is not None:
        files.write_json(os.path.join(os.fspath(workdir), FILE), identity)

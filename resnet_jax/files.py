"""Small files of a run or a sweep (JSON, JSON lines), on any filesystem etils `epath` knows
(local, gs://, ...). One place, so every writer is crash-safe the same way and every reader
tolerates what a crash can leave.
"""
from __future__ import annotations

import json
import os
import uuid
from typing import Any

from etils import epath

PathLike = str | os.PathLike | epath.Path

# What gs:// paths need (setup.cfg's `gcs` extra): orbax and the workdir lease ask
# google-cloud-storage, epath reads and writes through gcsfs.
GCS_MODULES = ("google.cloud.storage", "gcsfs")


def installed(module: str) -> bool:
    """Whether `module` can be imported (found, without importing it)."""
    import importlib.util
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # no parent package; or a module set to None
        return False


def check_remote(path: PathLike, flag: str) -> None:
    """Refuses a gs:// `path` (given as `flag`, e.g. --workdir) when the `gcs` extra is not
    installed: one ValueError line naming it, raised by every process that checks, before
    anything is read or written (else the first client to import it fails with a traceback,
    on process 0 alone while the others wait for it)."""
    if not os.fspath(path).startswith("gs://"):
        return
    missing = [m for m in GCS_MODULES if not installed(m)]
    if missing:
        raise ValueError(f"{flag} {os.fspath(path)}: gs:// paths need the gcs extra "
                         f"({', '.join(missing)} missing): pip install 'resnet-jax[gcs]'")


def write_json(path: PathLike, value: Any, *, sort_keys: bool = False) -> None:
    """Write `value` as indented JSON so that a reader sees the old file or the new one, never
    half of one: the text goes to a temporary file beside it, which is then renamed (atomic on
    POSIX filesystems; on object stores the new object appears whole)."""
    path = epath.Path(path)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    tmp.write_text(json.dumps(value, indent=2, sort_keys=sort_keys, default=str) + "\n")
    tmp.replace(path)


def read_json(path: PathLike) -> Any:
    """The JSON value in `path`, or None when it is missing or unreadable."""
    try:
        return json.loads(epath.Path(path).read_text())
    except (OSError, ValueError):
        return None


def parse_jsonl(text: str) -> list[dict]:
    """Rows of JSON-lines text; lines that do not parse (the last line cut by a SIGKILL, say)
    are left out."""
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_jsonl(path: PathLike) -> list[dict]:
    """The rows of a JSON-lines file ([] when it does not exist); torn lines are left out."""
    path = epath.Path(path)
    try:
        return parse_jsonl(path.read_text())
    except FileNotFoundError:
        return []


def append_jsonl(path: PathLike, row: dict) -> None:
    """Append one row. A file whose last line was torn is repaired first, so the new row never
    joins the fragment of an old one. Object stores (gs://, ...) cannot append: there the file
    is rewritten whole (writers sharing one remote file can then lose each other's rows)."""
    path = epath.Path(path)
    line = json.dumps(row, default=str) + "\n"
    text = path.read_text() if path.exists() else ""
    if "://" in os.fspath(path) or (text and not text.endswith("\n")):
        rows = "".join(json.dumps(r, default=str) + "\n" for r in parse_jsonl(text))
        path.write_text(rows + line)
        return
    with path.open("a") as f:
        f.write(line)

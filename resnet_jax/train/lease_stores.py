"""Where a workdir's lease files live: a local (or NFS) directory, or a gs:// prefix.

Each store offers the same few operations on `lease.<n>.json`; only `create` must be atomic
(create-if-absent: `O_EXCL` locally, `if_generation_match=0` on GCS). `train.lease` decides
what to create, renew and delete.
"""
from __future__ import annotations

import contextlib
import os
import re
import uuid
from typing import Optional

NAME = re.compile(r"^lease\.(\d+)\.json$")


class LocalStore:
    """Lease files in a local (or NFS) directory."""
    look_every_s = 0.0  # a listing costs microseconds: before every write

    def __init__(self, directory: str):
        self.directory = directory

    def prepare(self) -> list[str]:
        """Makes the directory (and its parents); returns those it created, top first."""
        missing, d = [], os.path.abspath(self.directory)
        while not os.path.exists(d):
            missing.append(d)
            d = os.path.dirname(d)
        if not os.path.isdir(d):
            raise NotADirectoryError(20, "a file where a folder is expected", d)
        made = []
        for path in reversed(missing):
            try:
                os.mkdir(path)
            except FileExistsError:  # a run started at the same moment made it
                if not os.path.isdir(path):
                    raise
                continue
            made.append(path)
        return made

    def numbers(self) -> list[int]:
        return sorted(int(m.group(1)) for m in map(NAME.match, os.listdir(self.directory))
                      if m)

    def path(self, n: int) -> str:
        return os.path.join(self.directory, f"lease.{n}.json")

    def read(self, n: int) -> Optional[str]:
        try:
            with open(self.path(n), encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def create(self, n: int, text: str) -> bool:
        try:
            fd = os.open(self.path(n), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        return True

    def overwrite(self, n: int, text: str) -> None:
        tmp = os.path.join(self.directory, f".lease.{n}.{uuid.uuid4().hex[:8]}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, self.path(n))

    def delete(self, n: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path(n))

    def holds_only(self, n: int) -> bool:
        """Whether lease n is all the directory holds (a run that wrote nothing)."""
        return os.listdir(self.directory) == [f"lease.{n}.json"]

    def remove_if_empty(self, created: list[str]) -> None:
        for path in reversed(created):
            try:
                os.rmdir(path)
            except OSError:
                return


class GcsStore:
    """Lease objects under a gs:// prefix, through google-cloud-storage (no listing cache;
    creation with the precondition `if_generation_match=0`)."""
    # A listing is a request (tens of ms): at most one a second before writes, which a fast
    # run makes several times a second (its log rows reach GCS every 10 s anyway).
    look_every_s = 1.0

    def __init__(self, directory: str):
        from google.api_core import exceptions  # the gcs extra (orbax needs it too)
        from google.cloud import storage
        bucket, _, prefix = directory[len("gs://"):].partition("/")
        self.directory, self._exceptions = directory, exceptions
        self.prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
        self.bucket = storage.Client().bucket(bucket)

    def prepare(self) -> list[str]:
        return []  # no directories on an object store

    def numbers(self) -> list[int]:
        blobs = self.bucket.client.list_blobs(self.bucket, prefix=self.prefix + "lease.",
                                              delimiter="/")
        return sorted(int(m.group(1)) for m in
                      (NAME.match(b.name[len(self.prefix):]) for b in blobs) if m)

    def path(self, n: int) -> str:
        return f"{self.directory.rstrip('/')}/lease.{n}.json"

    def _blob(self, n: int):
        return self.bucket.blob(f"{self.prefix}lease.{n}.json")

    def read(self, n: int) -> Optional[str]:
        try:
            return self._blob(n).download_as_bytes().decode("utf-8")
        except self._exceptions.NotFound:
            return None

    def create(self, n: int, text: str) -> bool:
        try:
            self._blob(n).upload_from_string(text, content_type="application/json",
                                             if_generation_match=0)
        except self._exceptions.PreconditionFailed:
            return False
        return True

    def overwrite(self, n: int, text: str) -> None:
        self._blob(n).upload_from_string(text, content_type="application/json")

    def delete(self, n: int) -> None:
        with contextlib.suppress(self._exceptions.NotFound):
            self._blob(n).delete()

    def holds_only(self, n: int) -> bool:
        return False  # no folder to remove: the released lease stays

    def remove_if_empty(self, created: list[str]) -> None:
        pass


def store(workdir: str):
    if workdir.startswith("gs://"):
        return GcsStore(workdir)
    if "://" in workdir:
        return None  # s3://, ...: no atomic create-if-absent here; the run is not locked
    return LocalStore(workdir)

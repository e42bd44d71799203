"""The result record of `resnet-jax eval`: its file (`eval/<source>-<split>-<crops>.json` in
the workdir or model directory, written atomically by process 0) and its readable line."""
from __future__ import annotations

import datetime
import os
import re
from typing import Callable

from resnet_jax import files


def file_name(record: dict) -> str:
    """eval/<source>-<split>-<crops>[-best][-replica<i>].json, each part reduced to
    [A-Za-z0-9._]."""
    source = record["source"]
    if not source.startswith("tfds:") and source != "run":
        source = os.path.basename(os.path.normpath(source))
    parts = [source, record["split"], record["crops"]]
    if record.get("checkpoint") == "best":
        parts.append("best")
    if record.get("replica") is not None:
        parts.append(f"replica{record['replica']}")
    clean = [re.sub(r"[^A-Za-z0-9._]+", "_", p).strip("_") or "_" for p in parts]
    return "-".join(clean) + ".json"


def save(record: dict, directory: str, write: bool = True,
         say: Callable[[str], None] = print) -> dict:
    """Dates `record` and (if `write`, on process 0) writes it to `directory/eval/`; a
    directory that cannot be written is a warning, not an error."""
    import jax
    record["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if not write or jax.process_index() != 0:
        return record
    from etils import epath
    path = epath.Path(directory) / "eval" / file_name(record)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        files.write_json(path, record)
    except OSError as err:  # a read-only model directory: the result is still printed
        say(f"warning: could not write {path} ({err})")
    return record


def format_line(r: dict) -> str:
    """'cifar_resnet20 step 64000 on tfds:cifar10 test (10,000 images, center): top-1 error
    8.75%, top-5 error 0.30%, loss 0.3120'."""
    who = r["model"] + (f" step {r['step']}" if r.get("step") is not None else "")
    if r.get("replica") is not None:
        who += f" replica {r['replica']}"
    if r.get("checkpoint") == "best":
        who += " (best)"
    where = ("the run's validation split" if r["source"] == "run"
             else f"{r['source']} {r['split']}")
    crops = r["crops"] + (" " + "/".join(map(str, r["scales"])) if r.get("scales") else "")
    real = r.get("labels") == "real"
    images = (f"{r['count']:,} images with ReaL labels, {r['left_out']:,} without left out"
              if real else f"{r['count']:,} images")
    tag = " (ReaL)" if real else ""
    line = (f"{who} on {where} ({images}, {crops}): top-1 error {r['top1_error']:.2f}%{tag}, "
            f"top-5 error {r['top5_error']:.2f}%{tag}")
    return line + (f", loss {r['loss']:.4f}" if r.get("loss") is not None else "")

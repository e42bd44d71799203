"""A whole training run on a ``gs://`` workdir, against a local GCS emulator (the
``gcs_emulator`` fixture): the smoke config trains there, saves orbax checkpoints through
TensorStore's gcs driver, is preempted (SIGTERM), resumes from the remote checkpoint through the
CLI and ends bitwise where a local run of the same config ends; ``eval`` restores from there;
a torn remote checkpoint is set aside there; nothing is written to the local disk."""
import io
import json
import logging
import os
import signal
from contextlib import redirect_stdout
from pathlib import Path

import jax
import numpy as np
import pytest
from etils import epath

from resnet_jax import cli
from resnet_jax.config import load_config
from resnet_jax.train import loop, run
from resnet_jax.train.logging import read_metrics

pytestmark = pytest.mark.slow

SMOKE = str(Path(__file__).resolve().parents[2] / "configs/smoke.py")
REMOTE = "gs://bucket/run"


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The uninterrupted smoke run on the local disk: (workdir, results)."""
    workdir = str(tmp_path_factory.mktemp("local"))  # outside the (checked) current directory
    return workdir, loop.train_and_evaluate(load_config(SMOKE), workdir)


def _interrupted_run(workdir) -> int:
    """The smoke run on `workdir`, preempted by a real SIGTERM after step 4: it saves a
    checkpoint at the next step boundary and stops. Returns that step."""
    def preempt(step):
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)
    first = loop.train_and_evaluate(load_config(SMOKE), workdir, on_step=preempt)
    assert first == {"preempted": True, "step": first["step"]} and 4 < first["step"] < 8
    return first["step"]


def _params(workdir):
    _, _, variables = loop.load_trained(workdir)
    return jax.tree.leaves(jax.device_get(variables))


def _comparable(rows):
    return [{k: v for k, v in r.items() if k not in ("wall_time", "images_per_sec")}
            for r in rows]


def _steps(workdir) -> list[int]:
    checkpoints = run.checkpointer(workdir)
    try:
        return checkpoints.all_steps()
    finally:
        checkpoints.close()


def _cli(*argv) -> list[str]:
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(list(argv)) == 0
    return out.getvalue().splitlines()


def test_train_preempt_resume_and_eval_on_gs(gcs_emulator, local):
    """Slow: whole runs against a local GCS emulator (every checkpoint goes over HTTP)."""
    local, full = local

    # 1. A fresh run on gs://, preempted by a real SIGTERM after step 4: it saves a checkpoint
    # there at the next step boundary and stops.
    stopped = _interrupted_run(REMOTE)
    names = gcs_emulator.names()
    assert "run/results.json" not in names
    saved = f"run/checkpoints/{stopped}"
    assert {"run/config.json", "run/preprocessing.json", "run/class_names.txt",
            "run/metrics.jsonl", f"{saved}/commit_success.txt",
            f"{saved}/state/manifest.ocdbt"} <= set(names)
    # The arrays went through TensorStore's gcs driver (OCDBT data files in the bucket).
    assert any(n.startswith(f"{saved}/state/ocdbt.process_0/d/") for n in names)
    assert _steps(REMOTE)[-1] == stopped

    # 2. The same command again, through the CLI: resumes from the remote checkpoint, finishes.
    lines = _cli("train", "--config", SMOKE, "--workdir", REMOTE)
    assert [line for line in lines  # "resum(ed|ing) from the checkpoint of step N ... in W"
            if "resum" in line and f"step {stopped} " in line and REMOTE in line], lines
    assert lines[-1].startswith("done: final val top-1 error "), lines[-1]
    summary = json.loads((epath.Path(REMOTE) / "results.json").read_text())
    assert {k: summary[k] for k in ("best", "final")} == json.loads(
        json.dumps({"best": full["best"], "final": full["final"]}))

    # Bitwise the uninterrupted local run: parameters, the log, the files a run leaves.
    for a, b in zip(_params(local), _params(REMOTE), strict=True):
        np.testing.assert_array_equal(a, b)
    assert _comparable(read_metrics(REMOTE)) == _comparable(read_metrics(local))
    remote, here = epath.Path(REMOTE), epath.Path(local)
    for name in ("config.json", "preprocessing.json", "class_names.txt"):
        assert (remote / name).read_text() == (here / name).read_text(), name
    results = json.loads((remote / "results.json").read_text())
    expected = json.loads((here / "results.json").read_text())
    for key in ("model", "params", "macs", "best", "final", "steps"):
        assert results[key] == expected[key], key
    events = [n for n in gcs_emulator.names() if n.startswith("run/tb/events.out.tfevents")]
    assert events and all(len(gcs_emulator.read(n)) > 0 for n in events)

    # 3. eval restores the newest remote checkpoint and reproduces the final numbers.
    evaluated = json.loads(_cli("eval", "--workdir", REMOTE, "--json")[-1])
    assert evaluated["step"] == 8
    for key in ("top1_error", "top5_error", "loss"):
        assert evaluated[key] == full["final"][key]

    # Committed checkpoints only: no temporary directories, nothing outside the workdir.
    names = gcs_emulator.names()
    assert all(n.startswith("run/") for n in names)
    assert not [n for n in names if "tmp" in n.split("/")[-2] or n.endswith(".tmp")]
    assert _steps(REMOTE)[-1] == 8


def test_an_unreadable_remote_checkpoint_is_set_aside(gcs_emulator, local, caplog):
    """The newest remote checkpoint torn (its array data cut in half in the bucket) and a later
    step left uncommitted (a crash during its save): the next run deletes the uncommitted one,
    renames the torn one `<step>.unreadable` there, resumes from the one before and ends as the
    uninterrupted local run."""
    local, full = local
    stopped = _interrupted_run(REMOTE)
    data = [n for n in gcs_emulator.names()
            if n.startswith(f"run/checkpoints/{stopped}/state/") and "/d/" in n]
    assert data
    for name in data:
        content = gcs_emulator.read(name)
        epath.Path(f"gs://bucket/{name}").write_bytes(content[:len(content) // 2])

    # What a crash during a save leaves on GCS, where orbax writes a step in place and commits
    # it with commit_success.txt last: a step without it, which must not be resumed from.
    epath.Path(f"{REMOTE}/checkpoints/7/state/_METADATA").write_text("{")

    with caplog.at_level(logging.WARNING):
        resumed = loop.train_and_evaluate(load_config(SMOKE), REMOTE)
    assert resumed["final"] == full["final"]
    aside = f"{REMOTE}/checkpoints/{stopped}.unreadable"
    assert [r for r in caplog.messages if f"moved to {aside}" in r], caplog.messages
    names = gcs_emulator.names()
    assert f"run/checkpoints/{stopped}.unreadable/state/manifest.ocdbt" in names
    assert not [n for n in names if n.startswith(f"run/checkpoints/{stopped}/")]  # all moved
    assert not [n for n in names if n.startswith("run/checkpoints/7")]  # deleted, not set aside
    assert _steps(REMOTE) == _steps(local)
    for a, b in zip(_params(local), _params(REMOTE), strict=True):
        np.testing.assert_array_equal(a, b)

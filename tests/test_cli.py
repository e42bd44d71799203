"""The `resnet-jax` CLI: dispatch, bad fields refused by name, and a `train` process killed
with SIGTERM mid-way that resumes to parameters identical to an uninterrupted run."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from resnet_jax import cli
from resnet_jax.train.logging import read_metrics

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("override, named", [
    ("--config.optim.lrr=0.2", "optim.lrr"),
    ("--config.train.batch_size=big", "train.batch_size"),
    ("--config.model.shortcut=D", "A, B, C"),
])
def test_train_rejects_bad_fields_by_name(override, named, tmp_path, capsys):
    code = cli.main(["train", "--config", "configs/smoke.py", "--workdir", str(tmp_path),
                     override])
    assert code == 2
    assert named in capsys.readouterr().err
    assert not os.listdir(tmp_path)  # refused before anything was written


def test_unknown_argument_and_command(tmp_path, capsys):
    assert cli.main(["train", "--config", "configs/smoke.py", "--workdir", str(tmp_path),
                     "--epochs=3"]) == 2
    assert "--epochs=3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["fly"])


def test_describe_is_dispatched(capsys):
    assert cli.main(["describe", "cifar_resnet20"]) == 0
    out = capsys.readouterr().out
    assert "269,722" in out or "269722" in out


# Checkpoints every 4 steps (orbax saves dominate a tiny run); one evaluation at the end.
OVERRIDES = ["--config.train.checkpoint_every_steps=4", "--config.train.eval_every_steps=40"]


def _env(cache):
    return dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
                PYTHONPATH=str(ROOT))


def _train_cmd(workdir, steps, replicas=1):
    return [sys.executable, "-m", "resnet_jax.cli", "train", "--config",
            f"configs/smoke.py:steps={steps},replicas={replicas}", "--workdir", str(workdir),
            "--cpu-devices", "8", *OVERRIDES]


def _wait_for_rows(workdir, proc, rows=2, timeout=240):
    path = Path(workdir) / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) >= rows:
            return
        time.sleep(0.05)
    raise AssertionError(f"no metrics rows in time; rc={proc.poll()}")


@pytest.mark.slow
@pytest.mark.parametrize("replicas", [1, 2])
def test_sigterm_subprocess_resume_is_bitwise(tmp_path, replicas):
    from resnet_jax.config import load_config
    from resnet_jax.train import loop
    steps, workdir, cache = 40, tmp_path / "run", tmp_path / "cache"
    proc = subprocess.Popen(_train_cmd(workdir, steps, replicas), cwd=ROOT, env=_env(cache),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_rows(workdir, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "preempted (SIGTERM)" in out
    assert not (workdir / "results.json").exists()
    resumed = subprocess.run(_train_cmd(workdir, steps, replicas), cwd=ROOT, env=_env(cache),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming from the checkpoint of step" in resumed.stdout
    # The uninterrupted run, in this process (also 8 CPU devices: the same programs).
    config = load_config(f"configs/smoke.py:steps={steps},replicas={replicas}", OVERRIDES)
    reference = tmp_path / "reference"
    old_cache = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(cache))  # reuse the subprocesses' programs
    try:
        loop.train_and_evaluate(config, str(reference))
    finally:
        jax.config.update("jax_compilation_cache_dir", old_cache)
    for i in (range(replicas) if replicas > 1 else (None,)):
        a = jax.tree.leaves(jax.device_get(loop.load_trained(str(workdir), replica=i)[2]))
        b = jax.tree.leaves(jax.device_get(loop.load_trained(str(reference), replica=i)[2]))
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    rows = [[{k: v for k, v in r.items() if k not in ("wall_time", "images_per_sec")}
             for r in read_metrics(str(w))] for w in (workdir, reference)]
    assert rows[0] == rows[1]

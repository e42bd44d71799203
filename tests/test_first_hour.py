"""What a new user sees on the console, through the real CLI in a subprocess: the phases of a
run before its first step, a finished run that says so, one clean line for a corrupt image
(and no files left behind), TensorFlow's log noise kept off the console."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# What libjpeg itself prints (fprintf to the process's stderr, below any log level) when
# TensorFlow's decoder meets the corrupt file: the only lines besides ours. Silencing them
# would mean capturing the process's stderr, which could swallow a crash's last words.
LIBJPEG = ("Input file read error", "Improper call to JPEG library", "Corrupt JPEG data",
           "Premature end of JPEG file", "Not a JPEG file")


def _cli(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run([sys.executable, "-m", "resnet_jax.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_run_says_each_phase_before_its_first_step_and_a_rerun_says_it_is_done(tmp_path):
    """Slow: two `train` processes: what a new user sees is a real process's console."""
    workdir = tmp_path / "run"
    first = _cli("train", "--config", "configs/smoke.py", "--workdir", str(workdir))
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()

    def index(prefix):
        return next(i for i, line in enumerate(lines) if line.startswith(prefix))

    order = [index(p) for p in ("data: loading synthetic", "data: 320 generated images",
                                "model: cifar_resnet8: compiling and running its "
                                "initialization ...",
                                "model: cifar_resnet8, 5,006 parameters",
                                "starting a new run of 8 steps", "compiling the training step",
                                "step 2: the first dispatch took", "step 4: val loss")]
    assert order == sorted(order), lines
    # The end: one line, not results.json's content as JSON (float noise and all).
    assert lines[-1].startswith("done: final val top-1 error ") and lines[-1].endswith(
        f"{workdir / 'results.json'} has the rest"), lines[-1]
    assert not [line for line in lines if line.startswith("{")], lines
    assert first.stderr.strip() == ""   # no TensorFlow / XLA log lines
    again = _cli("train", "--config", "configs/smoke.py", "--workdir", str(workdir))
    assert again.returncode == 0, again.stderr
    assert "already complete: step 8 of 8" in again.stdout
    assert "compiling" not in again.stdout and "resuming" not in again.stdout
    assert "model: cifar_resnet8: restoring the newest checkpoint ..." in again.stdout
    assert not [line for line in again.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_a_corrupt_image_is_one_line_naming_it_and_nothing_is_written(tmp_path):
    """Slow: a `train` process: its console and exit code are what is tested."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 3)):
        for cls in ("a", "b"):
            os.makedirs(tmp_path / "data" / split / cls)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 40, 3), np.uint8)).save(
                    tmp_path / "data" / split / cls / f"{i}.jpg")
    bad = tmp_path / "data" / "train" / "a" / "3.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    workdir = tmp_path / "run"
    out = _cli("train", "--config", "configs/smoke.py", "--workdir", str(workdir),
               "--config.data.pipeline=streaming", "--config.data.source=folder",
               f"--config.data.path={tmp_path / 'data'}", "--config.data.num_val_examples=0",
               "--config.data.train_augment=scale",
               "--config.data.image_size=16", "--config.data.eval_resize=20",
               "--config.data.normalize=per_channel", "--config.train.batch_size=8",
               "--config.train.eval_batch_size=8")
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if not line.startswith(LIBJPEG)]
    assert len(errors) == 1, out.stderr
    assert errors[0].startswith(f"resnet-jax train: error: cannot decode image '{bad}' "
                                "(training step 1;"), errors[0]
    assert "np.str_" not in errors[0] and "function_node" not in errors[0]
    assert not workdir.exists()   # no config.json, tb/ or empty checkpoints/ left behind

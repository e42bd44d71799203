"""The streaming path where TensorFlow is not installed: `prepare`, `train`, `eval` and a
`sweep` through the CLI in a subprocess whose import system cannot find `tensorflow` (as
if it were not installed: tfds and etils look for it with `find_spec`, so putting None in
sys.modules would not do)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

RUNNER = r'''
import importlib.machinery, sys

class NoTensorFlow(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)

sys.meta_path[:] = [NoTensorFlow if f is importlib.machinery.PathFinder else f
                    for f in sys.meta_path]
try:
    import tensorflow  # noqa: F401
    raise SystemExit("tensorflow is importable: the test would prove nothing")
except ImportError:
    pass
from resnet_jax.cli import main
commands, current = [], []
for a in sys.argv[1:]:
    if a == "--next":
        commands.append(current)
        current = []
    else:
        current.append(a)
for command in commands + [current]:
    rc = main(command)
    print(f"== {command[0]} exit {rc}", flush=True)
    if rc:
        raise SystemExit(rc)
assert "tensorflow" not in sys.modules, "tensorflow was imported"
print("== no tensorflow")
'''

STREAMING = ["--config.data.pipeline=streaming", "--config.data.num_val_examples=0",
             "--config.data.image_size=16", "--config.data.eval_resize=20",
             "--config.data.normalize=per_channel", "--config.data.train_augment=scale",
             "--config.train.batch_size=8", "--config.train.eval_batch_size=8"]


@pytest.mark.slow
def test_prepare_train_eval_and_sweep_without_tensorflow(tmp_path, helpers):
    """Slow: prepare, train, eval and a sweep in one process where TensorFlow cannot be
    imported (the process is what is tested)."""
    for split, n in (("train", 8), ("val", 3)):
        for cls in ("a", "b"):
            helpers.write_folder(str(tmp_path / "data" / split), (cls,), per_class=n,
                                 size=(40, 30), seed=len(cls) + n)
    tar = tmp_path / "data.tar"
    subprocess.run(["tar", "cf", str(tar), "-C", str(tmp_path / "data"), "train", "val"],
                   check=True)
    tfds_dir, run, sweep = tmp_path / "tfds", tmp_path / "run", tmp_path / "sweep"
    args = ["prepare", "folder", str(tmp_path / "data"), "--name", "no_tf_photos",
            "--data-dir", str(tfds_dir), "--next",
            "train", "--config", "configs/smoke.py:steps=2", "--workdir", str(run),
            "--config.data.source=tfds", "--config.data.name=no_tf_photos",
            f"--config.data.data_dir={tfds_dir}", "--config.train.eval_every_steps=2",
            *STREAMING, "--next",
            "eval", "--workdir", str(run), "--next",
            "eval", "--workdir", str(run), "--data", "tfds:no_tf_photos", "--split",
            "validation", "--json", "--next",
            "sweep", "configs/sweeps/smoke.py:steps=2", "--workdir", str(sweep), "--member", "0",
            *[f"--set={a[len('--config.'):]}" for a in STREAMING],
            "--set=data.source=tar", f"--set=data.path={tar}", "--set=data.workers=1"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    # Tiny programs: XLA's unoptimized backend halves their compile time (3 compilations).
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    out = subprocess.run([sys.executable, "-c", RUNNER, *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for command in ("prepare", "train", "eval", "sweep"):
        assert f"== {command} exit 0" in out.stdout
    assert "== no tensorflow" in out.stdout
    assert "Failed to import TensorFlow" not in out.stdout + out.stderr  # tfds' banner
    assert (run / "results.json").exists()
    assert "step 2: val loss" in out.stdout and "(6 examples)" in out.stdout
    assert '"source": "tfds:no_tf_photos", "split": "validation"' in out.stdout  # eval --data
    assert '"count": 6' in out.stdout


def test_no_data_test_module_skips_itself_where_tensorflow_is_missing():
    """The streaming path is for machines without TensorFlow: a module-level `importorskip`
    of it skips every test of the module exactly there (tests/data/test_streaming.py had
    one); a test that needs TensorFlow to write a fixture skips alone."""
    module_level = re.compile(r"^\S.*importorskip\(\s*[\"']tensorflow", re.MULTILINE)
    found = [p.name for p in Path(__file__).parent.glob("test_*.py")
             if module_level.search(p.read_text())]
    assert found == []

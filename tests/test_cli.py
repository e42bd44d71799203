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


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))


def _train_cmd(workdir, steps):
    return [sys.executable, "-m", "resnet_jax.cli", "train", "--config",
            f"configs/smoke.py:steps={steps}", "--workdir", str(workdir),
            "--cpu-devices", "8", *OVERRIDES]


def _wait_for_rows(workdir, proc, rows=2, timeout=240):
    path = Path(workdir) / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) >= rows:
            return
        time.sleep(0.05)
    raise AssertionError(f"no metrics rows in time; rc={proc.poll()}")


def _checkpoint_steps(workdir) -> list[int]:
    return [int(d) for d in os.listdir(Path(workdir) / "checkpoints") if d.isdigit()]


# A session leader's first terminal opened becomes its controlling one (closing it sends
# SIGHUP); then the command runs in it.
_TERMINAL = ("import os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\n"
             "for i in (0, 1, 2): os.dup2(fd, i)\nos.execv(sys.executable, sys.argv[2:])")


def _in_a_terminal(cmd):
    """`cmd` (starting with sys.executable) in a new session with a terminal of its own, read
    in a thread: (process, a function that stops the reading and returns the terminal's fd,
    to close it)."""
    import pty
    import threading
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", _TERMINAL, os.ttyname(slave), *cmd],
                            cwd=ROOT, env=_env(), start_new_session=True)
    os.close(slave)
    stop = threading.Event()

    def read():  # a terminal nobody reads fills up and blocks the writer
        import select
        while not stop.is_set():
            if select.select([master], [], [], 0.1)[0]:
                try:
                    os.read(master, 4096)
                except OSError:  # EIO while no process has the terminal open
                    stop.wait(0.1)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def drained():  # not read while it is closed (a read in progress keeps it open)
        stop.set()
        reader.join()
        return master
    return proc, drained


def _rows(workdir) -> int:
    path = Path(workdir) / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.slow
def test_a_second_copy_sigterm_ctrl_c_then_resume_is_bitwise(tmp_path, capsys):
    """Through the CLI, one workdir: a second copy of a running `train` is refused in one
    line naming the first (exit 3; both used to run, every metrics row twice); SIGTERM saves
    and exits 0; so does a Ctrl-C (it was a KeyboardInterrupt traceback, exit 130, nothing
    saved) and a closed terminal (SIGHUP killed the run, unsaved); the last run ends with the
    parameters and metrics rows of an uninterrupted one.
    A run of 2 replicas stops and resumes through the same loop and handler:
    tests/train/test_loop_replicas.py resumes one after a real SIGTERM, in-process.

    Slow: 4 `train` processes (each starts Python and JAX, and restores), since signals, exit
    codes and a second process on the workdir are what is tested."""
    from resnet_jax.config import load_config
    from resnet_jax.train import loop
    steps, workdir = 40, tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(workdir, steps), cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_rows(workdir, proc)
    second = ["train", "--config", f"configs/smoke.py:steps={steps}",
              "--workdir", str(workdir), *OVERRIDES]
    assert cli.main(second) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is in use by another run (host " in err[0], err
    assert f"pid {proc.pid}, since " in err[0]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "preempted (SIGTERM)" in out
    assert not (workdir / "results.json").exists()
    rows = _rows(workdir)

    proc = subprocess.Popen(_train_cmd(workdir, steps), cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_rows(workdir, proc, rows=rows + 1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "Ctrl-C: saving a checkpoint at the next step boundary" in out
    assert "interrupted (Ctrl-C): saved the checkpoint of step" in out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out

    # The terminal the run prints to is closed (SIGHUP; every later write fails): it saves.
    saved = _checkpoint_steps(workdir)
    proc, drained = _in_a_terminal(_train_cmd(workdir, steps))
    _wait_for_rows(workdir, proc, rows=_rows(workdir) + 1)
    os.close(drained())
    assert proc.wait(timeout=120) == 0
    assert max(_checkpoint_steps(workdir)) > max(saved), (saved, _checkpoint_steps(workdir))

    resumed = subprocess.run(_train_cmd(workdir, steps), cwd=ROOT, env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming from the checkpoint of step" in resumed.stdout
    # The uninterrupted run, in this process (also 8 CPU devices: the same programs).
    config = load_config(f"configs/smoke.py:steps={steps}", OVERRIDES)
    reference = tmp_path / "reference"
    loop.train_and_evaluate(config, str(reference))
    a = jax.tree.leaves(jax.device_get(loop.load_trained(str(workdir))[2]))
    b = jax.tree.leaves(jax.device_get(loop.load_trained(str(reference))[2]))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    rows = [[{k: v for k, v in r.items() if k not in ("wall_time", "images_per_sec")}
             for r in read_metrics(str(w))] for w in (workdir, reference)]
    assert rows[0] == rows[1]


WATCHER = """
import sys, time
from resnet_jax.train.preemption import PreemptionWatcher
with PreemptionWatcher() as watcher:
    print("ready", flush=True)
    while not watcher.should_stop(0):
        time.sleep(0.01)
    print("saving", flush=True)
    time.sleep(60)   # a save that takes long
print("saved", flush=True)
"""


def test_a_second_ctrl_c_aborts_at_once():
    """The first Ctrl-C asks for a save at the next step boundary; a second one, while that
    save runs, ends the process at once (by SIGINT), without waiting for it."""
    proc = subprocess.Popen([sys.executable, "-c", WATCHER], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    assert proc.stdout.readline().strip() == "saving"
    started = time.time()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGINT and time.time() - started < 10
    out, err = proc.communicate()
    assert "saved" not in out and "Traceback" not in err
    assert err.strip() == ("Ctrl-C: saving a checkpoint at the next step boundary, then "
                           "stopping (Ctrl-C again to abort at once, without saving)")


def test_an_interrupted_command_exits_130_without_the_interpreters_teardown(monkeypatch):
    """Ctrl-C before a run's loop: 130 through os._exit (the teardown under XLA's threads
    segfaulted, exit 139, in about half of the interrupts during model compilation); every
    other exit code through sys.exit."""
    exits = []
    monkeypatch.setattr(cli.os, "_exit", lambda code: exits.append(("os._exit", code)))
    for code in (130, 0, 2):
        monkeypatch.setattr(cli, "main", lambda code=code: code)
        try:
            cli.console()
        except SystemExit as e:
            exits.append(("sys.exit", e.code))
    assert exits == [("os._exit", 130), ("sys.exit", 130), ("sys.exit", 0), ("sys.exit", 2)]
    import configparser
    scripts = configparser.ConfigParser()
    scripts.read(ROOT / "setup.cfg")
    assert "resnet_jax.cli:console" in scripts["options.entry_points"]["console_scripts"]


def test_orbax_lines_a_user_need_not_see_are_dropped():
    import logging
    keep = cli._OrbaxErrorsFilter().filter

    def record(path, level, msg):
        return logging.LogRecord("absl", level, path, 1, msg, None, None)
    orbax = "/site-packages/orbax/checkpoint/checkpoint_manager.py"
    assert not keep(record(orbax, logging.WARNING, "Given directory is read only=/w/checkpoints"))
    assert not keep(record(orbax, logging.WARNING, "CheckpointManagerOptions.read_only=True, "
                                                   "setting save_interval_steps=0."))
    assert not keep(record(orbax, logging.ERROR, "[thread 3] save failed"))
    assert keep(record(orbax, logging.WARNING, "something else"))
    assert keep(record("/resnet_jax/train/loop.py", logging.ERROR, "Given directory is read only"))


def _no_data_load(monkeypatch):
    """Fails the test if a run gets as far as loading its data."""
    import resnet_jax.data as data_lib

    def loaded(*args, **kwargs):
        raise AssertionError("the data was loaded before the error")
    monkeypatch.setattr(data_lib, "make_pipeline", loaded)


def test_a_config_with_a_syntax_error_is_one_line(tmp_path, capsys):
    recipe = tmp_path / "bad.py"
    recipe.write_text("import ml_collections\n\ndef get_config(arg=None)\n    return None\n")
    assert cli.main(["train", "--config", str(recipe), "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"resnet-jax train: error: --config: {recipe}:3: syntax error: expected ':'"]
    assert not (tmp_path / "w").exists()


def test_a_recipe_that_fails_is_one_line_naming_its_line(tmp_path, capsys):
    recipe = tmp_path / "broken.py"
    recipe.write_text("def get_config(arg=None):\n    return undefined_name\n")
    assert cli.main(["train", "--config", str(recipe), "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"resnet-jax train: error: --config: {recipe}:2: NameError: name "
                   "'undefined_name' is not defined"]


def test_a_file_where_the_workdir_folder_should_be_is_one_line_before_the_data(
        tmp_path, capsys, monkeypatch):
    (tmp_path / "README.md").write_text("hello")
    _no_data_load(monkeypatch)
    workdir = tmp_path / "README.md" / "run"
    assert cli.main(["train", "--config", "configs/smoke.py", "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"resnet-jax train: error: --workdir {workdir} cannot be written: a file "
                   f"where a folder is expected ({tmp_path / 'README.md'})"]


def _read_only(monkeypatch, root):
    """`root` read-only: by its mode for a normal user; for root (who writes anyway) the
    error a read-only mount gives, from every file and folder Python creates under it."""
    if os.geteuid() != 0:
        os.chmod(root, 0o555)
        return
    import errno
    real_open, real_mkdir = os.open, os.mkdir

    def guard(path):
        if os.path.abspath(path).startswith(str(root)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    def open_(path, flags, *args, **kwargs):
        if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            guard(path)
        return real_open(path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        guard(path)
        return real_mkdir(path, *args, **kwargs)
    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "mkdir", mkdir)


@pytest.mark.parametrize("exists", [False, True])
def test_a_read_only_workdir_is_one_line_before_the_data(tmp_path, capsys, monkeypatch,
                                                        exists):
    root = tmp_path / "ro"
    root.mkdir()
    workdir = root / "run"
    if exists:
        workdir.mkdir()
    _read_only(monkeypatch, root)
    _no_data_load(monkeypatch)
    try:
        rc = cli.main(["train", "--config", "configs/smoke.py", "--workdir", str(workdir)])
    finally:
        os.chmod(root, 0o755)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"resnet-jax train: error: --workdir {workdir} cannot be "
                             "written: ")
    assert "Read-only file system" in err[0] or "Permission denied" in err[0]

"""How soon a stop request (SIGTERM, Ctrl-C, a closed terminal) becomes a saved checkpoint:
the save starts within one training step of the signal, whether the step is slow on the
device or its data is slow to come, says so at once, and the run then resumes bitwise as the
uninterrupted one (`finished`, tests/train/conftest.py). Smoke runs on 8 fake CPU devices."""
import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.config import load_config
from resnet_jax.train import actions, dispatch, loop
from resnet_jax.train.logging import Progress

STEP_S = 1.0  # the slow step's (or the slow read's) seconds
# Dispatches of 4 steps (cut at the eval/checkpoint step 4 as the smoke recipe's 2 are): the
# same numbers and rows as `finished`, but 3 steps behind the first one to stop early.
FOUR = ["--config.train.steps_per_dispatch=4"]


def _record(monkeypatch):
    """{'save': [(step, time)], 'said': [(text, time)]}: each save the loop starts and each
    line it says through the progress display."""
    seen = {"save": [], "said": []}
    real_save, real_message = actions.save, Progress.message

    def save(s, step, *args, **kw):
        seen["save"].append((step, time.monotonic()))
        return real_save(s, step, *args, **kw)

    def message(self, text):
        seen["said"].append((text, time.monotonic()))
        return real_message(self, text)
    monkeypatch.setattr(actions, "save", save)
    monkeypatch.setattr(Progress, "message", message)
    return seen


def _slow(_):
    time.sleep(STEP_S)
    _slow.ends.append(time.monotonic())
    if len(_slow.ends) == 1:  # the end of the first step: the signal
        _slow.sent = time.monotonic()
        os.kill(os.getpid(), _slow.signum)
    return np.float32(0)


def _resumes_as_finished(helpers, finished, workdir):
    full_dir, full = finished
    second = loop.train_and_evaluate(load_config(helpers.SMOKE, FOUR), workdir)
    assert second["final"] == full["final"] and second["best"] == full["best"]
    for a, b in zip(helpers.params(full_dir), helpers.params(workdir), strict=True):
        np.testing.assert_array_equal(a, b)
    assert helpers.rows(workdir) == helpers.rows(full_dir)


def test_a_slow_step_saves_within_one_step_of_sigterm(helpers, finished, tmp_path,
                                                        monkeypatch, capfd):
    """Every step sleeps STEP_S inside the compiled program (a host callback), as a CPU step of
    a real net takes its time on the device. A CPU dispatch is k calls of one compiled step,
    returned before they run (JAX dispatches asynchronously): the stop asked between them was
    answered only once all k had run (the README's run saved 41 steps, 73 s, after a Ctrl-C).

    Slow: one compilation of the step with its callback (not cached), and 1-2 slow steps."""
    real_step = dispatch.train_step
    _slow.ends, _slow.signum = [], signal.SIGTERM

    def slow_step(state, batch, rng, **kw):
        state, metrics = real_step(state, batch, rng, **kw)
        zero = jax.pure_callback(_slow, jax.ShapeDtypeStruct((), jnp.float32), metrics["loss"])
        return state, dict(metrics, loss=metrics["loss"] + zero)
    monkeypatch.setattr(dispatch, "train_step", slow_step)
    seen = _record(monkeypatch)
    workdir = str(tmp_path / "w")

    first = loop.train_and_evaluate(load_config(helpers.SMOKE, FOUR), workdir)
    returned = time.monotonic()
    (step, started), = seen["save"]
    assert first == {"preempted": True, "step": step}
    # The step running when the signal came ends the dispatch: the save starts within it.
    assert step == 1 and started - _slow.sent < STEP_S, (step, started - _slow.sent)
    said = [text for text, _ in seen["said"] if "checkpoint of step" in text]
    assert said == [f"preempted (SIGTERM): saving the checkpoint of step {step} ...",
                    f"preempted (SIGTERM): saved the checkpoint of step {step}; run the same "
                    "command again to resume"], said
    err = capfd.readouterr().err
    assert "SIGTERM: saving a checkpoint at the next step boundary" in err, err
    print(f"signal -> save started {started - _slow.sent:.2f} s, -> saved and returned "
          f"{returned - _slow.sent:.2f} s; one step >= {STEP_S} s")
    monkeypatch.undo()
    _resumes_as_finished(helpers, finished, workdir)


def test_a_stop_while_the_data_is_slow_is_saved_at_once(helpers, finished, tmp_path,
                                                        monkeypatch):
    """The loop waits for the next dispatch's data (STEP_S per step, 4 steps) when SIGTERM
    comes: it stops waiting, and the checkpoint of the step it has (4) is saved at once (the
    loop waited for the whole chunk, ran a step of it and saved step 5, 4 s later).

    Slow: the source's slow reads of the abandoned chunk finish before the run returns."""
    signum = signal.SIGTERM
    at_4 = threading.Event()  # the reads of steps 4-7 (4 s) start when the loop is at 4
    helpers.slow_source(monkeypatch,
                        lambda step: at_4.wait(60) and STEP_S if step >= 4 else 0.0)
    seen = _record(monkeypatch)
    sent = []

    def signal_at(step):  # the loop has saved step 4
        if step == 4:
            at_4.set()
            sent.append(time.monotonic())
            os.kill(os.getpid(), signum)
    workdir = str(tmp_path / "w")

    first = loop.train_and_evaluate(load_config(helpers.SMOKE, FOUR), workdir, on_step=signal_at)
    assert first == {"preempted": True, "step": 4}
    assert [step for step, _ in seen["save"]] == [4]  # the eval step's, none needed after it
    (text, at), = [(t, at) for t, at in seen["said"] if "saved the checkpoint" in t]
    assert text.startswith("preempted (SIGTERM): saved the checkpoint of step 4;"), text
    assert at - sent[0] < STEP_S, at - sent[0]
    monkeypatch.undo()
    _resumes_as_finished(helpers, finished, workdir)


def test_sighup_turns_a_closed_terminal_into_dev_null():
    """After a closed terminal, every write to it fails (EIO): the run's last lines would fail
    the save. The handler points the closed terminal's descriptors at /dev/null, and only
    those (a live terminal, a pipe or a file stay what they are)."""
    import pty

    from resnet_jax.train.preemption import silence_closed_terminal
    closed, closed_tty = pty.openpty()
    live, live_tty = pty.openpty()
    r, w = os.pipe()
    try:
        os.close(closed)  # that terminal is gone
        with pytest.raises(OSError):
            os.write(closed_tty, b"x\n")
        silence_closed_terminal((closed_tty, live_tty, w))
        assert os.write(closed_tty, b"lost\n") == 5
        os.write(live_tty, b"seen\n")
        assert os.read(live, 4) == b"seen"
        os.write(w, b"kept\n")
        assert os.read(r, 5) == b"kept\n"
    finally:
        for fd in (closed_tty, live, live_tty, r, w):
            os.close(fd)


def test_a_scan_dispatches_nothing_after_the_stop(helpers, tmp_path, monkeypatch, capsys):
    """On an accelerator a dispatch is one `lax.scan` that cannot stop midway: a request seen
    before a dispatch starts ends the run there (it ran the next dispatch first, and saved 4
    instead of 2), and the run resumes to the uninterrupted scan run's numbers. A dispatch
    longer than `actions.MAX_DISPATCH_S` is said once, with the steps_per_dispatch that fits
    (the limit set to 0 s for the uninterrupted run, so that its dispatches are "long"; the
    first log window, which holds the compilation, is not judged).

    Slow: the scan is compiled here (the other runs use the CPU python loop), and an
    uninterrupted scan run is the reference."""
    monkeypatch.setattr(dispatch, "loop_kind", lambda loop, mesh: "scan")
    workdir, full_dir = str(tmp_path / "w"), str(tmp_path / "full")

    def signal_at(step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
    first = loop.train_and_evaluate(load_config(helpers.SMOKE), workdir, on_step=signal_at)
    assert first == {"preempted": True, "step": 2}
    capsys.readouterr()
    with monkeypatch.context() as patched:
        patched.setattr(actions, "MAX_DISPATCH_S", 0.0)
        full = loop.train_and_evaluate(load_config(helpers.SMOKE), full_dir,
                                       on_step=lambda step: print(f"<step {step} done>"))
    out = capsys.readouterr().out
    said = [line for line in out.splitlines() if line.startswith("a dispatch of 2 steps takes")]
    assert len(said) == 1 and "--config.train.steps_per_dispatch=1 or less" in said[0], said
    assert out.index("<step 2 done>") < out.index(said[0]) < out.index("<step 4 done>")
    second = loop.train_and_evaluate(load_config(helpers.SMOKE), workdir)
    assert "a dispatch of" not in capsys.readouterr().out  # tiny steps: under 10 s
    assert second["final"] == full["final"]
    for a, b in zip(helpers.params(full_dir), helpers.params(workdir), strict=True):
        np.testing.assert_array_equal(a, b)
    assert helpers.rows(workdir) == helpers.rows(full_dir)


def test_a_stop_before_the_first_step_saves_nothing_and_the_rerun_starts_afresh(
        helpers, finished, tmp_path, monkeypatch, capsys):
    """SIGTERM while the first chunk's data is read: the run stops at once with nothing to
    save (it waited for the chunk, compiled and ran a step to save it), and the same command
    again is a new run that ends as the uninterrupted one."""
    def delay(step):
        if step == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        return STEP_S
    helpers.slow_source(monkeypatch, delay)
    workdir = str(tmp_path / "w")
    assert loop.train_and_evaluate(load_config(helpers.SMOKE), workdir) == {
        "preempted": True, "step": 0}
    out = capsys.readouterr().out
    assert "preempted (SIGTERM): stopped before the first step; nothing new to save" in out
    assert "compiling the training step" not in out
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))
    monkeypatch.undo()
    second = loop.train_and_evaluate(load_config(helpers.SMOKE), workdir)
    full_dir, full = finished
    assert second["final"] == full["final"]
    assert helpers.rows(workdir) == helpers.rows(full_dir)

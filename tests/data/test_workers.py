"""grain's worker processes: they leave SIGTERM and SIGINT to the training process (see
test_streaming.py), so they must end by themselves when that process dies without closing
them (SIGKILL, the OOM killer, a second Ctrl-C)."""
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# A training process: a streaming pipeline with 2 workers that has read its first batch (so
# the workers are running, and reading ahead), then nothing until it is killed.
PARENT = r'''
import importlib.util, multiprocessing, sys, time

if __name__ == "__main__":
    spec = importlib.util.spec_from_file_location("helpers", sys.argv[1])
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    p = helpers.make(helpers.stream_config(path=sys.argv[2], workers=2), batch=4)
    p.train_chunk(0, 1)
    print(" ".join(str(c.pid) for c in multiprocessing.active_children()), flush=True)
    time.sleep(600)
'''


def running(pid: int) -> bool:
    """The process exists and has not ended (a zombie waiting for a reaper has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_workers_end_within_seconds_of_their_parents_sigkill(tmp_path, helpers):
    """Slow: a real training process and its 2 spawned grain workers (each imports numpy,
    OpenCV and grain: ~10 s here); the process is what is tested."""
    for split, n in (("train", 4), ("val", 1)):
        helpers.write_folder(str(tmp_path / "data" / split), ("a", "b"), per_class=n,
                             size=(40, 40))
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script), os.path.join(HERE, "conftest.py"),
                               str(tmp_path / "data")], stdout=subprocess.PIPE, text=True)
    workers: list = []
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(workers) == 2 and all(map(running, workers))
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        killed = time.monotonic()
        while any(map(running, workers)) and time.monotonic() - killed < 20:
            time.sleep(0.05)
        took = time.monotonic() - killed
        print(f"workers ended {took:.2f} s after their parent's SIGKILL")
        assert not any(map(running, workers)), f"workers still running after {took:.0f} s"
        assert took < 5
    finally:
        parent.kill()
        for pid in filter(running, workers):  # only ours: the workers this test started
            os.kill(pid, signal.SIGKILL)

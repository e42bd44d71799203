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


def eval_tree(root, helpers) -> str:
    helpers.write_folder(str(root / "train"), ("a", "b", "c"), per_class=2, size=(40, 40))
    helpers.write_folder(str(root / "val"), ("a", "c"), per_class=3, size=(40, 40), seed=1)
    (root / "train" / "d").mkdir()  # an empty class folder: not a class
    return str(root)


def test_evaluations_reuse_their_workers_and_each_reads_one_whole_pass(tmp_path, helpers,
                                                                       monkeypatch):
    """Slow: 2 worker processes, spawned twice (each imports numpy, OpenCV and grain); the
    processes are what is tested. Two evaluations in a row spawn the workers once (they
    were spawned anew for each: 12-16 s an evaluation of 100 images on this machine, 0.4 s
    in-process), each the in-process batches; an evaluation left after its first batch does
    not shift the next one; close() ends them."""
    import multiprocessing
    import multiprocessing.context

    import numpy as np
    start, spawned = multiprocessing.context.SpawnProcess.start, []

    def counted(self):
        start(self)
        spawned.append(self.pid)

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", counted)
    path = eval_tree(tmp_path, helpers)
    ref = list(helpers.make(helpers.stream_config(path=path), batch=4, eval_batch=4)
               .eval_batches())
    p = helpers.make(helpers.stream_config(path=path, workers=2), batch=4, eval_batch=4)

    def same(batches):
        assert len(batches) == len(ref) == 2
        for a, b in zip(batches, ref, strict=True):
            for key in ("image", "label", "mask"):
                np.testing.assert_array_equal(a[key], b[key])

    same(list(p.eval_batches()))
    same(list(p.eval_batches()))
    assert len(spawned) == 2
    left = p.eval_batches()
    next(left)
    left.close()
    same(list(p.eval_batches()))
    p.close()
    assert not [c for c in multiprocessing.active_children() if c.is_alive()]


def test_an_evaluation_lists_no_training_file(tmp_path, helpers, monkeypatch):
    """`build_for_eval` (resnet-jax eval, the loop's restore_for_eval) of a run with an
    evaluation folder: the training classes from the folder names alone (ImageNet's train
    listing: 1.28M files; 100,000 took 1.2 s here, and more on a network filesystem), the
    same classes, labels and batches as the training pipeline's."""
    import numpy as np

    from resnet_jax.config import load_config
    from resnet_jax.data import folders
    from resnet_jax.train import run as run_lib
    path, listed, scan = eval_tree(tmp_path, helpers), [], folders.scan_folder
    config = load_config("configs/smoke.py", [
        "--config.data.pipeline=streaming", "--config.data.source=folder",
        f"--config.data.path={path}", "--config.data.num_val_examples=0",
        "--config.data.image_size=32", "--config.data.eval_resize=40",
        "--config.data.normalize=per_channel", "--config.data.train_augment=scale",
        "--config.train.batch_size=4", "--config.train.eval_batch_size=4"])
    full = helpers.make(config.data, batch=4, eval_batch=4)
    monkeypatch.setattr(folders, "scan_folder", lambda root: listed.append(root) or scan(root))
    run = run_lib.build_for_eval(config)
    assert listed == [os.path.join(path, "val")]
    assert run.pipeline.class_names == full.class_names == ["a", "b", "c"]
    assert run.meta["num_classes"] == 3
    def rows(batches):  # (the eval batch is rounded up to the 8 test devices: 8 rows)
        batches = list(batches)
        return [np.concatenate([b[key][b["mask"]] for b in batches]) for key in ("image",
                                                                                 "label")]

    for a, b in zip(rows(run.pipeline.eval_batches()), rows(full.eval_batches()), strict=True):
        np.testing.assert_array_equal(a, b)
    run.pipeline.close()

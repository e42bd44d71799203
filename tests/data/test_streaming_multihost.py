"""The streaming pipeline across hosts: a run started by 2 processes (4 CPU devices each, each
reading only its own rows of the global batch) and resumed by 1 process of 8 devices trains on
the same global batches as 1 process of 8 devices from the start."""
import os
import pathlib

import numpy as np
import pytest

WORKER = pathlib.Path(__file__).with_name("_mp_streaming_worker.py")
ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_processes_then_one_see_the_global_batches_of_one(tmp_path, helpers, mp_worker,
                                                               monkeypatch):
    """Slow: 2 processes start Python and JAX and compile the streaming run (2 real processes
    are what is tested), then 2 runs in this process."""
    import jax

    from resnet_jax.train import loop
    helpers.write_folder(str(tmp_path / "img" / "train"), ("a", "b", "c"), per_class=8,
                         size=(50, 40))
    helpers.write_folder(str(tmp_path / "img" / "val"), ("a", "b", "c"), per_class=3,
                         size=(50, 40), seed=1)
    folder, workdir = str(tmp_path / "img"), str(tmp_path / "two_then_one")
    mp_worker.run_workers(WORKER, folder, workdir, cwd=ROOT)
    worker = mp_worker.load_module(WORKER)
    saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))
                   if d.isdigit())
    assert saved and worker.PREEMPT_AT <= saved[-1] < worker.STEPS

    monkeypatch.chdir(ROOT)
    cfg = worker.config(folder)
    resumed = loop.train_and_evaluate(cfg, workdir)  # this process: 8 devices (conftest)
    one = loop.train_and_evaluate(cfg, str(tmp_path / "one"))
    assert resumed["steps"] == one["steps"] == worker.STEPS

    def params(w):
        return jax.tree.leaves(jax.device_get(loop.load_trained(w)[2]))

    # Other batches would move the parameters by ~1e-2; 2 processes and 1 differ only in the
    # order of the cross-device sums (the tolerance of test_multiprocess.py).
    for a, b in zip(params(workdir), params(str(tmp_path / "one")), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    assert resumed["final"]["top1_error"] == pytest.approx(one["final"]["top1_error"])

"""2 processes x 4 CPU devices (jax.distributed on localhost, gloo collectives) train exactly
like 1 process x 8 devices: same losses, parameters and BN statistics after a few steps, and
the same masked evaluation of a dataset that is not a multiple of the batch; for one net and
for 2 replicas of it trained as one program."""
import importlib.util
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKER = pathlib.Path(__file__).with_name("_mp_worker.py")


def load_worker():
    spec = importlib.util.spec_from_file_location("_mp_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    nproc, port = 2, free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(sys.path))
    # The workers' programs are tiny: XLA's unoptimized backend halves their compile time.
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(i), str(nproc), str(port),
                               str(tmp_path / f"p{i}.npz")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(nproc)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"process {i} failed:\n{outputs[i][-3000:]}"

    worker = load_worker()   # this process: 8 devices (conftest)
    reference = {**worker.run_steps(0, 1), **worker.run_steps(0, 1, 2, "vmap"),
                 **worker.run_steps(0, 1, 2, "sequential")}
    for i in range(nproc):
        got = dict(np.load(tmp_path / f"p{i}.npz"))
        assert sorted(got) == sorted(reference)
        for key, value in reference.items():
            np.testing.assert_allclose(got[key], value, rtol=2e-5, atol=2e-6, err_msg=key)
    assert all(np.isfinite(reference[f"{t}_losses"]).all()
               for t in ("r1", "r2vmap", "r2sequential"))
    assert reference["r1_eval_sums"][3] == 21  # each eval example counted once
    for t in ("r2vmap", "r2sequential"):
        assert reference[f"{t}_eval_sums"][3].tolist() == [21, 21]   # ... by each replica
        assert reference[f"{t}_losses"].shape == (3, 2)
        assert not np.allclose(reference[f"{t}_losses"][:, 0], reference[f"{t}_losses"][:, 1])
    np.testing.assert_allclose(reference["r2vmap_losses"], reference["r2sequential_losses"],
                               rtol=1e-5)

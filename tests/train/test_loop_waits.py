"""Evaluation keeps the device fed (issue 19, item 4): while one batch is scored, the next is
already on its way to the devices (`data.prefetch`), and the sums equal a plain pass's."""
import threading

from resnet_jax.config import load_config
from resnet_jax.train import dispatch
from resnet_jax.train import run as run_lib


def _eventually(condition, timeout=20.0):
    event = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if condition():
            return True
        event.wait(0.01)
    return False


def test_evaluation_puts_the_next_batch_on_the_devices_while_one_is_scored(monkeypatch):
    """Each eval_fn call waits (up to 20 s) for the next batch to have been put on the
    devices: a pass that transferred a batch only when it needed it never gets there."""
    config = load_config("configs/smoke.py", ["--config.train.eval_batch_size=8"])
    run = run_lib.build(config)
    state, _ = run_lib.fresh_state(run)
    put = []
    real_to_global = run_lib.parallel.to_global
    monkeypatch.setattr(run_lib.parallel, "to_global",
                        lambda batch, mesh: (put.append(1), real_to_global(batch, mesh))[1])
    eval_fn = dispatch.make_eval_fn(run.model, run.mesh,
                                    preprocess=run.pipeline.device_preprocess)
    batches = run.pipeline.num_eval_examples // 8
    ahead = []

    def watched_eval_fn(state, batch):
        i = len(ahead)
        ahead.append(i + 1 >= batches or _eventually(lambda: len(put) >= i + 2))
        return eval_fn(state, batch)

    try:
        got = run_lib.evaluate(run, state, watched_eval_fn)
        want = run_lib.evaluate(run, state, eval_fn)
    finally:
        run.pipeline.close()
    assert len(ahead) == batches == 8 and all(ahead), ahead
    assert got == want and got["count"] == 64

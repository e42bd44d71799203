"""One of 2 processes (4 CPU devices each, `jax.distributed` on localhost) training the streaming
pipeline on an image folder until a preemption at step 2 (`python _mp_streaming_worker.py
PID N PORT FOLDER WORKDIR`, started by test_streaming_multihost.py, which resumes the run in
1 process of 8 devices)."""
import os
import sys

PREEMPT_AT, STEPS = 2, 8


def config(folder: str):
    """The run both sides train: 2 steps per dispatch, global batch 8 over 8 devices."""
    from resnet_jax.config import load_config
    return load_config(f"configs/smoke.py:steps={STEPS}", [
        "--config.data.pipeline=streaming", "--config.data.source=folder",
        f"--config.data.path={folder}", "--config.data.num_val_examples=0",
        "--config.data.image_size=16", "--config.data.eval_resize=20",
        "--config.data.normalize=per_channel", "--config.data.train_augment=scale",
        "--config.data.prefetch=1", "--config.data.workers=0",
        "--config.train.batch_size=8", "--config.train.eval_batch_size=8",
        "--config.train.steps_per_dispatch=2", "--config.train.log_every_steps=2",
        "--config.train.eval_every_steps=8", "--config.train.checkpoint_every_steps=8"])


def main(argv: list) -> int:
    pid, nproc, port, folder, workdir = (int(argv[1]), int(argv[2]), int(argv[3]), argv[4],
                                         argv[5])
    import signal
    import time

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "train"))
    from _mp_worker import init_distributed
    init_distributed(pid, nproc, port)
    import jax

    from resnet_jax.train import loop

    def preempt(step):
        if step == PREEMPT_AT:
            os.kill(os.getpid(), signal.SIGTERM)
            # JAX's coordination service hears of the SIGTERM in a thread of its own (about a
            # second later) and only then picks the boundary where every process stops: a run
            # this short could end first, unpreempted (it did, on a quiet machine).
            time.sleep(3)

    result = loop.train_and_evaluate(config(folder), workdir, on_step=preempt)
    assert result["preempted"], result
    jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""What the training loop asks of a data pipeline, and `make_pipeline`."""
from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Protocol

import numpy as np

from resnet_jax import schema

# (rng, images, train) -> float32 model input; runs inside the compiled step.
Preprocess = Callable[[Any, Any, bool], Any]


class Pipeline(Protocol):
    """A run's data. Batch sizes are global; each process yields only its own rows (a global
    batch is the concatenation of the processes' rows in process order).

    Training data comes in chunks of k consecutive steps (`train_chunk`), host numpy with a
    leading step axis: {'index': int32 (k, b)} rows of `resident` when the pipeline keeps the
    whole training split on the devices (in memory), else {'image': uint8 (k, b, H, W, 3),
    'label': int32 (k, b)}. Evaluation: `eval_batches()` yields {'image', 'label', 'mask'}
    covering every example once (padding rows have mask False); 'image' is (b, V, H, W, 3)
    with V views, or a tuple of such arrays, one per scale (multi-scale testing).
    """

    num_classes: int
    class_names: list
    image_shape: tuple            # (H, W, 3) of a training image
    steps_per_epoch: int
    num_train_examples: int
    num_eval_examples: int
    mean: np.ndarray              # what `device_preprocess` subtracts (0..255 scale) ...
    std: np.ndarray               # ... and divides by
    device_preprocess: Preprocess
    resident: Optional[tuple]     # (images, labels) of the training split, or None

    def describe(self) -> str:
        """Where the images come from, in a few words (for the run's first lines)."""

    def identity(self) -> dict:
        """What the data is, to record and check in a workdir (`data.identity`): class
        names, and each split's size and fingerprint."""

    def with_seed(self, seed: int) -> "Pipeline":
        """This pipeline (data shared, nothing loaded again) with the training order and
        augmentation of run seed `seed`: what replica i of a packed run (seed + i) reads."""

    def train_chunk(self, step: int, k: int) -> dict:
        """The host data of steps [step, step + k); called with consecutive steps."""

    def train_batches(self, start_step: int = 0) -> Iterator[dict]:
        """Endless host batches {'image': uint8 (b, H, W, 3), 'label': int32 (b,)} of this
        process from `start_step` on, augmented as the loop's (in memory: not yet, that runs
        in the step): the same examples as `train_chunk`, for a loop of your own."""

    def eval_batches(self) -> Iterator[dict]:
        """One pass over the evaluation split."""

    def close(self) -> None:
        """Releases readers and threads."""


def make_pipeline(data_config: Any, *, global_batch_size: int, eval_batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1,
                  eval_only: bool = False) -> Pipeline:
    """Build the pipeline named by `data_config.pipeline` ('in_memory' | 'streaming').

    `data_config` is a full `data` section (`resnet_jax.schema.FIELDS['data']`); its allowed
    values are checked here too, for callers that did not load it through `load_config`.
    `eval_only`: a pipeline to evaluate with (streaming: the training split is not listed
    unless the evaluation split is held out of it; the class names come from its class
    folders, `num_train_examples` and `steps_per_epoch` are 0 and `train_chunk` raises; in
    memory: no difference, the training split gives the normalization's statistics).
    """
    schema.check_data(data_config)
    kwargs = dict(global_batch_size=global_batch_size, eval_batch_size=eval_batch_size,
                  seed=seed, process_index=process_index, process_count=process_count)
    if data_config.pipeline == "in_memory":
        from resnet_jax.data.in_memory_pipeline import InMemoryPipeline
        return InMemoryPipeline(data_config, **kwargs)
    from resnet_jax.data.streaming import StreamingPipeline
    return StreamingPipeline(data_config, **kwargs, eval_only=eval_only)

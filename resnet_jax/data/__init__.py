"""Input pipelines: `make_pipeline(config.data, ...)` -> a Pipeline (docs/ARCHITECTURE.md "Data").

Two paths, one interface: `in_memory` (CIFAR-size, whole split as uint8 arrays, augmentation
on the device, no TensorFlow) and `streaming` (ImageNet-size, tfds / image folder -> tf.data,
TensorFlow imported lazily). Both hand the host uint8 images; `pipeline.device_preprocess`
normalizes (and augments, in memory) inside the compiled step.
"""
from __future__ import annotations

PIPELINES = ("in_memory", "streaming")


def make_pipeline(data_config, *, global_batch_size: int, eval_batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1):
    """Build the pipeline named by `data_config.pipeline` ('in_memory' | 'streaming').

    Batch sizes are global; each process yields only its own rows (global batch =
    concatenation over processes in process order).
    """
    kind = data_config.get("pipeline", "in_memory")
    kwargs = dict(global_batch_size=global_batch_size, eval_batch_size=eval_batch_size,
                  seed=seed, process_index=process_index, process_count=process_count)
    if kind == "in_memory":
        from resnet_jax.data.in_memory_pipeline import InMemoryPipeline
        return InMemoryPipeline(data_config, **kwargs)
    if kind == "streaming":
        from resnet_jax.data.streaming import StreamingPipeline
        return StreamingPipeline(data_config, **kwargs)
    raise ValueError(f"data.pipeline={kind!r}; allowed: {PIPELINES}")

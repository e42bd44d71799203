"""Input pipelines: `make_pipeline(config.data, ...)` -> a `Pipeline` (docs/ARCHITECTURE.md
"Data").

Two paths, one interface (`resnet_jax.data.pipeline.Pipeline`): `in_memory` (CIFAR-size, the
whole split as uint8 arrays kept on the devices, augmentation inside the compiled step) and
`streaming` (ImageNet-size: tfds ArrayRecord / image folder / image tar -> grain, decoding
and augmentation in worker processes). Neither needs TensorFlow. Both hand the host uint8
images or row indices; `pipeline.device_preprocess` normalizes (and augments, in memory)
inside the compiled step.
"""
from resnet_jax.data.pipeline import Pipeline, make_pipeline

__all__ = ["Pipeline", "make_pipeline"]

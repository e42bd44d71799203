"""tensorflow-datasets (and TensorFlow, where something imports it), imported quietly. No
training or evaluation path needs TensorFlow.

TensorFlow's C++ side logs INFO and WARNING lines (oneDNN banners, tf.data rendezvous
aborts) to the console; a training run's console is for the run. Unless the user asked for
them (TF_CPP_MIN_LOG_LEVEL set, or RESNET_JAX_TF_LOGS=1), they are turned off before the
first import; errors still show. oneDNN's custom ops (which print a banner) only serve TF's
own matrix math, which the pipelines do not use, so they are left off too unless
TF_ENABLE_ONEDNN_OPTS is set.
"""
from __future__ import annotations

import os


def quiet_native_logs() -> None:
    """Call before TensorFlow (or tensorflow_datasets) is first imported; the command line calls
    it before JAX loads too (XLA and TensorFlow share one C++ log, whose level is fixed by
    the first of them to log)."""
    if os.environ.get("RESNET_JAX_TF_LOGS"):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def tensorflow_datasets():
    """The `tensorflow_datasets` module, which needs no TensorFlow to read ArrayRecord datasets
    (`tfds.data_source`) or to write them; without TensorFlow installed, tfds prints a banner
    saying so when it first looks for it: kept off the console (nothing here needs it)."""
    import contextlib
    import io
    import sys

    quiet_native_logs()
    if "tensorflow_datasets" in sys.modules:
        return sys.modules["tensorflow_datasets"]
    with contextlib.redirect_stdout(io.StringIO()):
        import tensorflow_datasets as tfds
    return tfds

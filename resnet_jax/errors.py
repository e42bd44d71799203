"""The kinds of failure the command line tells apart, each with its exit code (README,
"Exit codes"). `resnet_jax.cli` maps them; library code raises them like any exception.

    0  done; or stopped by SIGTERM / Ctrl-C after saving a checkpoint (run it again to resume)
    1  training stopped at a non-finite loss or gradient (FloatingPointError)
    2  bad input: a config, an argument, data, or a workdir that cannot be used (ValueError)
    3  the workdir is in use by another run, or this run lost it to another (WorkdirBusyError)
    4  storage failed: a checkpoint or a run file could not be written or read back, or an
       image file could not be read after retries (StorageError, OSError: data.decode's
       ReadError); the checkpoints committed before are left as they were
  130  interrupted before anything could be saved, or a second Ctrl-C (abort at once)
"""
from __future__ import annotations


class WorkdirBusyError(RuntimeError):
    """Another run holds the workdir (its lease), or took it over from this run."""


class StorageError(RuntimeError):
    """Writing or reading a run's files failed (a full disk, a storage service down, every
    checkpoint torn); what was committed before is left as it was."""


EXIT_NON_FINITE, EXIT_BAD_INPUT, EXIT_BUSY, EXIT_STORAGE, EXIT_INTERRUPTED = 1, 2, 3, 4, 130

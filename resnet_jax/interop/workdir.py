"""Export a training run (a `resnet-jax train` workdir) as a model directory.

The variables come from the run's checkpoints through `train.run.load_trained` (the newest,
or `best`: the step with the lowest validation error, which the checkpointer keeps). The preprocessing and class names come from the workdir's
`preprocessing.json` / `class_names.txt` (written at the start of a run by
`preprocess.save_run`); for a workdir without them they are rebuilt from the run's config by
loading its data once, with a message saying so.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, Optional


from resnet_jax import data as data_lib
from resnet_jax.interop import preprocess as prep_lib
from resnet_jax.interop.bundle import LoadedModel
from resnet_jax.train import replicas
from resnet_jax.train import run as run_lib

CHECKPOINTS = ("newest", "best")


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def checkpoint_step(workdir: str, checkpoint: str = "newest",
                    replica: Optional[int] = None) -> int:
    """The step of the workdir's newest or best (lowest validation error) checkpoint; with
    replicas, the best of `replica` (each replica's best is kept)."""
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"--checkpoint {checkpoint!r}; allowed: {list(CHECKPOINTS)}")
    checkpoints = run_lib.checkpointer(workdir, read_only=True)
    try:
        latest = checkpoints.latest_meta()
        steps = checkpoints.all_steps()
    finally:
        checkpoints.close()
    if latest is None:
        raise ValueError(f"--workdir {workdir}: no readable checkpoint")
    step = int(latest["step"])
    if checkpoint == "best":
        best = latest.get("best") or {}
        if isinstance(best, list):  # a run of several replicas: each has its own
            best = best[replicas.check_index(replica, len(best), f"--workdir {workdir}")] or {}
        if "step" not in best:
            raise ValueError(f"--workdir {workdir}: no evaluation yet, so no best "
                             "checkpoint; use --checkpoint newest")
        step = int(best["step"])
        if step not in steps:
            raise ValueError(f"--workdir {workdir}: the best step {step} has no checkpoint "
                             f"(steps {steps})")
    return step


def restore(workdir: str, checkpoint: str = "newest", replica: Optional[int] = None,
            ) -> tuple[Any, Any, dict, int]:
    """(config, module, {'params', 'batch_stats'}, step) of the workdir's newest readable
    checkpoint (past torn ones, as a resumed run) or of its best (that step, or an error
    naming it) (`train.run.load_trained_step`, the run's one restore); `replica`: which of a
    run's replicas (needed when it trained several)."""
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"--checkpoint {checkpoint!r}; allowed: {list(CHECKPOINTS)}")
    replicas.check_index(replica, replicas.count(run_lib.read_config(workdir)),
                         f"--workdir {workdir}")
    step = checkpoint_step(workdir, checkpoint, replica) if checkpoint == "best" else None
    return run_lib.load_trained_step(workdir, step=step, replica=replica)


def run_preprocessing(workdir: str, config: Any, say: Callable[[str], None] = _say,
                      ) -> tuple[prep_lib.Preprocessing, Optional[list[str]]]:
    """The workdir's saved preprocessing and class names, or both rebuilt from its data."""
    try:
        prep = prep_lib.load(workdir)
        return prep, prep_lib.load_class_names(workdir)
    except ValueError:
        pass
    d = config.data
    where = d.path or d.name or d.source
    say(f"{workdir} has no {prep_lib.FILE} (written by runs since it was added); rebuilding "
        f"the preprocessing and class names from the run's data ({d.pipeline}, source "
        f"{d.source}: {where}), which is loaded once for this")
    try:
        run_lib.check_data_paths(config)
        pipeline = data_lib.make_pipeline(
            d, global_batch_size=config.train.batch_size,
            eval_batch_size=config.train.eval_batch_size, seed=config.seed)
    except Exception as err:  # noqa: BLE001 - missing files, tfds errors, decode errors
        raise ValueError(f"cannot rebuild the preprocessing of {workdir}: its data is "
                         f"unreachable ({type(err).__name__}: {str(err).splitlines()[0]}). "
                         "The exported model needs the run's training mean/std and class "
                         f"names: make the data reachable where {workdir}/config.json says"
                         ) from None
    return prep_lib.from_pipeline(config, pipeline), prep_lib.pipeline_class_names(pipeline)


def export_workdir(workdir: str, out: Optional[str] = None, checkpoint: str = "newest",
                   say: Callable[[str], None] = _say,
                   replica: Optional[int] = None) -> LoadedModel:
    """The run's model (of replica `replica`, for a run of several) as a `LoadedModel`,
    written to `out` as a model directory if given."""
    config, module, variables, step = restore(workdir, checkpoint, replica)
    prep, names = run_preprocessing(workdir, config, say)
    if names is not None and len(names) != module.num_classes:
        say(f"{workdir}: {len(names)} class names for {module.num_classes} classes; "
            "numbering them instead")
        names = None
    loaded = LoadedModel.create(module, variables, prep, names, source={
        "kind": "workdir", "workdir": os.path.abspath(workdir) if "://" not in workdir
        else workdir, "checkpoint": checkpoint, "step": step,
        **({"replica": replica} if replica is not None else {})})
    if out is not None:
        loaded.save(out)
    return loaded

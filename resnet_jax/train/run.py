"""What a config builds (mesh, pipeline, model, optimizer), the one way a workdir's checkpoint
is restored (resume, eval and loading a trained model all call `restore`), and evaluation.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from resnet_jax import config as config_lib
from resnet_jax import data as data_lib
from resnet_jax import files, parallel, schema
from resnet_jax.data.prefetch import prefetch
from resnet_jax.models import (abstract_variables, create_model, model_name,
                               parse_model_name, stack_blocks)
from resnet_jax.train import checkpoint as ckpt_lib
from resnet_jax.train import dispatch, optim, replicas
from resnet_jax.train import metrics as metrics_lib
from resnet_jax.train import step as step_lib


@dataclasses.dataclass
class Run:
    """Everything a config builds before the first step (`pipeline` is None when only a
    trained model is loaded)."""
    config: ml_collections.ConfigDict
    mesh: Any
    pipeline: Optional[data_lib.Pipeline]
    model: Any
    tx: Any
    meta: dict  # the model's identity, saved with every checkpoint


def model_meta(config: ml_collections.ConfigDict, num_classes: int,
               image_shape: tuple) -> dict:
    """What makes two checkpoints the same model (dtype and BN grouping may change)."""
    m = config.model
    return {"name": model_name(m.arch, m.depth, m.plain), "num_classes": int(num_classes),
            "shortcut": m.shortcut, "bottleneck_stride": m.bottleneck_stride, "width": m.width,
            "scan_blocks": m.scan_blocks, "image_shape": [int(d) for d in image_shape],
            "block": schema.resolve_block(m.arch, m.depth, m.block),
            **{k: m[k] for k in schema.VARIANT_DEFAULTS}}


def _block_of(meta: dict) -> str:
    """The block of a checkpoint written before `block` was recorded: its family's."""
    arch, depth, _ = parse_model_name(meta["name"])
    return schema.resolve_block(arch, depth)


# Model-identity keys newer than some checkpoints, with the value those checkpoints have (a
# function of the checkpoint's meta where it depends on the model).
_META_ADDED = {"scan_blocks": schema.ADDED_FIELDS["model.scan_blocks"], "block": _block_of,
               **schema.VARIANT_DEFAULTS}


def check_model(meta: dict):
    """The `check_meta` of `Checkpointer.restore_latest` for a run of model `meta`."""
    return ckpt_lib.check_same_model(meta, added=_META_ADDED)


def make_model(config: ml_collections.ConfigDict, meta: dict, num_devices: int, *,
               bn_num_groups: Optional[int] = None) -> Any:
    """The model of `config` for `num_devices` devices; `bn_num_groups` overrides the
    training BN grouping (1 for evaluation and loading: running statistics, no batch ones)."""
    m, t = config.model, config.train
    if bn_num_groups is None:
        bn_num_groups = parallel.bn_num_groups(t.bn_mode, t.bn_group_size, num_devices)
    return create_model(meta["name"], num_classes=meta["num_classes"], shortcut=m.shortcut,
                        bottleneck_stride=m.bottleneck_stride, width=m.width,
                        zero_init_residual=m.zero_init_residual, dtype=m.dtype,
                        scan_blocks=m.scan_blocks, bn_num_groups=bn_num_groups,
                        block=m.block, **{k: m[k] for k in schema.VARIANT_DEFAULTS})


def check_data_paths(config: ml_collections.ConfigDict) -> None:
    """Refuses a missing local data path or tfds data_dir before anything is built."""
    d = config.data
    local = lambda p: p and "://" not in p  # noqa: E731 - remote paths are checked by readers
    if d.source in ("tar", "folder") and (not d.path or (local(d.path)
                                                         and not os.path.exists(d.path))):
        raise ValueError(f"config field data.path={d.path!r} does not exist (data.source="
                         f"{d.source!r}); pass --config.data.path=...")
    if local(d.data_dir) and not os.path.isdir(d.data_dir):
        raise ValueError(f"config field data.data_dir={d.data_dir!r} is not a directory")


def _optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int) -> Any:
    return optim.make_optimizer(config.optim, steps_per_epoch,
                                batch_size=config.train.batch_size,
                                num_steps=config.train.num_steps)


def build(config: ml_collections.ConfigDict) -> Run:
    """Mesh, pipeline, model and optimizer for `config` (all processes call it)."""
    mesh = parallel.make_mesh()
    config_lib.check_fits(config, mesh.size, jax.process_count())
    check_data_paths(config)
    t = config.train
    pipeline = data_lib.make_pipeline(
        config.data, global_batch_size=t.batch_size, eval_batch_size=t.eval_batch_size,
        seed=config.seed, process_index=jax.process_index(), process_count=jax.process_count())
    _check_classes(config.data, pipeline)
    meta = model_meta(config, pipeline.num_classes, pipeline.image_shape)
    return Run(config, mesh, pipeline, make_model(config, meta, mesh.size),
               _optimizer(config, pipeline.steps_per_epoch), meta)


def _check_classes(data: ml_collections.ConfigDict, pipeline: data_lib.Pipeline) -> None:
    """Refuses a training split of one class, before the run writes anything (it trained to
    loss 0 and top-1 error 0%: nothing to tell apart)."""
    if pipeline.num_classes >= 2:
        return
    pipeline.close()
    field = {"tfds": f"data.name={data.name!r}",
             "synthetic": f"data.num_classes={data.num_classes}"}.get(data.source,
                                                                     f"data.path={data.path!r}")
    raise ValueError(f"{field}: the training split has 1 class "
                     f"({', '.join(map(str, pipeline.class_names))}); a classifier needs at "
                     "least 2 (layout: train/<class>/<image>)")


def build_for_eval(config: ml_collections.ConfigDict) -> Run:
    """`build` for evaluating a trained run on this machine, whatever it trained on: BN in
    one group (evaluation uses the running statistics), nothing asked of the training batch
    or BN grouping, the eval batch rounded up to a multiple of the devices and processes
    if it does not split over them (more padding rows, the same examples), and an
    evaluation-only pipeline (streaming: the training files are not listed)."""
    mesh = parallel.make_mesh()
    check_data_paths(config)
    t, n, procs = config.train, mesh.size, jax.process_count()
    unit = n * procs // math.gcd(n, procs)
    pipeline = data_lib.make_pipeline(
        config.data, global_batch_size=max(procs, t.batch_size - t.batch_size % procs),
        eval_batch_size=-(-t.eval_batch_size // unit) * unit, seed=config.seed,
        process_index=jax.process_index(), process_count=procs, eval_only=True)
    meta = model_meta(config, pipeline.num_classes, pipeline.image_shape)
    # The optimizer only shapes the restore target (an evaluation-only pipeline has no epochs).
    return Run(config, mesh, pipeline, make_model(config, meta, n, bn_num_groups=1),
               _optimizer(config, max(1, pipeline.steps_per_epoch)), meta)


def _base_rng(seed: int) -> tuple:
    """(init key, base key of the training steps) of a seed."""
    return tuple(jax.random.split(jax.random.PRNGKey(seed)))


def fresh_state(run: Run) -> tuple[step_lib.TrainState, jax.Array]:
    """(step-0 state replicated on the mesh, base rng of the training steps); with
    `model.init_from`, the variables come from that model directory (`pretrained`), checked
    to fit before anything is initialized. With `train.replicas` N > 1, N of each stacked on
    a leading axis: replica i is exactly the fresh state and rng of the run with seed
    `seed + i`."""
    n = replicas.count(run.config)
    loaded = pretrained_variables(run) if run.config.model.init_from else None
    if n == 1:
        init_rng, train_rng = _base_rng(run.config.seed)
        state = step_lib.create_train_state(init_rng, run.model, run.tx,
                                            tuple(run.meta["image_shape"]), mesh=run.mesh)
        if loaded is not None:
            state = pretrained(run, state, loaded)
        # A global (replicated) array: orbax cannot save a process-local one in multi-host runs.
        return state, parallel.replicate(np.asarray(train_rng), run.mesh)
    keys = [_base_rng(seed) for seed in replicas.seeds(run.config)]
    init_rngs, train_rngs = (np.stack([np.asarray(k[j]) for k in keys]) for j in (0, 1))
    state = step_lib.create_train_state(init_rngs, run.model, run.tx,
                                        tuple(run.meta["image_shape"]), mesh=run.mesh,
                                        replicas=n)
    if loaded is not None:
        state = replicas.stack([pretrained(run, replicas.take(state, i), loaded)
                                for i in range(n)], run.mesh)
    return state, parallel.replicate(train_rngs, run.mesh)


def pretrained_variables(run: Run) -> dict:
    """The variables of the model directory `model.init_from` (from `resnet-jax convert` or
    `export`), flat, without the classifier (`fc`) when the model's class names are not the
    data's (fine-tuning on other classes, even as many of them: it keeps its fresh
    initialization). Every other layer must fit the model: checked on the model's shapes
    alone, so a directory that does not fit is refused before anything is compiled."""
    from resnet_jax.interop import bundle
    from resnet_jax.interop.tree import check_shapes, flatten
    directory = run.config.model.init_from
    model_dir = bundle.load(directory)
    loaded = model_dir.variables
    if run.config.model.scan_blocks:
        loaded = stack_blocks(loaded, run.model.stage_sizes)
    theirs = flatten(loaded)
    shapes = {k: v.shape for k, v in flatten(abstract_variables(
        run.model, (1, *run.meta["image_shape"]))).items()}
    data_names = [str(n) for n in getattr(run.pipeline, "class_names", None) or []]
    if list(model_dir.class_names) != data_names:
        theirs = {k: v for k, v in theirs.items() if not k.startswith("params/fc/")}
    check_shapes(shapes, {**{k: v for k, v in shapes.items() if k.startswith("params/fc/")},
                          **{k: v.shape for k, v in theirs.items()}},
                 f"model.init_from={directory!r} does not fit {run.meta['name']} "
                 f"(width {run.config.model.width}, shortcut {run.config.model.shortcut})")
    return theirs


def pretrained(run: Run, state: step_lib.TrainState, loaded: dict) -> step_lib.TrainState:
    """`state` with the `pretrained_variables` in place of its params and batch_stats (a
    classifier they lack keeps the state's fresh one); the optimizer state starts afresh."""
    from resnet_jax.interop.tree import flatten, unflatten
    fresh = flatten(jax.device_get({"params": state.params, "batch_stats": state.batch_stats}))
    merged = unflatten({k: np.asarray(loaded.get(k, v), v.dtype) for k, v in fresh.items()})
    params = parallel.replicate(merged["params"], run.mesh)
    opt_state = jax.jit(run.tx.init, out_shardings=parallel.replicated(run.mesh))(params)
    return state.replace(params=params, opt_state=opt_state,
                         batch_stats=parallel.replicate(merged.get("batch_stats", {}), run.mesh))


def abstract_state(run: Run) -> tuple[Any, Any]:
    """Shapes, dtypes and (replicated) shardings of `fresh_state`, computed without running it
    (`jax.eval_shape`): the restore target."""
    n = replicas.count(run.config)

    def shapes():
        init_rng, train_rng = _base_rng(run.config.seed)
        if n > 1:
            init_rng, train_rng = (jnp.stack([k] * n) for k in (init_rng, train_rng))
        state = step_lib.create_train_state(init_rng, run.model, run.tx,
                                            tuple(run.meta["image_shape"]), replicas=n)
        return state, train_rng

    rep = parallel.replicated(run.mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
                        jax.eval_shape(shapes))


def checkpointer(workdir: str, keep: int = 10 ** 6, num_replicas: int = 1, *,
                 read_only: bool = False) -> ckpt_lib.Checkpointer:
    """The workdir's checkpoints; `num_replicas` > 1 keeps each replica's best too;
    `read_only` for everything but the training run itself."""
    return ckpt_lib.Checkpointer(os.fspath(epath.Path(workdir) / "checkpoints"), keep=keep,
                                 replicas=num_replicas, read_only=read_only)


def check_checkpoint(run: Run):
    """The `check_meta` of a restore for `run`: the same model and the same replica count
    (a state of N replicas is N stacked nets; another count cannot resume it)."""
    same_model = check_model(run.meta)
    want = replicas.count(run.config)

    def check(meta: dict) -> None:
        same_model(meta)
        found = int(meta.get("replicas", 1))
        if found != want:
            raise ckpt_lib.CheckpointMismatchError(
                f"config field train.replicas={want}, but the workdir's checkpoints hold "
                f"{found} replica(s) (step {meta.get('step')}); resume it with "
                f"--config.train.replicas={found}, or use a new --workdir")
    return check


def restore(run: Run, checkpoints: ckpt_lib.Checkpointer, *, set_aside: bool,
            step: Optional[int] = None) -> Optional[ckpt_lib.Restored]:
    """The newest readable checkpoint of `run`'s model (or that of `step`), on the mesh, or
    None. A checkpoint of another model is refused (CheckpointMismatchError); `set_aside`
    (training only) renames unreadable steps (`Checkpointer.restore_latest`)."""
    state, rng = abstract_state(run)
    return checkpoints.restore_latest(state, rng, check_checkpoint(run), set_aside=set_aside,
                                      step=step)


def evaluate_all(run: Run, state: step_lib.TrainState, eval_fn: Any = None) -> list[dict]:
    """Validation metrics over the whole eval split, one dict per replica ([one] for a run of
    one): loss, top1/top5 error (%), count. The next batch is put on the devices while one is
    scored, and the sums come back once, at the end (`dispatch.eval_sums`)."""
    eval_fn = eval_fn or dispatch.make_eval_fn(run.model, run.mesh,
                                               preprocess=run.pipeline.device_preprocess,
                                               replicas=replicas.count(run.config))
    batches = prefetch(run.pipeline.eval_batches(),
                       lambda batch: parallel.to_global(batch, run.mesh), size=2)
    try:
        sums = dispatch.eval_sums(eval_fn, state, batches)
    finally:
        batches.close()
    return metrics_lib.eval_summaries(sums)


def evaluate(run: Run, state: step_lib.TrainState, eval_fn: Any = None) -> dict:
    """Validation metrics of a run of one replica (`evaluate_all` for several)."""
    n = replicas.count(run.config)
    if n > 1:
        raise ValueError(f"the run has {n} replicas: use evaluate_all (one result each)")
    return evaluate_all(run, state, eval_fn)[0]


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config a run wrote to `workdir/config.json`."""
    files.check_remote(workdir, "--workdir")
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        if not path.parent.exists():
            raise ValueError(f"--workdir {workdir} does not exist")
        raise ValueError(f"--workdir {workdir}: no config.json (not a training workdir)")
    return config_lib.from_json(path.read_text())


def _restored(run: Run, workdir: str, step: Optional[int] = None) -> ckpt_lib.Restored:
    checkpoints = checkpointer(workdir, read_only=True)
    try:
        restored = restore(run, checkpoints, set_aside=False, step=step)
    except ckpt_lib.NoReadableCheckpointError as err:
        if step is None:
            raise
        raise ckpt_lib.NoReadableCheckpointError(
            f"--workdir {workdir}: the checkpoint of step {step} cannot be read ({err})"
        ) from None
    finally:
        checkpoints.close()
    if restored is None:
        which = "no checkpoint" if step is None else f"no checkpoint of step {step}"
        raise ValueError(f"--workdir {workdir}: {which} in {checkpoints.directory}")
    return restored


def restore_for_eval(workdir: str, config: ml_collections.ConfigDict | None = None,
                     step: Optional[int] = None) -> tuple[Run, step_lib.TrainState, int]:
    """(run with its eval pipeline, state of the newest readable checkpoint (or of `step`),
    its step), on this machine's devices (`build_for_eval`)."""
    run = build_for_eval(config or read_config(workdir))
    restored = _restored(run, workdir, step)
    return run, restored.state, restored.step


def load_trained(workdir: str, step: Optional[int] = None, replica: Optional[int] = None,
                 ) -> tuple[ml_collections.ConfigDict, Any, dict]:
    """(config, model, {'params', 'batch_stats'}) of the newest readable checkpoint in
    `workdir` (or of `step`); see `load_trained_step`."""
    return load_trained_step(workdir, step, replica)[:3]


def load_trained_step(workdir: str, step: Optional[int] = None,
                      replica: Optional[int] = None,
                      ) -> tuple[ml_collections.ConfigDict, Any, dict, int]:
    """(config, model, {'params', 'batch_stats'}, the step restored) of the newest readable
    checkpoint in `workdir` (past torn ones, as training resumes, moving nothing), or of
    `step`. Reads no data (the model's classes and image shape come from the checkpoint's
    meta); the model has BN in one group, whatever the run trained with, on any number of
    devices. A run of several replicas needs `replica` (0 .. N-1); one of one takes None or
    0."""
    config = read_config(workdir)
    i = replicas.check_index(replica, replicas.count(config), f"--workdir {workdir}")
    checkpoints = checkpointer(workdir, read_only=True)
    try:
        latest = checkpoints.latest_meta()
    finally:
        checkpoints.close()
    if latest is None:
        raise ValueError(f"--workdir {workdir}: no readable checkpoint")
    mesh = parallel.make_mesh()
    meta = latest["model"]
    # The optimizer only shapes the restore target (its state's structure).
    run = Run(config, mesh, None, make_model(config, meta, mesh.size, bn_num_groups=1),
              _optimizer(config, 1), meta)
    restored = _restored(run, workdir, step)
    state = restored.state
    if replicas.count(config) > 1:
        state = replicas.take(state, i)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return config, run.model, variables, restored.step

"""``resnet-jax sweep SWEEP_CONFIG --workdir DIR``: run a grid of training runs, one after another.

Layout of DIR::

    sweep.json             the expanded sweep (base, overrides, axes, member names)
    sweep_log.jsonl        one line per member attempt: index, name, status, seconds, error
    <member name>/         e.g. ``depth=20,plain=true``: the member's training workdir
        member.json        index, name and the (field, value) pairs of this member (and
                           ``packs``, the grid members a packed member trains as replicas)
        results.json ...   written by train_and_evaluate; when it reads back whole the member
                           is done (a torn one is not: the member runs again and resumes)
        error.txt          exception and traceback of the last failed attempt

DIR may be local or remote (``gs://...``): every path goes through etils ``epath``.

Every member's config is loaded and validated before the first member runs, so a bad
``--set`` fails once, naming the field. Members then run in-process through
``resnet_jax.train.loop.train_and_evaluate(config, workdir)``, each on every device this
process sees. A done member is skipped; a failing member is recorded and the sweep goes on.
``--member i`` or ``--num-shards N --shard-index j`` (members ``i`` with ``i % N == j``) split
the grid over jobs.

Members that differ only in consecutive seeds are packed into one run of N replicas
(``grid.pack_seeds``: one compiled program trains the N seeds; ``--no-pack`` runs them one by
one); ``--seeds N`` adds a seed axis 0..N-1. The member indices, ``--list`` and the shards are
those of the packed members. A sweep directory keeps the packing it was started with.
"""
from __future__ import annotations

import argparse
import os
import time
import traceback
from typing import Callable, Sequence

import ml_collections
from etils import epath

from resnet_jax import config as config_lib
from resnet_jax import files
from resnet_jax.sweeps import collect, grid

TrainFn = Callable[[ml_collections.ConfigDict, str], dict]
LoadFn = Callable[[str, Sequence[str]], ml_collections.ConfigDict]


def select_indices(num_members: int, member: int | None = None, num_shards: int = 1,
                   shard_index: int = 0) -> list[int]:
    """The member indices this job runs: ``member`` alone, or every ``num_shards``-th one
    starting at ``shard_index``."""
    if num_shards < 1:
        raise ValueError(f"--num-shards must be >= 1, got {num_shards}")
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"--shard-index must be in [0, {num_shards}), got {shard_index}")
    if member is not None:
        if not 0 <= member < num_members:
            raise ValueError(f"--member must be in [0, {num_members}), got {member}")
        if num_shards != 1:
            raise ValueError("--member and --num-shards cannot be combined")
        return [member]
    return [i for i in range(num_members) if i % num_shards == shard_index]


def _default_load(spec: str, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    from resnet_jax.config import load_config  # lazy: keeps `resnet-jax report` light

    return load_config(spec, overrides)


def _default_train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    from resnet_jax.train.loop import train_and_evaluate  # lazy: imports the whole trainer

    return train_and_evaluate(config, workdir)


def member_config(sweep: grid.Sweep, member: grid.Member, extra_overrides: Sequence[str] = (),
                  load_fn: LoadFn | None = None) -> ml_collections.ConfigDict:
    """The member's validated config: the recipe (with its recipe-argument axes), the sweep's
    overrides, ``extra_overrides`` (``--config.a.b=v`` strings), then the member's other axes.
    Raises ValueError when a field does not end up with the member's value."""
    spec, overrides = grid.member_spec(sweep, member)
    config = (load_fn or _default_load)(spec, [*overrides[:len(sweep.overrides)],
                                               *extra_overrides,
                                               *overrides[len(sweep.overrides):]])
    for field, value in member.values:
        got = config_lib.get_field(config, field)
        if grid.format_value(got) != grid.format_value(value):
            raise ValueError(f"config field {field}={got!r} but the member wants {value!r} "
                             "(a --set override of an axis?)")
    return config


def member_configs(sweep: grid.Sweep, members: Sequence[grid.Member],
                   extra_overrides: Sequence[str] = (),
                   load_fn: LoadFn | None = None) -> dict[int, ml_collections.ConfigDict]:
    """Every member's full config, loaded and validated before any member runs: a bad ``--set``
    (an unknown field, a value of the wrong type or outside the allowed ones) is one ValueError
    naming the field, not one failure per member. ``{member index: config}``."""
    configs, errors = {}, {}
    for member in members:
        try:
            configs[member.index] = member_config(sweep, member, extra_overrides, load_fn)
        except ValueError as err:
            errors[member.name] = str(err)
    if errors:
        messages = list(dict.fromkeys(errors.values()))
        if len(messages) == 1 and len(errors) == len(members):
            raise ValueError(f"sweep: invalid config (every member): {messages[0]}")
        name, message = next(iter(errors.items()))
        more = len(errors) - 1
        more = f" (and {more} more member{'s' if more > 1 else ''})" if more else ""
        raise ValueError(f"sweep: invalid config of member {name}{more}: {message}")
    return configs


def _is_chief() -> bool:
    """Only process 0 of a multi-process job writes sweep bookkeeping."""
    try:
        import jax

        return jax.process_index() == 0
    except Exception:  # noqa: BLE001 - no backend yet is as good as one process
        return True


def run_member(sweep: grid.Sweep, member: grid.Member, workdir: files.PathLike, *,
               extra_overrides: Sequence[str] = (), train_fn: TrainFn | None = None,
               load_fn: LoadFn | None = None, chief: bool = True,
               config: ml_collections.ConfigDict | None = None,
               log: Callable[[str], None] = print) -> dict:
    """Run (or skip) one member; never raises for a training failure. Returns its log record.

    The member is done, and skipped, when its results.json reads back whole; a torn one (a
    crash while it was written) is not done: the member runs again and its trainer resumes from
    its checkpoint. ``config``: the member's config when already loaded (``member_configs``).
    """
    mdir = epath.Path(workdir) / member.name
    record = {"index": member.index, "name": member.name, "status": "skipped", "seconds": 0.0}
    if collect.is_done(mdir):
        return record
    if (mdir / collect.RESULTS_FILE).exists():
        log(f"[sweep] {member.name}: {collect.RESULTS_FILE} is unreadable (torn?): "
            "running the member again")
    mdir.mkdir(parents=True, exist_ok=True)
    if chief:
        files.write_json(mdir / collect.MEMBER_FILE,
                         {"index": member.index, "name": member.name,
                          "values": [[f, v] for f, v in member.values],
                          **({"packs": list(member.packs)} if member.packs else {})})
    start = time.time()
    try:
        if config is None:
            config = member_config(sweep, member, extra_overrides, load_fn)
        result = (train_fn or _default_train)(config, os.fspath(mdir))
    except Exception as err:  # noqa: BLE001 - a failed member must not stop the sweep
        record.update(status="failed", error=f"{type(err).__name__}: {err}")
        if chief:
            (mdir / collect.ERROR_FILE).write_text(traceback.format_exc())
    else:
        if isinstance(result, dict) and result.get("preempted"):
            # The trainer saved and stopped on SIGTERM: the job is going away; a rerun resumes.
            record.update(status="preempted", seconds=round(time.time() - start, 3))
            return record
        record["status"] = "done"
        if chief and (mdir / collect.ERROR_FILE).exists():
            (mdir / collect.ERROR_FILE).unlink()  # an earlier failure, now fixed
    record["seconds"] = round(time.time() - start, 3)
    return record


def can_pack(sweep: grid.Sweep, extra_overrides: Sequence[str] = (),
             load_fn: LoadFn | None = None) -> bool:
    """Whether the sweep's seeds may train as replicas: only on the in-memory pipeline (a
    streaming run trains one replica; `train.replicas` is refused there)."""
    configs = member_configs(sweep, sweep.members(False), extra_overrides, load_fn)
    return all(c.data.pipeline == "in_memory" for c in configs.values())


def packing(sweep: grid.Sweep, pack: bool, extra_overrides: Sequence[str] = (),
            load_fn: LoadFn | None = None, log: Callable[[str], None] = print) -> bool:
    """`pack`, unless the sweep's seeds cannot train as replicas (`can_pack`): then False,
    said in one line. The one rule of `resnet-jax sweep` and `run_sweep`."""
    if not pack or sweep.members(True) == sweep.members(False):
        return pack
    if can_pack(sweep, extra_overrides, load_fn):
        return True
    log("sweep: the seeds run one by one, not as replicas (data.pipeline='streaming' trains "
        "one replica)")
    return False


def check_packing(sweep: grid.Sweep, workdir: files.PathLike, pack: bool) -> None:
    """Refuses to continue a sweep directory under another packing than it was started with
    (its members would be other runs): one line naming --no-pack."""
    desc = files.read_json(epath.Path(workdir) / collect.SWEEP_FILE)
    if not isinstance(desc, dict) or "members" not in desc:
        return
    was = bool(desc.get("pack", False))
    if was != pack and desc["members"] != [m.name for m in sweep.members(pack)]:
        flag = "without --no-pack" if was else "with --no-pack"
        raise ValueError(f"sweep directory {workdir} was started {'with' if was else 'without'} "
                         f"its seeds packed into replicas; continue it {flag}, or use a new "
                         "--workdir")


def run_sweep(sweep: grid.Sweep, workdir: files.PathLike, *,
              indices: Sequence[int] | None = None,
              extra_overrides: Sequence[str] = (),
              train_fn: TrainFn | None = None, load_fn: LoadFn | None = None,
              log: Callable[[str], None] = print, pack: bool = True) -> list[dict]:
    """Run the selected members (all by default) in order; return one record per member.
    `pack`: members that differ only in consecutive seeds run as one run of replicas
    (`grid.pack_seeds`; `indices` then index the packed members), where they can
    (`packing`: not on the streaming pipeline, said in one line).

    Every member's config is loaded and validated first (``member_configs``): an invalid one
    raises ValueError before anything is written. Records: ``{"index", "name", "status":
    "done"|"skipped"|"failed"|"preempted", "seconds", ["error"]}``. A preempted member
    (SIGTERM; its checkpoint saved) ends the sweep early. ``workdir`` may be local or remote
    (``gs://``, through etils epath). ``train_fn(config, workdir)`` and ``load_fn(spec,
    overrides)`` default to the real trainer and ``resnet_jax.config.load_config``; tests
    inject fakes.
    """
    files.check_remote(workdir, "--workdir")
    pack = packing(sweep, pack, extra_overrides, load_fn, log)
    members = sweep.members(pack)
    configs = member_configs(sweep, members, extra_overrides, load_fn)
    check_packing(sweep, workdir, pack)
    root = epath.Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    chief = _is_chief()
    if chief:
        desc = sweep.to_json(pack)
        desc["extra_overrides"] = list(extra_overrides)
        files.write_json(root / collect.SWEEP_FILE, desc)
    chosen = range(len(members)) if indices is None else indices
    records = []
    for i in chosen:
        member = members[i]
        log(f"[sweep] member {i + 1}/{len(members)} {member.name}: starting")
        record = run_member(sweep, member, root, extra_overrides=extra_overrides,
                            train_fn=train_fn, load_fn=load_fn, chief=chief,
                            config=configs[member.index], log=log)
        if record["status"] != "skipped" and chief:
            files.append_jsonl(root / collect.LOG_FILE, {**record, "time": time.time()})
        error = f"  {record['error']}" if "error" in record else ""
        log(f"[sweep] member {i + 1}/{len(members)} {member.name}: {record['status']}"
            f" ({record['seconds']:.1f} s){error}")
        records.append(record)
        if record["status"] == "preempted":
            log("[sweep] preempted: stopping; run the same command again to resume")
            break
    return records


def summarize(records: Sequence[dict]) -> str:
    """One line: how many members finished, were skipped, failed (and which)."""
    count = {s: sum(r["status"] == s for r in records)
             for s in ("done", "skipped", "failed", "preempted")}
    line = f"[sweep] {count['done']} done, {count['skipped']} skipped, {count['failed']} failed"
    if count["preempted"]:
        line += ", preempted (rerun to resume)"
    failed = [r["name"] for r in records if r["status"] == "failed"]
    return line + (f": {', '.join(failed)} (see <member>/error.txt)" if failed else "")


def _parse_set(items: Sequence[str]) -> list[str]:
    """``train.num_steps=2000`` -> ``--config.train.num_steps=2000``."""
    out = []
    for item in items:
        field, sep, _ = item.partition("=")
        if not sep or not field:
            raise ValueError(f"--set expects FIELD=VALUE (e.g. train.num_steps=2000), got {item!r}")
        out.append("--config." + item.removeprefix("--").removeprefix("config."))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``resnet-jax sweep``."""
    parser.add_argument("sweep_config",
                        help="sweep config file, path.py[:arg] (see configs/sweeps/)")
    parser.add_argument("--workdir", required=True,
                        help="sweep directory; one subfolder per member")
    parser.add_argument("--member", type=int, default=None, help="run only member i (0-based)")
    parser.add_argument("--num-shards", type=int, default=1, help="split the grid over N jobs")
    parser.add_argument("--shard-index", type=int, default=0, help="this job's shard, in [0, N)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a config field for every member, e.g. train.num_steps=2000")
    parser.add_argument("--list", action="store_true", help="print the members and exit")
    parser.add_argument("--seeds", type=int, default=None, metavar="N",
                        help="run every member with seeds 0..N-1 (adds a seed axis)")
    parser.add_argument("--no-pack", action="store_true",
                        help="one run per seed (default: members that differ only in "
                             "consecutive seeds train as the replicas of one run)")
    parser.add_argument("--compile-cache", default="", metavar="DIR",
                        help="persistent JAX compilation cache: members that differ only in "
                             "seed (or other non-shape fields) then compile once")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``resnet-jax sweep``: 0 when no member failed, 1 otherwise."""
    sweep = grid.load_sweep(args.sweep_config)
    if args.seeds is not None:
        sweep = grid.with_seeds(sweep, args.seeds)
    pack = packing(sweep, not args.no_pack, _parse_set(args.set))
    members = sweep.members(pack)
    indices = select_indices(len(members), args.member, args.num_shards, args.shard_index)
    if args.list:
        for m in members:
            held = f"  ({len(m.packs)} seeds as replicas of one run)" if m.packs else ""
            print(f"{m.index:4d}  {m.name}{held}"
                  f"{'' if m.index in indices else '  (other shard)'}")
        return 0
    if args.compile_cache:
        import jax

        jax.config.update("jax_compilation_cache_dir", args.compile_cache)
    records = run_sweep(sweep, args.workdir, indices=indices, extra_overrides=_parse_set(args.set),
                        pack=pack)
    print(summarize(records))
    return 1 if any(r["status"] in ("failed", "preempted") for r in records) else 0

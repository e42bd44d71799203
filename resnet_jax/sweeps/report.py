"""``resnet-jax report DIR``: the paper-style table and figures of a sweep.

Writes into DIR:
- ``report.md``: one row per model (members grouped by every varied field but the seed):
  top-1 error of the final evaluation in the paper's form, best run (mean ± sample std over
  seeds), e.g. ``6.43 (6.61 ± 0.16)``, beside the paper's own number when the sweep config
  gives them (``published``, with ``published_source`` cited above the table); the best
  evaluation's and the final top-5 error as
  mean ± std; parameters, multiply-adds, training time; then each member's status. Seeds
  that trained packed, as the replicas of one run, count as the runs they stand for.
- ``fig6_training_curves.png``: train error (dashed) and eval error (solid) against iterations,
  one panel for plain nets and one for ResNets when the sweep varies ``model.plain`` (Fig. 6).
- ``fig7_layer_responses.png``: std of each 3x3 layer's response, when ``resnet-jax analyze``
  has written ``analysis.json`` into members (Fig. 7).

Errors are those in ``results.json`` (the eval split of the run: the held-out validation set
for the paper's 45k/5k CIFAR recipe), in percent.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Sequence

from etils import epath

from resnet_jax import files
from resnet_jax.sweeps import collect, grid
from resnet_jax.train import replicas

FIG6 = "fig6_training_curves.png"
FIG7 = "fig7_layer_responses.png"


def _stat(done: Sequence[collect.MemberRecord], which: str, metric: str) -> dict:
    return replicas.stats([float(r.results[which][metric]) for r in done
                           if isinstance(r.results.get(which), dict)
                           and r.results[which].get(metric) is not None])


def build_rows(records: Sequence[collect.MemberRecord], fields: Sequence[str]) -> list[dict]:
    """One dict per model: ``group`` (field -> value), ``model``, ``runs`` (finished), ``members``,
    ``failed``, ``final``/``best``/``final_top5`` as `replicas.stats` ({'n', 'min', 'mean',
    'std'} over the seeds), ``params``, ``macs``, ``train_time_s`` (mean), ``steps``."""
    rows = []
    for values, members in collect.group_members(records, fields):
        done = [r for r in members if r.status == "done"]
        first = done[0].results if done else {}
        times = [float(r.results.get("train_time_s", 0.0)) for r in done]
        rows.append({
            "group": values,
            "model": first.get("model", "") or _model_from_config(members[0]),
            "runs": len(done),
            "members": len(members),
            "failed": sum(r.status == "failed" for r in members),
            "final": _stat(done, "final", "top1_error"),
            "best": _stat(done, "best", "top1_error"),
            "final_top5": _stat(done, "final", "top5_error"),
            "params": first.get("params"),
            "macs": first.get("macs"),
            "train_time_s": replicas.mean_std(times)[0] if times else None,
            "steps": first.get("steps"),
        })
    return rows


def _model_from_config(record: collect.MemberRecord) -> str:
    arch, depth, plain = (record.get("model.arch"), record.get("model.depth"),
                          record.get("model.plain"))
    if depth is None:
        return ""
    return f"{'plain' if plain else 'ResNet'}-{depth}" + (f" ({arch})" if arch else "")


def fmt_error(stat: dict) -> str:
    """``6.61 ± 0.16`` over several runs, ``6.43`` for one, ``-`` for none."""
    if not stat.get("n"):
        return "-"
    return f"{stat['mean']:.2f} ± {stat['std']:.2f}" if stat["n"] > 1 else f"{stat['mean']:.2f}"


def fmt_count(n: Any) -> str:
    """1727962 -> ``1.73M``, 252.89e6 -> ``252.89M``, 3.6e9 -> ``3.60G``."""
    if n is None:
        return "-"
    n = float(n)
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def fmt_time(seconds: float | None) -> str:
    """Seconds as ``1h02m``, ``3m05s`` or ``12.3s``."""
    if seconds is None:
        return "-"
    if seconds >= 3600:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    if seconds >= 60:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{seconds:.1f}s"


def published_error(published: Sequence, group: dict) -> str:
    """The paper's number for a row: the first entry of sweep.json's ``published`` (pairs of
    ``{field: value}`` and text) whose values the row has, or ``-``."""
    for values, text in published:
        if all(grid.format_value(group.get(f)) == grid.format_value(v)
               for f, v in dict(values).items()):
            return str(text)
    return "-"


def render_table(rows: Sequence[dict], fields: Sequence[str], published: Sequence = ()) -> str:
    """The paper-style markdown table; with `published` (sweep.json's), the paper's number
    beside ours."""
    keys = [f for f in fields if not collect.is_seed_field(f)]
    labels = grid.axis_labels(keys)
    head = [*labels, "model", "runs", "top-1 err % (final): best (mean ± std)",
            *(["paper top-1 err %"] if published else []),
            "top-1 err % (best eval)", "top-5 err % (final)", "params", "mult-adds", "steps",
            "train time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        runs = f"{row['runs']}/{row['members']}"
        if row["failed"]:
            runs += f" ({row['failed']} failed)"
        cells = [*(grid.format_value(row["group"][k]) for k in keys), row["model"] or "-", runs,
                 replicas.paper_form(row["final"]),
                 *([published_error(published, row["group"])] if published else []),
                 fmt_error(row["best"]),
                 fmt_error(row["final_top5"]), fmt_count(row["params"]),
                 fmt_count(row["macs"]), str(row["steps"] if row["steps"] is not None else "-"),
                 fmt_time(row["train_time_s"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_members(records: Sequence[collect.MemberRecord]) -> str:
    """A per-member status list (failures with the last line of their traceback; unfinished
    members with their last attempt in sweep_log.jsonl)."""
    if not records:
        return "No member has started yet."
    lines = []
    for r in records:
        if r.status == "done":
            final = (r.results.get("final") or {}).get("top1_error")
            detail = f"final top-1 error {final:.2f}%" if final is not None else "done"
        elif r.status == "failed":
            detail = f"FAILED: {r.error} (see {r.name}/{collect.ERROR_FILE})"
        else:
            detail = "not finished"
            if r.attempts:
                last = r.attempts[-1]
                detail += (f" (last attempt: {last.get('status')} after "
                           f"{fmt_time(float(last.get('seconds') or 0.0))})")
        if len(r.attempts) > 1:
            detail += f"; {len(r.attempts)} attempts"
        lines.append(f"- `{r.name}`: {detail}")
    return "\n".join(lines)


def _recipe(spec: str) -> str:
    """A config spec as the report names it: the recipe's file name and its argument
    ('cifar10.py:data=../shared/data/cifar10-train.tar.gz'), without the recipe's folder."""
    path, colon, arg = spec.partition(".py:")
    return os.path.basename(path + ".py" if colon else path) + (f":{arg}" if colon else "")


def write_report(sweep_dir: files.PathLike, *, plots: bool = True) -> epath.Path:
    """Write ``report.md`` (and the PNGs if ``plots``) into ``sweep_dir`` (local or remote);
    return its path. Raises ValueError when ``sweep_dir`` is not a sweep directory."""
    root = epath.Path(sweep_dir)
    desc, records = collect.read_sweep(root)
    fields = collect.varied_fields(desc, records)
    rows = build_rows(records, fields)
    title = desc.get("name") or root.name
    parts = [f"# Sweep report: {title}", ""]
    if desc.get("base"):
        parts += [f"Base config `{_recipe(str(desc['base']))}`; varied: "
                  + ", ".join(f"`{f}`" for f in fields) + ".", ""]
    published = desc.get("published") or []
    parts += ["Errors in percent on the run's eval split; final top-1 error as the paper "
              "prints it: the best run (mean ± sample std over seeds).", ""]
    if published:
        parts += [f"Paper column: {desc.get('published_source') or 'published numbers'}.", ""]
    parts += [render_table(rows, fields, published), "", "## Members", "",
              render_members(records), ""]
    if plots:
        from resnet_jax.sweeps import plots as plotting  # lazy: matplotlib

        figures = []
        mean = "; a curve of several seeds is their mean"
        if plotting.plot_training_curves(records, fields, root / FIG6):
            figures.append(("Train (dashed) and eval (solid) error vs iterations (Fig. 6)"
                            + mean, FIG6))
        if plotting.plot_layer_responses(records, fields, root / FIG7):
            figures.append(("Std of 3x3 layer responses after BN (Fig. 7)" + mean, FIG7))
        if figures:
            parts += ["## Figures", ""] + [f"![{t}]({f})\n" for t, f in figures]
    out = root / "report.md"
    out.write_text("\n".join(parts))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``resnet-jax report``."""
    parser.add_argument("sweep_dir", help="directory written by `resnet-jax sweep`")
    parser.add_argument("--no-plots", action="store_true", help="write report.md only")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``resnet-jax report``: prints the table and where the files went."""
    out = write_report(args.sweep_dir, plots=not args.no_plots)
    print(out.read_text())
    print(f"[report] wrote {out}")
    return 0

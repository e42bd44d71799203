"""Matplotlib figures of a sweep (Agg backend, PNG): Fig. 6 training curves, Fig. 7 responses.

Curves of members that differ only in their seed are averaged point by point (the legend says
"mean of N seeds"). Legends sit
below the axes, so they never cover a curve. Figures are rendered in memory and written
through etils ``epath`` (local or remote sweep directories).
"""
from __future__ import annotations

import io
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
from etils import epath  # noqa: E402

from resnet_jax import files  # noqa: E402
from resnet_jax.sweeps import collect, grid  # noqa: E402

PLAIN_FIELD = "model.plain"


def error_curve(records: Sequence[collect.MemberRecord], split: str,
                metric: str = "top1_error") -> tuple[np.ndarray, np.ndarray]:
    """``(steps, error %)`` of ``split`` ('train'|'val') in metrics.jsonl, averaged over members."""
    by_step: dict[int, list[float]] = {}
    for r in records:
        for row in r.metrics:
            if row.get("split") == split and row.get(metric) is not None:
                by_step.setdefault(int(row["step"]), []).append(float(row[metric]))
    steps = np.array(sorted(by_step), dtype=np.int64)
    return steps, np.array([np.mean(by_step[s]) for s in steps], dtype=np.float64)


def _panels(records, fields):
    """[(title, [(label, members)])]: split on model.plain when it varies (plain | ResNet)."""
    curve_fields = [f for f in fields if f != PLAIN_FIELD]
    plains = list(dict.fromkeys(r.get(PLAIN_FIELD) for r in records))
    splits = [(True, "plain"), (False, "ResNet")] if PLAIN_FIELD in fields else [(None, "")]
    panels = []
    for value, title in splits:
        chosen = [r for r in records if value is None or r.get(PLAIN_FIELD) == value]
        if value is not None and value not in plains:
            continue
        groups = collect.group_members(chosen, curve_fields)
        panels.append((title, [(_curve_label(v, title, m), m) for v, m in groups]))
    return panels


def _curve_label(values: dict, family: str, members) -> str:
    """``plain-20`` for a depth sweep (as in the paper), else ``shortcut=A`` style."""
    if set(values) == {"model.depth"} and family:
        return f"{family}-{values['model.depth']}"
    if not values:
        model = (members[0].results or {}).get("model", "") if members else ""
        return model or family or "run"
    labels = grid.axis_labels(list(values))
    return ",".join(f"{k}={grid.format_value(v)}" for k, v in zip(labels, values.values()))


def _mean_of(seeds: int) -> str:
    """What a legend adds to the label of a curve averaged over several seeds."""
    return f" (mean of {seeds} seeds)" if seeds > 1 else ""


def save_figure(fig: matplotlib.figure.Figure, path: files.PathLike) -> None:
    """Render ``fig`` as a PNG in memory (legends outside the axes included) and write it to
    ``path`` through epath; closes the figure."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    epath.Path(path).write_bytes(buffer.getvalue())


def _legend_below(ax: matplotlib.axes.Axes, handles: list, labels: list[str]) -> None:
    """The legend under the axes (below the x label): it never covers data."""
    ax.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14),
              ncol=min(len(labels), 4), frameon=False)


def plot_training_curves(records: Sequence[collect.MemberRecord], fields: Sequence[str],
                         path: files.PathLike) -> bool:
    """Fig. 6: train error dashed, eval error solid, vs iterations. False if no metrics at all."""
    if not any(r.metrics for r in records):
        return False
    panels = _panels(records, fields)
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False,
                             sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (title, groups) in zip(axes[0], panels):
        for i, (label, members) in enumerate(groups):
            color = colors[i % len(colors)]
            steps, err = error_curve(members, "train")
            if len(steps):
                ax.plot(steps, err, "--", color=color, linewidth=1.0, alpha=0.8)
            steps, err = error_curve(members, "val")
            seeds = sum(any(row.get("split") == "val" for row in r.metrics) for r in members)
            if len(steps):
                ax.plot(steps, err, "-", color=color, linewidth=1.8,
                        label=label + _mean_of(seeds))
        ax.set_title(title or "runs")
        ax.set_xlabel("iterations")
        ax.grid(True, alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        handles += [plt.Line2D([], [], color="gray", ls="--"), plt.Line2D([], [], color="gray")]
        labels += ["train error", "eval error"]
        _legend_below(ax, handles, labels)
    axes[0][0].set_ylabel("top-1 error (%)")
    fig.tight_layout()
    save_figure(fig, path)
    return True


def plot_layer_responses(records: Sequence[collect.MemberRecord], fields: Sequence[str],
                         path: files.PathLike) -> bool:
    """Fig. 7: per-3x3-layer response std in network order (top) and sorted (bottom).

    Plain nets dashed, ResNets solid. False (no file) when no member has ``analysis.json``.
    """
    analysed = [r for r in records if r.analysis and r.analysis.get("layer_std")]
    if not analysed:
        return False
    groups = collect.group_members(analysed, fields)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (values, members) in enumerate(groups):
        stds = [np.asarray(r.analysis["layer_std"], dtype=np.float64) for r in members]
        stds = [s for s in stds if len(s) == len(stds[0])]  # same net; seeds averaged
        mean = np.mean(stds, axis=0)
        plain = bool(members[0].get(PLAIN_FIELD, False))
        family = "plain" if plain else "ResNet"
        label = (members[0].results or {}).get("model") or _curve_label(values, family, members)
        if set(values) - {"model.depth", PLAIN_FIELD}:
            label = f"{label} ({_curve_label(values, '', members)})"
        style = dict(color=colors[i % len(colors)], ls="--" if plain else "-",
                     label=label + _mean_of(len(stds)))
        layers = np.arange(1, len(mean) + 1)
        top.plot(layers, mean, **style)
        bottom.plot(layers, np.sort(mean)[::-1], **style)
    top.set_xlabel("layer index (original order)")
    bottom.set_xlabel("layer index (sorted by magnitude)")
    top.set_title("std of each 3x3 layer's response (after BN, before ReLU)")
    for ax in (top, bottom):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel("std of response")
        ax.grid(True, alpha=0.3)
    _legend_below(bottom, *bottom.get_legend_handles_labels())
    fig.tight_layout()
    save_figure(fig, path)
    return True

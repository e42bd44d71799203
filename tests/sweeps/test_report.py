"""The report of a (fake-trained) sweep: table rows and numbers, valid PNG figures."""
import argparse
import json
from pathlib import Path

import pytest

from resnet_jax import cli
from resnet_jax.sweeps import collect, grid, report, run

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def depth_sweep(tmp_path_factory, fake_train):
    """depth {20, 56} x plain x 2 seeds, each pair of seeds packed as the 2 replicas of one
    run; plain-56's seed 1 diverges (frozen); fake analysis for two runs."""
    root = tmp_path_factory.mktemp("fig6")
    sweep = grid.load_sweep(
        str(REPO / "configs/sweeps/cifar10_depth_plain.py:steps=40,depths=20/56,seeds=2"))
    fail = lambda c: c.model.plain and c.model.depth == 56 and c.seed == 1  # noqa: E731
    run.run_sweep(sweep, root, train_fn=lambda c, w: fake_train(c, w, fail), log=lambda _: None)
    for name, stds in (("depth=20,plain=true,seed=0-1", [1.0, 2.0, 1.5]),
                       ("depth=20,plain=false,seed=0-1", [0.5, 0.7, 0.6])):
        (root / name / collect.ANALYSIS_FILE).write_text(json.dumps(
            {"replicas": [{"layer_std": stds}, {"layer_std": [x + 0.1 for x in stds]}]}))
    return root


def test_rows_group_seeds_and_keep_grid_order(depth_sweep):
    desc, records = collect.read_sweep(depth_sweep)
    fields = collect.varied_fields(desc, records)
    assert fields == ["model.depth", "model.plain", "seed"]
    rows = report.build_rows(records, fields)
    assert [(r["group"]["model.depth"], r["group"]["model.plain"]) for r in rows] == [
        (20, True), (20, False), (56, True), (56, False)]
    plain20, res20, plain56, res56 = rows
    # fake error: plain 40 + seed; ResNet 30 - depth/10 + seed; seeds 0 and 1 (replicas 0, 1)
    assert plain20["final"] == pytest.approx({"n": 2, "min": 40.0, "mean": 40.5,
                                              "std": 0.5 ** 0.5})
    assert res56["final"] == pytest.approx({"n": 2, "min": 24.4, "mean": 24.9,
                                            "std": 0.5 ** 0.5})
    assert res56["best"]["mean"] == pytest.approx(24.4)
    assert (plain56["runs"], plain56["members"], plain56["failed"]) == (1, 2, 1)
    assert plain56["final"] == {"n": 1, "min": 40.0, "mean": 40.0, "std": 0.0}
    assert res20["params"] == 20_000 and res20["macs"] == 40_000_000
    assert res20["model"] == "ResNet-20" and res20["steps"] == 40


def test_report_md_has_one_row_per_model_and_the_figures(depth_sweep, assert_png):
    parser = argparse.ArgumentParser()
    report.add_arguments(parser)
    assert report.run(parser.parse_args([str(depth_sweep)])) == 0
    text = (depth_sweep / "report.md").read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    assert lines[0].startswith("| depth | plain | model | runs | top-1 err % (final): best "
                               "(mean ± std) |")
    body = lines[1:]
    assert len(body) == 4
    assert body[0].startswith("| 20 | true | plain-20 | 2/2 | 40.00 (40.50 ± 0.71) | "
                              "40.00 ± 0.71")
    assert body[2].startswith("| 56 | true | plain-56 | 1/2 (1 failed) | 40.00 | 39.50 |")
    assert "| 20.00K | 40.00M | 40 | 12.5s |" in body[1]
    # the diverged seed is a failed run of its own, named as the grid names it
    assert ("`depth=56,plain=true,seed=1`: FAILED: non-finite loss or gradient at step 1 "
            "(replica 1 frozen)") in text
    assert "![" in text and report.FIG6 in text and report.FIG7 in text
    assert_png(depth_sweep / report.FIG6)
    assert_png(depth_sweep / report.FIG7)


def test_fig6_panels_split_plain_and_resnet(depth_sweep):
    from resnet_jax.sweeps import plots

    desc, records = collect.read_sweep(depth_sweep)
    panels = plots._panels(records, collect.varied_fields(desc, records))
    assert [(title, [label for label, _ in groups]) for title, groups in panels] == [
        ("plain", ["plain-20", "plain-56"]), ("ResNet", ["ResNet-20", "ResNet-56"])]
    steps, err = plots.error_curve(panels[1][1][0][1], "val")
    # ResNet-20 val error at the end, mean of seeds 0 and 1 (28 and 29)
    assert steps[-1] == 40 and err[-1] == pytest.approx(28.5)


def test_no_figure_without_data(tmp_path):
    (tmp_path / "a=1").mkdir()
    (tmp_path / "a=1" / "member.json").write_text(json.dumps(
        {"index": 0, "name": "a=1", "values": [["a", 1]]}))
    out = report.write_report(tmp_path)
    assert "`a=1`: not finished" in out.read_text()
    assert not (tmp_path / report.FIG6).exists() and not (tmp_path / report.FIG7).exists()


def test_formats():
    from resnet_jax.train import replicas
    five = {"n": 5, "min": 6.43, "mean": 6.61, "std": 0.16}
    assert report.fmt_error(five) == "6.61 ± 0.16"
    assert replicas.paper_form(five) == "6.43 (6.61 ± 0.16)"   # the paper's ResNet-110 row
    assert report.fmt_error(replicas.stats([6.43])) == "6.43" == replicas.paper_form(
        replicas.stats([6.43]))
    assert report.fmt_error({"n": 0}) == "-" == replicas.paper_form(replicas.stats([]))
    assert report.fmt_count(1_727_962) == "1.73M" and report.fmt_count(3.6e9) == "3.60G"
    assert report.fmt_time(3725) == "1h02m" and report.fmt_time(185) == "3m05s"


@pytest.mark.parametrize("make", [
    lambda d: None,                                                   # empty folder
    lambda d: ((d / "notes").mkdir(), (d / "notes" / "a.txt").write_text("x")),
    lambda d: ((d / "run").mkdir(), (d / "run" / "results.json").write_text("{}")),  # a run
])
def test_report_on_a_folder_that_is_not_a_sweep_fails_clearly(tmp_path, capsys, make):
    make(tmp_path)
    assert cli.main(["report", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert "is not a sweep directory" in err and "sweep.json" in err
    assert not (tmp_path / "report.md").exists()


def test_the_report_names_its_base_recipe(tmp_path):
    """It titled "Base config `cifar10-train.tar.gz`": the last part of the recipe's argument."""
    (tmp_path / "sweep.json").write_text(json.dumps(
        {"name": "s", "base": "/repo/configs/cifar10.py:data=../shared/data/cifar10-train.tar.gz",
         "axes": [["seed", [0, 1]]], "members": ["seed=0", "seed=1"]}))
    text = report.write_report(tmp_path, plots=False).read_text()
    assert "Base config `cifar10.py:data=../shared/data/cifar10-train.tar.gz`;" in text, text


def test_report_of_a_sweep_not_started_yet(tmp_path):
    (tmp_path / "sweep.json").write_text(json.dumps(
        {"name": "s", "axes": [["seed", [0, 1]]], "members": ["seed=0", "seed=1"]}))
    assert "No member has started yet." in report.write_report(tmp_path, plots=False).read_text()


def plot_figures_6_and_7(sweep, monkeypatch, tmp_path, on_save) -> None:
    """Plots the sweep's Figure 6 and Figure 7, calling `on_save(fig)` as each is saved."""
    import matplotlib.figure

    from resnet_jax.sweeps import plots

    real_savefig = matplotlib.figure.Figure.savefig

    def savefig(fig, *args, **kwargs):
        on_save(fig)
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    desc, records = collect.read_sweep(sweep)
    fields = collect.varied_fields(desc, records)
    assert plots.plot_training_curves(records, fields, tmp_path / "f6.png")
    assert plots.plot_layer_responses(records, fields, tmp_path / "f7.png")


def test_fig6_and_fig7_legends_never_cover_the_axes(depth_sweep, monkeypatch, tmp_path):
    """The legend sits outside every panel (it covered the end of the plain panel's curves)."""
    saved = []

    def check(fig):
        fig.canvas.draw()
        for ax in fig.axes:
            box = ax.get_window_extent()
            for legend in [ax.get_legend()] + list(fig.legends):
                if legend is not None:
                    assert not legend.get_window_extent().overlaps(box), ax.get_title()
        saved.append(fig)

    plot_figures_6_and_7(depth_sweep, monkeypatch, tmp_path, check)
    assert len(saved) == 2


def test_figures_say_a_curve_is_the_mean_over_seeds(depth_sweep, monkeypatch, tmp_path):
    """Both figures plotted the mean over each net's seeds without saying so."""
    legends = []
    plot_figures_6_and_7(depth_sweep, monkeypatch, tmp_path, lambda fig: legends.append(
        [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]))
    fig6, fig7 = legends
    assert "ResNet-20 (mean of 2 seeds)" in fig6 and "plain-56 (mean of 2 seeds)" in fig6, fig6
    assert fig7 == ["plain-20 (mean of 2 seeds)", "ResNet-20 (mean of 2 seeds)"], fig7
    text = report.write_report(depth_sweep).read_text()
    assert text.count("a curve of several seeds is their mean") == 2, text


def test_report_and_plots_do_not_import_each_other():
    """No import cycle: the shared pieces (group_members, is_seed_field) live in collect."""
    import ast

    def imported(module):
        tree = ast.parse(Path(module.__file__).read_text())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "resnet_jax.sweeps":
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module.rsplit(".", 1)[-1])
        return names

    from resnet_jax.sweeps import plots

    assert "report" not in imported(plots)
    assert "plots" in imported(report)          # lazily, for the figures


def test_report_prints_the_papers_number_beside_ours(tmp_path, fake_train):
    """A sweep config's `published` numbers reach sweep.json and the report's own column,
    row by row, with the table they come from cited above it."""
    sweep = grid.with_seeds(grid.load_sweep(str(
        REPO / "configs/sweeps/cifar10_unit_variants.py:steps=40,bottleneck=0,units=post/preact")
    ), 2)
    run.run_sweep(sweep, tmp_path, train_fn=fake_train, log=lambda _: None)
    text = report.write_report(tmp_path, plots=False).read_text()
    assert "Base config `cifar10.py`; varied: `model.depth`, `model.block`, `model.unit`" in text
    assert "Paper column: He et al. 2016, Identity Mappings in Deep Residual Networks " \
           "(arXiv 1603.05027), Table 2" in text
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    assert lines[0].startswith("| depth | block | unit | model | runs | top-1 err % (final): "
                               "best (mean ± std) | paper top-1 err % | top-1 err % (best eval)")
    # fake error 30 - 110/10 + seed: 19 and 20
    assert lines[1].startswith("| 110 | basic | post | ResNet-110 | 2/2 | 19.00 (19.50 ± 0.71) "
                               "| 6.61 |")
    assert lines[2].startswith("| 110 | basic | preact | ResNet-110 | 2/2 | 19.00 "
                               "(19.50 ± 0.71) | 6.37 |")

"""The smoke sweep with the real trainer: 2x2 members (plain x seed, cifar_resnet8 width 4,
8 steps on synthetic 16x16 images), one member failing; resume; analysis; report."""
import argparse
import json
from pathlib import Path

import pytest

from resnet_jax.sweeps import analysis, collect, grid, report, run

REPO = Path(__file__).resolve().parents[2]
FAILING = "plain=true,seed=1"


pytestmark = pytest.mark.usefixtures("compilation_cache")  # tests/conftest.py


def real_train_except_one(config, workdir):
    if Path(workdir).name == FAILING:
        raise RuntimeError("injected failure")
    return run._default_train(config, workdir)


@pytest.mark.slow
def test_tiny_sweep_resumes_survives_a_failure_and_reports(tmp_path, assert_png):
    sweep = grid.load_sweep(str(REPO / "configs/sweeps/smoke.py"))
    records = run.run_sweep(sweep, tmp_path, train_fn=real_train_except_one, log=lambda _: None)
    assert [r["status"] for r in records] == ["done", "done", "done", "failed"]
    results = json.loads((tmp_path / "plain=true,seed=0" / "results.json").read_text())
    assert results["model"] == "cifar_plain8" and results["steps"] == 8
    # a ResNet with option A has exactly its plain twin's parameters (paper Sec. 4.2)
    res = json.loads((tmp_path / "plain=false,seed=0" / "results.json").read_text())
    assert res["params"] == results["params"] and res["macs"] == results["macs"]

    again = run.run_sweep(sweep, tmp_path, train_fn=real_train_except_one, log=lambda _: None)
    assert [r["status"] for r in again] == ["skipped", "skipped", "skipped", "failed"]

    parser = argparse.ArgumentParser()
    analysis.add_arguments(parser)
    assert analysis.run(parser.parse_args([str(tmp_path), "--num-images", "32"])) == 0
    stds = json.loads((tmp_path / "plain=false,seed=0" / collect.ANALYSIS_FILE).read_text())
    assert len(stds["layer_std"]) == 7 and stds["num_images"] == 32
    assert not (tmp_path / FAILING / collect.ANALYSIS_FILE).exists()

    text = report.write_report(tmp_path).read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| ")][1:]
    assert len(rows) == 2
    assert rows[0].startswith("| false | cifar_resnet8 | 2/2 |")
    assert rows[1].startswith("| true | cifar_plain8 | 1/2 (1 failed) |")
    assert f"`{FAILING}`: FAILED: RuntimeError: injected failure" in text
    assert_png(tmp_path / report.FIG6)
    assert_png(tmp_path / report.FIG7)

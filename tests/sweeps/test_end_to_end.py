"""The smoke sweep with the real trainer: plain x 2 seeds (cifar_resnet8 width 4, 8 steps on
synthetic 16x16 images), each net's 2 seeds packed as the 2 replicas of one run, one run
failing; resume; analysis of each replica; report by seed."""
import argparse
import json
from pathlib import Path

import pytest

from resnet_jax.sweeps import analysis, collect, grid, report, run

REPO = Path(__file__).resolve().parents[2]
FAILING = "plain=true,seed=0-1"




def real_train_except_one(config, workdir):
    if Path(workdir).name == FAILING:
        raise RuntimeError("injected failure")
    return run._default_train(config, workdir)


@pytest.mark.slow
def test_tiny_sweep_resumes_survives_a_failure_and_reports(tmp_path, assert_png):
    sweep = grid.load_sweep(str(REPO / "configs/sweeps/smoke.py"))
    records = run.run_sweep(sweep, tmp_path, train_fn=real_train_except_one, log=lambda _: None)
    assert [r["status"] for r in records] == ["done", "failed"]
    results = json.loads((tmp_path / "plain=false,seed=0-1" / "results.json").read_text())
    assert results["model"] == "cifar_resnet8" and results["steps"] == 8
    assert [r["seed"] for r in results["replicas"]] == [0, 1]
    assert results["replicas"][0]["final"] != results["replicas"][1]["final"]

    again = run.run_sweep(sweep, tmp_path, train_fn=real_train_except_one, log=lambda _: None)
    assert [r["status"] for r in again] == ["skipped", "failed"]

    parser = argparse.ArgumentParser()
    analysis.add_arguments(parser)
    assert analysis.run(parser.parse_args([str(tmp_path), "--num-images", "32"])) == 0
    stds = json.loads((tmp_path / "plain=false,seed=0-1" / collect.ANALYSIS_FILE).read_text())
    assert [len(r["layer_std"]) for r in stds["replicas"]] == [7, 7]
    assert stds["num_images"] == 32 and stds["replicas"][0] != stds["replicas"][1]
    assert not (tmp_path / FAILING / collect.ANALYSIS_FILE).exists()

    text = report.write_report(tmp_path).read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| ")][1:]
    assert len(rows) == 2
    assert rows[0].startswith("| false | cifar_resnet8 | 2/2 |")
    assert rows[1].startswith("| true | - | 0/2 (2 failed) |")   # it never started
    assert "`plain=true,seed=1`: FAILED: RuntimeError: injected failure" in text
    assert_png(tmp_path / report.FIG6)
    assert_png(tmp_path / report.FIG7)

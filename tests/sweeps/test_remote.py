"""A sweep on a remote workdir (``gs://``, served from memory by the ``fake_gcs`` fixture):
everything the sweep writes and reads goes through epath, nothing lands on the local disk."""
import json
from pathlib import Path

from etils import epath

from resnet_jax import cli
from resnet_jax.sweeps import analysis, collect, grid, report, run

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "configs/sweeps/smoke.py")
ROOT = "gs://bucket/sweeps/smoke"


def test_sweep_report_and_analysis_dirs_on_a_remote_workdir(fake_gcs, fake_train, assert_png):
    sweep = grid.load_sweep(SMOKE)
    calls = []

    def train(config, workdir):
        calls.append(workdir)
        return fake_train(config, workdir, lambda c: c.model.plain and c.seed == 1)

    records = run.run_sweep(sweep, ROOT, train_fn=train, log=lambda _: None, pack=False)
    assert [r["status"] for r in records] == ["done", "done", "done", "failed"]
    assert calls[0] == f"{ROOT}/plain=false,seed=0"  # the trainer gets the remote path
    root = epath.Path(ROOT)
    assert json.loads((root / "sweep.json").read_text())["members"] == [
        m.name for m in sweep.members()]
    assert json.loads((root / "plain=true,seed=0" / "member.json").read_text())["index"] == 2
    log = [json.loads(x) for x in (root / "sweep_log.jsonl").read_text().splitlines()]
    assert [x["status"] for x in log] == ["done", "done", "done", "failed"]
    assert "RuntimeError: boom" in (root / "plain=true,seed=1" / "error.txt").read_text()
    assert "/bucket/sweeps/smoke/plain=false,seed=1/results.json" in fake_gcs

    # results detection: finished members are skipped, a torn results.json is not done
    (root / "plain=false,seed=1" / "results.json").write_text('{"model": "ResNet-8", "par')
    calls.clear()
    records = run.run_sweep(sweep, ROOT, train_fn=train, log=lambda _: None, pack=False)
    assert [r["status"] for r in records] == ["skipped", "done", "skipped", "failed"]
    assert [epath.Path(c).name for c in calls] == ["plain=false,seed=1", "plain=true,seed=1"]

    # analysis finds the done members there; the report and its figures are written there
    assert [d.name for d in analysis.run_dirs(ROOT)] == [
        "plain=false,seed=0", "plain=false,seed=1", "plain=true,seed=0"]
    text = report.write_report(ROOT).read_text()
    assert text == (root / "report.md").read_text()
    assert "| false | ResNet-8 | 2/2 |" in text and "| true | plain-8 | 1/2 (1 failed) |" in text
    assert "`plain=true,seed=1`: FAILED: RuntimeError: boom at depth 8" in text
    assert "; 2 attempts" in text
    assert_png(root / report.FIG6)
    desc, records = collect.read_sweep(ROOT)
    assert [r.status for r in records] == ["done", "done", "done", "failed"]


def test_cli_sweep_analyze_report_on_a_remote_workdir(fake_gcs, fake_train, monkeypatch, capsys):
    import ml_collections
    import numpy as np

    from resnet_jax.train import loop

    monkeypatch.setattr(run, "_default_train", lambda c, w: fake_train(c, w))
    assert cli.main(["sweep", SMOKE, "--workdir", "gs://bucket/cli",
                     "--set", "train.num_steps=4"]) == 0
    assert "2 done, 0 skipped, 0 failed" in capsys.readouterr().out   # 2 seeds packed in each
    config = json.loads(epath.Path("gs://bucket/cli/plain=true,seed=0-1/config.json").read_text())
    assert (config["train"]["num_steps"], config["train"]["replicas"]) == (4, 2)

    # analyze: the model is faked (the trainer's own checkpoints are not on this filesystem)
    def load_trained(workdir, replica=None):
        text = epath.Path(workdir, "config.json").read_text()
        return ml_collections.ConfigDict(json.loads(text)), None, replica

    monkeypatch.setattr(loop, "load_trained", load_trained)
    monkeypatch.setattr(analysis, "eval_images", lambda *a: [])
    monkeypatch.setattr(analysis, "layer_response_stds",
                        lambda model, replica, images: np.array([2.0, 1.0]) + replica)
    assert cli.main(["analyze", "gs://bucket/cli", "--num-images", "8"]) == 0
    assert cli.main(["analyze", "gs://bucket/cli"]) == 0
    assert capsys.readouterr().out.count("already analysed") == 2
    saved = json.loads(epath.Path("gs://bucket/cli/plain=true,seed=0-1/analysis.json").read_text())
    assert saved == {"model": "cifar_plain8", "num_images": 8,
                     "replicas": [{"layer_std": [2.0, 1.0]}, {"layer_std": [3.0, 2.0]}]}

    assert cli.main(["report", "gs://bucket/cli"]) == 0
    assert "[report] wrote gs://bucket/cli/report.md" in capsys.readouterr().out
    assert {"/bucket/cli/report.md", f"/bucket/cli/{report.FIG6}",
            f"/bucket/cli/{report.FIG7}"} <= set(fake_gcs)

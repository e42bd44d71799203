"""The sweep runner with a fake trainer: runs all, skips finished, survives failures, shards."""
import argparse
import json
from pathlib import Path

import pytest

from resnet_jax import cli
from resnet_jax.sweeps import collect, grid, report, run

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "configs/sweeps/smoke.py")
SMOKE_RECIPE = str(REPO / "configs/smoke.py")


class Recorder:
    """A trainer that records the members it was called for, then runs ``train``."""

    def __init__(self, train, fail_if=None):
        self.calls = []
        self.train, self.fail_if = train, fail_if

    def __call__(self, config, workdir):
        self.calls.append(Path(workdir).name)
        return self.train(config, workdir, self.fail_if)


def test_runs_every_member_then_skips_them_all(tmp_path, fake_train):
    sweep = grid.load_sweep(SMOKE)
    train = Recorder(fake_train)
    records = run.run_sweep(sweep, tmp_path, pack=False, train_fn=train, log=lambda _: None)
    names = [m.name for m in sweep.members()]
    assert train.calls == names and [r["status"] for r in records] == ["done"] * 4
    desc = json.loads((tmp_path / "sweep.json").read_text())
    assert desc["members"] == names
    member = json.loads((tmp_path / names[2] / "member.json").read_text())
    assert member == {"index": 2, "name": "plain=true,seed=0",
                      "values": [["model.plain", True], ["seed", 0]]}
    # what the trainer saw is the member's config
    config = json.loads((tmp_path / names[3] / "config.json").read_text())
    assert (config["model"]["plain"], config["seed"]) == (True, 1)

    again = Recorder(fake_train)
    records = run.run_sweep(sweep, tmp_path, pack=False, train_fn=again, log=lambda _: None)
    assert again.calls == [] and [r["status"] for r in records] == ["skipped"] * 4
    assert "0 done, 4 skipped, 0 failed" in run.summarize(records)


def test_a_failing_member_is_recorded_and_the_rest_run(tmp_path, fake_train):
    sweep = grid.load_sweep(SMOKE)
    train = Recorder(fake_train, fail_if=lambda c: c.model.plain and c.seed == 0)
    records = run.run_sweep(sweep, tmp_path, pack=False, train_fn=train, log=lambda _: None)
    assert [r["status"] for r in records] == ["done", "done", "failed", "done"]
    assert "boom at depth 8" in records[2]["error"]
    error = (tmp_path / "plain=true,seed=0" / "error.txt").read_text()
    assert "Traceback" in error and "RuntimeError: boom at depth 8" in error
    assert not (tmp_path / "plain=true,seed=0" / "results.json").exists()
    log = [json.loads(x) for x in (tmp_path / "sweep_log.jsonl").read_text().splitlines()]
    assert [x["status"] for x in log] == ["done", "done", "failed", "done"]
    assert "plain=true,seed=0" in run.summarize(records)

    # run again with the cause fixed: only the failed member runs, and its error goes away
    fixed = Recorder(fake_train)
    records = run.run_sweep(sweep, tmp_path, pack=False, train_fn=fixed, log=lambda _: None)
    assert fixed.calls == ["plain=true,seed=0"]
    assert not (tmp_path / "plain=true,seed=0" / "error.txt").exists()


@pytest.mark.parametrize("item, field", [
    ("train.num_steps=abc", "train.num_steps"),     # wrong type
    ("train.nope=1", "train.nope"),                 # unknown field
    ("model.shortcut=Z", "model.shortcut"),         # outside the allowed values
])
def test_a_bad_set_fails_once_before_any_member_runs(tmp_path, capsys, fake_train, item, field):
    train = Recorder(fake_train)
    sweep = grid.load_sweep(SMOKE)
    with pytest.raises(ValueError, match=f"every member.*{field}") as info:
        run.run_sweep(sweep, tmp_path / "lib", pack=False, extra_overrides=run._parse_set([item]),
                      train_fn=train, log=lambda _: None)
    assert "\n" not in str(info.value)
    # through the command line: one line on stderr, exit 2, nothing run or written
    workdir = tmp_path / "cli"
    assert cli.main(["sweep", SMOKE, "--workdir", str(workdir), "--set", item]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and field in err
    assert train.calls == [] and not workdir.exists() and not (tmp_path / "lib").exists()


def test_an_invalid_member_config_is_named_before_any_member_runs(tmp_path, fake_train):
    sweep = grid.sweep_from_config({"base": SMOKE_RECIPE, "axes": [("model.depth", [8, 9])]})
    train = Recorder(fake_train)
    with pytest.raises(ValueError, match=r"member depth=9: config field model\.depth=9"):
        run.run_sweep(sweep, tmp_path, pack=False, train_fn=train, log=lambda _: None)
    assert train.calls == [] and list(tmp_path.iterdir()) == []


def test_a_torn_results_json_is_not_done_and_the_member_runs_again(tmp_path, fake_train):
    sweep = grid.load_sweep(SMOKE)
    run.run_sweep(sweep, tmp_path, pack=False, train_fn=Recorder(fake_train), log=lambda _: None)
    torn = tmp_path / "plain=true,seed=0" / "results.json"
    torn.write_text(torn.read_text()[:20])          # a crash while it was written
    desc, records = collect.read_sweep(tmp_path)
    assert [r.status for r in records] == ["done", "done", "pending", "done"]
    assert not collect.is_done(torn.parent)
    again, lines = Recorder(fake_train), []
    records = run.run_sweep(sweep, tmp_path, pack=False, train_fn=again, log=lines.append)
    assert again.calls == ["plain=true,seed=0"]
    assert [r["status"] for r in records] == ["skipped", "skipped", "done", "skipped"]
    assert any("results.json is unreadable" in line for line in lines)
    assert json.loads(torn.read_text())["model"] == "plain-8"


def test_a_torn_sweep_log_line_is_tolerated_and_repaired(tmp_path, fake_train):
    sweep = grid.load_sweep(SMOKE)
    fail = Recorder(fake_train, fail_if=lambda c: c.seed == 1)
    run.run_sweep(sweep, tmp_path, pack=False, train_fn=fail, log=lambda _: None)
    log = tmp_path / "sweep_log.jsonl"
    with open(log, "a") as f:
        f.write('{"index": 1, "name": "plain=false,seed=1", "sta')    # SIGKILL mid-line
    desc, records = collect.read_sweep(tmp_path)
    assert [len(r.attempts) for r in records] == [1, 1, 1, 1]
    assert report.render_members(records).count("FAILED") == 2
    run.run_sweep(sweep, tmp_path, pack=False, train_fn=Recorder(fake_train), log=lambda _: None)
    rows = [json.loads(line) for line in log.read_text().splitlines()]   # every line parses
    assert [r["status"] for r in rows] == ["done", "failed", "done", "failed", "done", "done"]
    desc, records = collect.read_sweep(tmp_path)
    assert [r.status for r in records] == ["done"] * 4
    assert [len(r.attempts) for r in records] == [1, 2, 1, 2]


def test_shards_split_the_work_and_together_finish_it(tmp_path, fake_train):
    sweep = grid.load_sweep(SMOKE)
    seen = []
    for j in range(2):
        train = Recorder(fake_train)
        indices = run.select_indices(4, num_shards=2, shard_index=j)
        run.run_sweep(sweep, tmp_path, indices=indices, pack=False, train_fn=train, log=lambda _: None)
        seen.append(train.calls)
    assert seen == [["plain=false,seed=0", "plain=true,seed=0"],
                    ["plain=false,seed=1", "plain=true,seed=1"]]
    assert all((tmp_path / m.name / "results.json").exists() for m in sweep.members())


def test_cli_list_and_set(tmp_path, capsys, monkeypatch, fake_train):
    parser = argparse.ArgumentParser()
    run.add_arguments(parser)
    args = parser.parse_args([SMOKE, "--workdir", str(tmp_path), "--list", "--no-pack",
                              "--num-shards", "2", "--shard-index", "1"])
    assert run.run(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and out[0].endswith("(other shard)")
    assert out[1].strip() == "1  plain=false,seed=1"
    # --set reaches every member's config; the exit status reports failures
    train = Recorder(fake_train, fail_if=lambda c: c.seed == 1)
    monkeypatch.setattr(run, "_default_train", train)
    args = parser.parse_args([SMOKE, "--workdir", str(tmp_path), "--member", "0", "--no-pack",
                              "--set", "train.num_steps=6"])
    assert run.run(args) == 0 and train.calls == ["plain=false,seed=0"]
    config = json.loads((tmp_path / "plain=false,seed=0" / "config.json").read_text())
    assert config["train"]["num_steps"] == 6
    args = parser.parse_args([SMOKE, "--workdir", str(tmp_path), "--member", "1", "--no-pack"])
    assert run.run(args) == 1


def test_a_preempted_member_stops_the_sweep_and_resumes_on_rerun(tmp_path, fake_train):
    sweep = grid.load_sweep(SMOKE)
    calls = []

    def preempted_once(config, workdir):
        calls.append(Path(workdir).name)
        if len(calls) == 2:
            return {"preempted": True, "step": 4}
        return fake_train(config, workdir)

    records = run.run_sweep(sweep, tmp_path, pack=False, train_fn=preempted_once, log=lambda _: None)
    assert [r["status"] for r in records] == ["done", "preempted"]
    assert "preempted" in run.summarize(records)
    records = run.run_sweep(sweep, tmp_path, pack=False, train_fn=preempted_once, log=lambda _: None)
    assert [r["status"] for r in records] == ["skipped", "done", "done", "done"]
    assert calls[1] == calls[2] == "plain=false,seed=1"


def test_seeds_of_a_member_train_packed_as_one_run_and_report_as_seeds(tmp_path, fake_train):
    """The smoke sweep's 2 seeds of each net run as the 2 replicas of one run; the report reads
    each replica back as the seed it stands for; the directory keeps its packing."""
    sweep = grid.load_sweep(SMOKE)
    train = Recorder(fake_train)
    records = run.run_sweep(sweep, tmp_path, train_fn=train, log=lambda _: None)
    assert train.calls == ["plain=false,seed=0-1", "plain=true,seed=0-1"]
    assert [r["status"] for r in records] == ["done", "done"]
    desc = json.loads((tmp_path / "sweep.json").read_text())
    assert desc["pack"] is True and desc["members"] == train.calls
    member = json.loads((tmp_path / "plain=true,seed=0-1" / "member.json").read_text())
    assert member["packs"] == ["plain=true,seed=0", "plain=true,seed=1"]
    config = json.loads((tmp_path / "plain=true,seed=0-1" / "config.json").read_text())
    assert (config["seed"], config["train"]["replicas"]) == (0, 2)
    _, records = collect.read_sweep(tmp_path)
    assert [(r.name, r.values["seed"], r.results["final"]["top1_error"]) for r in records] == [
        ("plain=false,seed=0", 0, 29.2), ("plain=false,seed=1", 1, 30.2),
        ("plain=true,seed=0", 0, 40.0), ("plain=true,seed=1", 1, 41.0)]
    assert all(len(r.metrics) == 10 and "replica" not in r.metrics[0] for r in records)
    text = report.write_report(tmp_path, plots=False).read_text()
    assert "| true | plain-8 | 2/2 | 40.00 (40.50 ± 0.71) |" in text
    # Unpacked runs of the same sweep would be other directories: refused, not mixed.
    with pytest.raises(ValueError, match="started with its seeds packed.*without --no-pack"):
        run.run_sweep(sweep, tmp_path, pack=False, train_fn=train, log=lambda _: None)
    old = tmp_path / "old"
    run.run_sweep(sweep, old, pack=False, train_fn=Recorder(fake_train), log=lambda _: None)
    with pytest.raises(ValueError, match="started without its seeds packed.*with --no-pack"):
        run.run_sweep(sweep, old, train_fn=train, log=lambda _: None)


def test_cli_seeds_and_list_show_the_packed_runs(tmp_path, capsys):
    sweep = str(REPO / "configs/sweeps/cifar10_shortcut.py:seeds=1,steps=100")
    assert cli.main(["sweep", sweep, "--workdir", str(tmp_path), "--seeds", "3",
                     "--list"]) == 2   # the sweep varies seed already
    assert "already varies 'seed'" in capsys.readouterr().err
    smoke = str(REPO / "configs/sweeps/smoke.py")
    assert cli.main(["sweep", smoke, "--workdir", str(tmp_path), "--list"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "   0  plain=false,seed=0-1  (2 seeds as replicas of one run)",
        "   1  plain=true,seed=0-1  (2 seeds as replicas of one run)"]


def test_streaming_members_run_their_seeds_one_by_one(tmp_path, capsys):
    """A streaming run trains one replica: the CLI does not pack such a sweep's seeds (it
    refused every member: train.replicas=2 needs the in-memory pipeline)."""
    smoke = str(REPO / "configs/sweeps/smoke.py")
    assert cli.main(["sweep", smoke, "--workdir", str(tmp_path), "--list",
                     "--set=data.pipeline=streaming", "--set=data.source=folder",
                     "--set=data.train_augment=scale", "--set=data.normalize=per_channel",
                     f"--set=data.path={tmp_path}"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("sweep: the seeds run one by one, not as replicas")
    assert [line.split()[1] for line in out[1:]] == [
        "plain=false,seed=0", "plain=false,seed=1", "plain=true,seed=0", "plain=true,seed=1"]


def test_run_sweep_from_python_packs_no_streaming_member(tmp_path, fake_train):
    """`run_sweep` (pack=True by default) applies the CLI's rule itself: it packed the seeds of
    streaming members into runs of replicas, which the trainer then refused, every one."""
    sweep, lines = grid.load_sweep(SMOKE), []
    train = Recorder(fake_train)
    streaming = run._parse_set(["data.pipeline=streaming", "data.source=folder",
                                "data.train_augment=scale", "data.normalize=per_channel",
                                f"data.path={tmp_path}"])
    records = run.run_sweep(sweep, tmp_path / "s", extra_overrides=streaming, train_fn=train,
                            log=lines.append)
    assert lines[0].startswith("sweep: the seeds run one by one, not as replicas")
    assert train.calls == [m.name for m in sweep.members()] and len(records) == 4
    assert json.loads((tmp_path / "s" / "sweep.json").read_text())["pack"] is False

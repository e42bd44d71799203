"""resnet_jax.files: atomic JSON, JSON lines that survive a torn last line."""
import json

from resnet_jax import files


def test_write_json_replaces_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    files.write_json(path, {"a": 1})
    files.write_json(path, {"b": [1, 2]})
    assert json.loads(path.read_text()) == {"b": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_read_json_missing_or_torn_is_none(tmp_path):
    assert files.read_json(tmp_path / "nope.json") is None
    (tmp_path / "torn.json").write_text('{"step": 3, "fin')
    assert files.read_json(tmp_path / "torn.json") is None


def test_torn_last_line_is_dropped_and_repaired_before_append(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')   # SIGKILL mid-write
    assert files.read_jsonl(path) == [{"step": 1}, {"step": 2}]
    files.append_jsonl(path, {"step": 3})
    assert files.read_jsonl(path) == [{"step": 1}, {"step": 2}, {"step": 3}]
    assert path.read_text().endswith('{"step": 3}\n')


def test_read_jsonl_of_a_missing_file_is_empty(tmp_path):
    assert files.read_jsonl(tmp_path / "none.jsonl") == []


def test_a_gs_workdir_without_the_gcs_extra_is_one_line_before_anything(monkeypatch, capsys):
    """Without google-cloud-storage and gcsfs, `train`, `eval` and `sweep` on a gs:// workdir
    stop with one line naming the extra (exit 2), before the lease: every process checks it
    itself, so none waits for process 0 (whose client import failed with a traceback)."""
    import sys

    from resnet_jax import cli
    from resnet_jax.train import lease
    for module in ("google.cloud.storage", "gcsfs"):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    monkeypatch.setattr(lease, "hold", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("the lease was asked for")))
    for argv in (["train", "--config", "configs/smoke.py", "--workdir", "gs://bucket/run"],
                 ["eval", "--workdir", "gs://bucket/run"],
                 ["sweep", "configs/sweeps/smoke.py", "--workdir", "gs://bucket/sweep"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "gs://bucket/" in err, err
        assert "pip install 'resnet-jax[gcs]'" in err and "google.cloud.storage" in err

"""Helpers for the sweep tests, as fixtures: a fake trainer that writes what
train_and_evaluate writes (numbers from the config), a PNG check, and an in-memory ``gs://``
filesystem for etils epath (a remote workdir that works offline)."""
import json

import pytest
from etils import epath

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fake_error(config) -> float:
    """Plain nets worse, deeper ResNets better, seeds shift by 1: easy to check in a table."""
    base = 30.0 + (10.0 if config.model.plain else -0.1 * config.model.depth)
    return base + config.seed


def _replica(config, i: int):
    one = config.copy_and_resolve_references()
    with one.unlocked():
        one.seed = config.seed + i
        one.train.replicas = 1
    return one


def fake_train(config, workdir: str, fail_if=None) -> dict:
    """What train_and_evaluate writes; a run of N replicas (packed seeds) writes its replicas'
    rows and results, and a replica for which `fail_if` holds is frozen (diverged) at step 1
    instead of failing the run."""
    n = config.train.get("replicas", 1)
    if n == 1 and fail_if is not None and fail_if(config):
        raise RuntimeError(f"boom at depth {config.model.depth}")
    wd = epath.Path(workdir)
    (wd / "config.json").write_text(json.dumps(config.to_dict()))
    steps = config.train.num_steps
    rows, each = [], []
    for i in range(n):
        one = _replica(config, i)
        err = fake_error(one)
        tag = {"replica": i} if n > 1 else {}
        for s in range(0, steps + 1, max(steps // 4, 1)):
            for split, off in (("train", -2.0), ("val", 0.0)):
                rows.append({"step": s, "epoch": 0, "split": split, **tag, "loss": 1.0,
                             "top1_error": (err + off) * (2 - s / steps), "top5_error": err / 3})
        frozen = n > 1 and fail_if is not None and fail_if(one)
        each.append({"seed": one.seed,
                     "best": {"step": steps, "top1_error": err - 0.5, "top5_error": err / 3,
                              "loss": 1.0},
                     "final": None if frozen else {"step": steps, "top1_error": err,
                                                   "top5_error": err / 3, "loss": 1.0},
                     **({"non_finite_step": 1} if frozen else {})})
    (wd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = {"model": f"{'plain' if config.model.plain else 'ResNet'}-{config.model.depth}",
               "params": 1000 * config.model.depth, "macs": 2_000_000 * config.model.depth,
               "train_time_s": 12.5, "steps": steps}
    if n == 1:
        results.update(best=each[0]["best"], final=each[0]["final"])
    else:
        results.update(replicas=each)
    (wd / "results.json").write_text(json.dumps(results))
    return results


def check_png(path) -> None:
    import io

    import matplotlib.pyplot as plt

    data = epath.Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000
    image = plt.imread(io.BytesIO(data), format="png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


@pytest.fixture(name="fake_train", scope="session")
def fake_train_fixture():
    """``fake_train(config, workdir, fail_if=None) -> results``."""
    return fake_train


@pytest.fixture(name="assert_png", scope="session")
def assert_png_fixture():
    """``assert_png(path)``: PNG signature, non-trivial size, readable back by matplotlib."""
    return check_png


@pytest.fixture(name="fake_gcs")
def fake_gcs_fixture(monkeypatch, tmp_path):
    """``gs://`` paths of etils epath served from memory, as an object store would (no local
    files): epath is told not to use TensorFlow's gfile (what ``EPATH_USE_TF=false`` does, but
    epath caches that answer), so it routes ``gs://`` through fsspec, whose ``gcs`` protocol is
    replaced by an fsspec memory filesystem.
    The current directory is an empty temporary folder, so a path that wrongly goes local
    (``pathlib`` makes ``gs:/bucket/...`` of ``gs://bucket/...``) shows up there. Yields the
    store: ``{'/bucket/path': file}``."""
    import importlib

    from etils.epath import backend, gpath
    from fsspec.implementations.memory import MemoryFileSystem

    class FakeGCS(MemoryFileSystem):
        protocol = ("gs", "gcs")
        store: dict = {}
        pseudo_dirs = [""]

        def __init__(self, *args, finalize_on_close=None, **kwargs):
            del finalize_on_close  # what epath passes to gcsfs
            super().__init__(*args, **kwargs)

        @classmethod
        def _strip_protocol(cls, path):
            path = str(path).removeprefix("gs://").removeprefix("gcs://").strip("/")
            return "/" + path if path else ""

    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    registry = importlib.import_module("fsspec.registry")._registry  # fsspec.registry: a view
    for protocol in ("gs", "gcs"):
        monkeypatch.setitem(registry, protocol, FakeGCS)
    backend.fsspec_backend._get_filesystem.cache_clear()
    local = tmp_path / "cwd"
    local.mkdir()
    monkeypatch.chdir(local)
    yield FakeGCS.store
    backend.fsspec_backend._get_filesystem.cache_clear()
    FakeGCS.store.clear()
    assert list(local.iterdir()) == [], "something was written locally instead of to gs://"

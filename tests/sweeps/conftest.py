"""Helpers for the sweep tests, as fixtures: a fake trainer that writes what
train_and_evaluate writes (numbers from the config), and a PNG check."""
import json
from pathlib import Path

import pytest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fake_error(config) -> float:
    """Plain nets worse, deeper ResNets better, seeds shift by 1: easy to check in a table."""
    base = 30.0 + (10.0 if config.model.plain else -0.1 * config.model.depth)
    return base + config.seed


def fake_train(config, workdir: str, fail_if=None) -> dict:
    if fail_if is not None and fail_if(config):
        raise RuntimeError(f"boom at depth {config.model.depth}")
    wd = Path(workdir)
    (wd / "config.json").write_text(json.dumps(config.to_dict()))
    err = fake_error(config)
    steps = config.train.num_steps
    with open(wd / "metrics.jsonl", "w") as f:
        for s in range(0, steps + 1, max(steps // 4, 1)):
            for split, off in (("train", -2.0), ("val", 0.0)):
                f.write(json.dumps({"step": s, "epoch": 0, "split": split, "loss": 1.0,
                                    "top1_error": (err + off) * (2 - s / steps),
                                    "top5_error": err / 3}) + "\n")
    results = {"model": f"{'plain' if config.model.plain else 'ResNet'}-{config.model.depth}",
               "params": 1000 * config.model.depth, "macs": 2_000_000 * config.model.depth,
               "best": {"step": steps, "top1_error": err - 0.5, "top5_error": err / 3},
               "final": {"step": steps, "top1_error": err, "top5_error": err / 3},
               "train_time_s": 12.5, "steps": steps}
    (wd / "results.json").write_text(json.dumps(results))
    return results


def check_png(path: Path) -> None:
    import matplotlib.pyplot as plt

    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000
    image = plt.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


@pytest.fixture(name="fake_train", scope="session")
def fake_train_fixture():
    """``fake_train(config, workdir, fail_if=None) -> results``."""
    return fake_train


@pytest.fixture(name="assert_png", scope="session")
def assert_png_fixture():
    """``assert_png(path)``: PNG signature, non-trivial size, readable back by matplotlib."""
    return check_png

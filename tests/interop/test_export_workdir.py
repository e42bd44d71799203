"""`resnet-jax export --workdir`: a training run as a model directory that scores like the run,
with its preprocessing saved by the run or rebuilt from its data (or a clear error)."""
import json
import shutil

import jax
import numpy as np
import pytest

import resnet_jax
from resnet_jax import cli
from resnet_jax import data as data_lib
from resnet_jax.config import load_config
from resnet_jax.interop import preprocess, workdir as workdir_lib
from resnet_jax.train import loop


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from PIL import Image
    d = tmp_path_factory.mktemp("images")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), np.uint8)).save(
        d / "a.jpg")
    return d


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 4-step smoke run (cifar_resnet8, 16x16 synthetic; checkpoints at 2 and 4) and its
    config."""
    workdir = tmp_path_factory.mktemp("run")
    config = load_config("configs/smoke.py:steps=4", ["--config.train.eval_every_steps=2",
                                                       "--config.train.checkpoint_every_steps=2"])
    loop.train_and_evaluate(config, str(workdir))
    return workdir, config


def test_export_a_training_run_and_predict(run, tmp_path, images, capsys):
    workdir, config = run
    out = tmp_path / "model"
    assert cli.main(["export", "--workdir", str(workdir), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "rebuilding" not in captured.err  # the run saved its preprocessing and class names
    assert (workdir / "preprocessing.json").exists() and (workdir / "class_names.txt").exists()
    m = resnet_jax.load(str(out))
    assert m.source["step"] == 4 and m.name == "cifar_resnet8"
    assert m.class_names[:2] == ["class_0", "class_1"]
    _, model, variables = loop.load_trained(str(workdir))
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(m.variables), strict=True):
        np.testing.assert_array_equal(a, b)
    assert (model.width, model.num_classes, model.shortcut) == (4, 10, "A")
    # The exported preprocessing is the run's eval normalization, on its eval images.
    pipeline = data_lib.make_pipeline(config.data, global_batch_size=32, eval_batch_size=32,
                                      seed=config.seed)
    eval_images = pipeline.eval_arrays[0][:8]
    np.testing.assert_allclose(m.preprocess(eval_images),
                               pipeline.device_preprocess(None, eval_images, False),
                               rtol=1e-6, atol=1e-6)
    assert cli.main(["predict", "--model", str(out), str(images / "a.jpg")]) == 0
    assert "class_" in capsys.readouterr().out


def test_export_rebuilds_missing_preprocessing_or_fails_cleanly(run, tmp_path, capsys):
    workdir, config = run
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    saved = preprocess.load(str(copy))
    # An older workdir (no preprocessing saved): rebuilt from its data, saying so.
    (copy / "preprocessing.json").unlink()
    messages = []
    m = workdir_lib.export_workdir(str(copy), str(tmp_path / "m"), "best", say=messages.append)
    best = json.loads((copy / "results.json").read_text())["best"]["step"]
    assert len(messages) == 1 and "rebuilding the preprocessing" in messages[0]
    assert (m.source["checkpoint"], m.source["step"]) == ("best", best)
    np.testing.assert_array_equal(m.preprocessing.mean, saved.mean)
    _, _, variables = loop.load_trained(str(copy), step=best)
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(m.variables), strict=True):
        np.testing.assert_array_equal(a, b)
    # An older step restores that step's variables, not the newest.
    _, _, older = loop.load_trained(str(copy), step=2)
    _, _, newest = loop.load_trained(str(copy))
    assert not np.array_equal(jax.tree.leaves(older)[0], jax.tree.leaves(newest)[0])
    # No saved preprocessing and data that cannot be reached: one clear error line.
    cfg = json.loads((copy / "config.json").read_text())
    cfg["data"].update(source="tar", path=str(tmp_path / "gone.tar.gz"))
    (copy / "config.json").write_text(json.dumps(cfg))
    assert cli.main(["export", "--workdir", str(copy), "--out", str(tmp_path / "n")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "rebuilding" in err[0] and err[-1].startswith("resnet-jax export: error: cannot "
                                                         "rebuild the preprocessing")
    assert "gone.tar.gz" in err[-1] and not (tmp_path / "n").exists()


def test_a_run_trained_with_grouped_bn_on_8_devices_evaluates_and_exports_on_1(tmp_path):
    """BN grouping (train.bn_mode=group, 2 groups of 4 devices) is how a run trained, not
    part of the model: `eval --workdir` and `export --workdir` work on 1 device (they needed
    the training device count: 'bn_group_size=4 does not divide the 1 devices') and score as
    the run did.

    Slow: a run on 8 devices, then eval and export in a process of 1 device (another device
    count: another process, other programs).
    """
    import os
    import subprocess
    import sys
    from pathlib import Path
    workdir = tmp_path / "run"
    config = load_config("configs/smoke.py:steps=2", [
        "--config.train.bn_mode=group", "--config.train.bn_group_size=4",
        "--config.train.eval_every_steps=2", "--config.train.checkpoint_every_steps=2"])
    results = loop.train_and_evaluate(config, str(workdir))
    root = Path(__file__).resolve().parents[2]
    script = (f"from resnet_jax import cli; import sys; "
              f"a = cli.main(['eval', '--workdir', {str(workdir)!r}, '--json']); "
              f"b = cli.main(['export', '--workdir', {str(workdir)!r}, '--out', "
              f"{str(tmp_path / 'model')!r}]); sys.exit(10 * a + b)")
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1", PYTHONPATH=str(root))
    done = subprocess.run([sys.executable, "-c", script], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    evaluated = json.loads(done.stdout.splitlines()[0])
    assert (evaluated["step"], evaluated["count"]) == (2, 64)
    assert evaluated["top1_error"] == results["final"]["top1_error"]
    assert evaluated["loss"] == pytest.approx(results["final"]["loss"], rel=1e-5)
    m = resnet_jax.load(str(tmp_path / "model"))
    assert m.model.bn_num_groups == 1
    _, _, variables = loop.load_trained(str(workdir))
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(m.variables), strict=True):
        np.testing.assert_array_equal(a, b)

"""Labels follow the training split's class names in every split and source (issue 18 item 1):
an evaluation split missing a class keeps the others' labels, a hidden folder is never a class,
a class training does not know is refused by name. End to end through a training run: the
reported validation error equals an independent count over the test images by class name."""
import tarfile

import jax
import numpy as np
import pytest
from PIL import Image

from resnet_jax.config import load_config
from resnet_jax.train import loop

COLOURS = {"blue": (20, 20, 230), "green": (20, 230, 20), "red": (230, 20, 20)}


def _images(rng, colour, n):
    for _ in range(n):
        yield np.clip(np.array(colour) + rng.normal(0, 30, (16, 16, 3)), 0, 255).astype(np.uint8)


def write_tree(root, test_classes=("green", "red"), hidden=True):
    """train/{blue,green,red}, test/ with only `test_classes` (+ a hidden .ipynb_checkpoints
    class folder in both splits, and an empty class folder)."""
    rng = np.random.default_rng(0)
    for split, classes, n in (("train", COLOURS, 24), ("test", test_classes, 6)):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i, img in enumerate(_images(rng, COLOURS[name], n)):
                Image.fromarray(img).save(root / split / name / f"{i:02d}.png")
        if hidden:
            (root / split / ".ipynb_checkpoints").mkdir()
            Image.fromarray(next(_images(rng, (0, 0, 0), 1))).save(
                root / split / ".ipynb_checkpoints" / "x-checkpoint.png")
    (root / "train" / "empty").mkdir()


def _config(source, path, steps=12):
    cache = path.parent / "cache"
    cache.mkdir(exist_ok=True)
    return load_config("configs/smoke.py", [
        f"--config.data.source={source}", f"--config.data.path={path}",
        "--config.data.num_val_examples=0", f"--config.train.num_steps={steps}",
        "--config.train.batch_size=24", "--config.train.eval_batch_size=8",
        f"--config.train.eval_every_steps={steps}",
        f"--config.train.checkpoint_every_steps={steps}",
        "--config.train.log_every_steps=4", "--config.train.steps_per_dispatch=4",
        "--config.optim.boundaries=(100,)", f"--config.data.data_dir={cache}"])


def _independent_error(workdir, root):
    """Top-1 error of the trained model on root/test, labels by class name."""
    _, model, variables = loop.load_trained(str(workdir))
    names = (workdir / "class_names.txt").read_text().split()
    from resnet_jax.interop.preprocess import load
    prep = load(str(workdir))
    wrong = total = 0
    for cls in sorted(p.name for p in (root / "test").iterdir() if not p.name.startswith(".")):
        imgs = np.stack([np.asarray(Image.open(f)) for f in sorted((root / "test" / cls).iterdir())])
        x = (imgs.astype(np.float32) - prep.mean) / prep.std
        pred = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))
        wrong += int((pred.argmax(-1) != names.index(cls)).sum())
        total += len(imgs)
    return 100.0 * wrong / total, total


@pytest.mark.parametrize("source,hidden", [("folder", True), ("tar", False)])
def test_a_run_scores_its_test_split_by_class_name(tmp_path, source, hidden):
    """test/ lacks 'blue' (label 0): 'green' and 'red' must keep labels 1 and 2 (they were
    scored as 0 and 1: a wrong error, silently); hidden folders are no classes.

    Slow: a whole training run on each source (folder, tar).
    """
    root = tmp_path / "data"
    write_tree(root, hidden=hidden)
    path = root
    if source == "tar":
        path = tmp_path / "data.tar"
        with tarfile.open(path, "w") as tar:
            for split in ("train", "test"):
                tar.add(root / split, arcname=split)
    results = loop.train_and_evaluate(_config(source, path), str(tmp_path / "run"))
    names = (tmp_path / "run" / "class_names.txt").read_text().split()
    assert names == sorted(COLOURS)  # no '.ipynb_checkpoints', no 'empty'
    final = results["final"]
    assert np.isfinite(final["loss"]) and results["best"]["step"] == 12
    error, count = _independent_error(tmp_path / "run", root)
    assert count == 12
    assert final["top1_error"] == pytest.approx(error, abs=1e-6)
    assert final["top1_error"] < 50  # it learned the colours: labels line up with classes


def test_an_eval_class_training_does_not_know_is_refused(tmp_path):
    root = tmp_path / "data"
    write_tree(root, hidden=False)
    (root / "test" / "purple").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "test" / "purple" / "0.png")
    with pytest.raises(ValueError, match=r"'purple' are not among the 3 training classes"):
        loop.train_and_evaluate(_config("folder", root), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_finetune_recipe_validates_on_val_in_memory(tmp_path):
    """configs/finetune.py documents data/val/: the in-memory loader reads it (it read only
    test/), and a val/ missing a class keeps the training labels."""
    from resnet_jax import data as data_lib
    root = tmp_path / "data"
    write_tree(root, hidden=False)
    (root / "test").rename(root / "val")
    cfg = _config("folder", root).data
    p = data_lib.make_pipeline(cfg, global_batch_size=24, eval_batch_size=8, seed=0)
    images, labels = p.eval_arrays
    assert p.class_names == ["blue", "green", "red"]
    assert sorted(set(labels.tolist())) == [1, 2] and len(labels) == 12
    green = labels == 1
    assert images[green][..., 1].mean() > 150 and images[~green][..., 0].mean() > 150

"""configs/finetune.py end to end: a model directory imported from torchvision weights (the
width-3 ResNet-18 fixture) fine-tuned on a tiny generated image folder of 3 classes, through
`train_and_evaluate`; every layer but the classifier starts from the imported weights."""
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from resnet_jax.config import load_config
from resnet_jax.data import make_pipeline
from resnet_jax.data import preprocess as data_preprocess
from resnet_jax.interop import bundle, evaluate, preprocess, torch_import
from resnet_jax.interop.tree import flatten
from resnet_jax.train import loop
from resnet_jax.train import run as run_lib

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from PIL import Image
    root = tmp_path_factory.mktemp("ft")
    model_dir = root / "r18"
    torch_import.convert(str(FIXTURES / "tv_resnet18_w3.safetensors"), "resnet18",
                         source="torchvision", out=str(model_dir), width=3)
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 3)):
        for name, colour in COLOURS.items():
            (root / "data" / split / name).mkdir(parents=True)
            for i in range(n):
                img = np.clip(np.array(colour) + rng.normal(0, 25, (40, 48, 3)), 0, 255)
                Image.fromarray(img.astype(np.uint8)).save(root / "data" / split / name / f"{i}.jpg")
    return root, model_dir


def _config(root, model_dir, steps=4):
    return load_config(f"configs/finetune.py:model={model_dir},data={root / 'data'},size=32,"
                       f"steps={steps},batch=8", ["--config.train.eval_batch_size=8"])


def test_fine_tuning_starts_from_the_model_with_a_new_classifier(setup):
    """Slow: builds the fine-tuning run and compiles the initialization of its ResNet-18."""
    root, model_dir = setup
    config = _config(root, model_dir)
    assert (config.model.arch, config.model.depth, config.model.width) == ("imagenet", 18, 3)
    run = run_lib.build(config)
    assert run.meta["num_classes"] == 3
    state, _ = run_lib.fresh_state(run)
    ours = flatten(jax.device_get({"params": state.params, "batch_stats": state.batch_stats}))
    theirs = flatten(bundle.load(str(model_dir)).variables)
    assert ours["params/fc/kernel"].shape == (24, 3) and theirs["params/fc/kernel"].shape[1] == 10
    for name, value in theirs.items():
        if not name.startswith("params/fc/"):
            np.testing.assert_array_equal(ours[name], value, err_msg=name)
    run.pipeline.close()


def test_fine_tune_run_trains_and_exports(setup, tmp_path):
    """Slow: a whole fine-tuning run of a ResNet-18 (its compilation) and an independent
    scoring of its validation images."""
    root, model_dir = setup
    results = loop.train_and_evaluate(_config(root, model_dir), str(tmp_path / "run"))
    assert results["steps"] == 4
    # The run's own validation numbers equal an independent scoring of val/'s image files
    # (Pillow views from the run's recorded preprocessing, labels by class name).
    scored = evaluate.evaluate(workdir=str(tmp_path / "run"), data=str(root / "data"),
                               split="val", save=False, say=lambda m: None)
    assert scored["count"] == 9
    for key in ("top1_error", "top5_error"):
        assert results["final"][key] == pytest.approx(scored[key], abs=1e-9), key
    # The same pixels (checked: both paths' views of these files are equal), scored in other
    # batches: float32 rounding apart (measured 4.5e-8 relative).
    assert results["final"]["loss"] == pytest.approx(scored["loss"], rel=1e-6)
    _, model, variables = loop.load_trained(str(tmp_path / "run"))
    assert model.num_classes == 3 and variables["params"]["fc"]["kernel"].shape == (24, 3)
    names = (tmp_path / "run" / "class_names.txt").read_text().split()
    assert names == sorted(COLOURS)


def _coordinates(h=64, w=80):
    """An image whose red level is 4 x its row and green 3 x its column: a view's pixels say
    which rows and columns of the image it shows (bilinear resizing keeps them linear)."""
    y, x = np.mgrid[:h, :w]
    return np.stack([4 * y, 3 * x, np.zeros_like(y)], -1).astype(np.uint8)


def _covered(view, h=64):
    """The fraction of the image's height that a square view (S, S, 3) of `_coordinates`
    shows: the span of its rows' centres, plus one of its pixels."""
    rows = view[:, view.shape[1] // 2, 0].astype(np.float64) / 4
    return (rows[-1] - rows[0]) * len(rows) / (len(rows) - 1) / h


@pytest.mark.parametrize("size", [32, 112, 160])
def test_the_eval_view_shows_as_much_of_the_image_as_the_model_was_trained_on(setup, tmp_path,
                                                                             size):
    """The model's own view (torchvision's 256 -> 224: 87.5% of the image) is what a fine-tune
    at any `size` evaluates: it took the centre `size` pixels of a 256 resize (44% at 112),
    in the run's own evaluation and in the preprocessing that eval, export and predict
    inherit."""
    from PIL import Image
    _, model_dir = setup
    image = _coordinates()
    for split, name in (("train", "a"), ("train", "b"), ("val", "a")):
        (tmp_path / split / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / split / name / "0.png")
    own = _covered(bundle.load(str(model_dir)).preprocess(image)[0]
                   * data_preprocess.TORCHVISION_STD + data_preprocess.TORCHVISION_MEAN)
    assert own == pytest.approx(224 / 256, abs=0.01)
    config = load_config(f"configs/finetune.py:model={model_dir},data={tmp_path},size={size}",
                         ["--config.data.workers=0"])
    pipeline = make_pipeline(config.data, global_batch_size=2, eval_batch_size=1, seed=0)
    try:
        batch = next(iter(pipeline.eval_batches()))
        recorded = preprocess.from_pipeline(config, pipeline)   # preprocessing.json's
    finally:
        pipeline.close()
    assert batch["image"].shape == (1, 1, size, size, 3)
    assert _covered(batch["image"][0, 0]) == pytest.approx(own, abs=0.02)
    assert _covered(data_preprocess.apply(recorded, image)[0] * recorded.std
                    + recorded.mean) == \
        pytest.approx(own, abs=0.02)


def test_a_model_that_does_not_fit_is_named(setup, tmp_path):
    root, model_dir = setup
    config = _config(root, model_dir)
    with config.unlocked():
        config.model.width = 4   # not the model directory's width
    with pytest.raises(ValueError, match="does not fit resnet18 .width 4"):
        loop.train_and_evaluate(config, str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="needs model=DIR"):
        load_config(f"configs/finetune.py:data={root / 'data'}")


def _ten_class_data(root):
    from PIL import Image
    rng = np.random.default_rng(1)
    for split, n in (("train", 2), ("val", 1)):
        for c in range(10):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 256, (40, 48, 3), np.uint8)
                Image.fromarray(img).save(root / split / f"c{c}" / f"{i}.jpg")


def test_the_classifier_is_new_whenever_the_class_names_differ(setup, tmp_path):
    """A 10-class model fine-tuned on another 10 classes kept its old classifier (only the
    count was compared); the same classes, by name, keep it.

    Slow: builds two fine-tuning runs of 10 classes and compiles their initialization.
    """
    _, model_dir = setup
    _ten_class_data(tmp_path / "data")
    theirs = flatten(bundle.load(str(model_dir)).variables)
    assert theirs["params/fc/kernel"].shape == (24, 10)

    def fc_kernel(model):
        config = load_config(f"configs/finetune.py:model={model},data={tmp_path / 'data'},"
                             "size=32,steps=4,batch=8", ["--config.train.eval_batch_size=8"])
        run = run_lib.build(config)
        try:
            state, _ = run_lib.fresh_state(run)
        finally:
            run.pipeline.close()
        return flatten(jax.device_get({"params": state.params}))["params/fc/kernel"]

    assert (model_dir / "class_names.txt").read_text().split() == [str(i) for i in range(10)]
    assert not np.allclose(fc_kernel(model_dir), theirs["params/fc/kernel"])
    same = tmp_path / "same"
    shutil.copytree(model_dir, same)
    (same / "class_names.txt").write_text("".join(f"c{c}\n" for c in range(10)))
    np.testing.assert_array_equal(fc_kernel(same), theirs["params/fc/kernel"])

"""`resnet-jax eval --data`: a model directory (the torch fixture, converted) scored on tiny
generated folders, tars and real tfds datasets built here offline, against the same numbers
computed by hand; 10-crop and multi-scale views against a direct construction (and the
streaming pipeline's views); the ReaL rule; every error as one line."""
import io
import json
import re
import tarfile
import types
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

import resnet_jax
from resnet_jax import cli
from resnet_jax.data import views
from resnet_jax.interop import bundle, eval_sources, evaluate, preprocess, torch_import

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
         "truck"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """torchvision ResNet-18 at width 3, 10 classes; eval transform resize 36, crop 32."""
    out = tmp_path_factory.mktemp("model") / "r18"
    torch_import.convert(str(FIXTURES / "tv_resnet18_w3.safetensors"), "resnet18", width=3,
                         out=str(out), class_names=NAMES,
                         preprocessing=preprocess.torchvision_preprocessing(36, 32))
    return out


def _image(rng, i):
    h, w = 36 + i % 5, 40 + 3 * (i % 4)  # sizes that need resampling and odd crop margins
    return rng.integers(0, 256, (h, w, 3), np.uint8)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """folder/<class>/<img> (2 per class, JPEG and PNG) and the same as test/... in a tar."""
    root = tmp_path_factory.mktemp("data")
    rng, labels = np.random.default_rng(0), {}
    for c, name in enumerate(NAMES):
        (root / "flat" / name).mkdir(parents=True)
        for j, ext in enumerate(("jpg", "png")):
            path = root / "flat" / name / f"{j}.{ext}"
            Image.fromarray(_image(rng, 2 * c + j)).save(path)
            labels[path] = c
    with tarfile.open(root / "set.tar.gz", "w:gz") as tar:
        tar.add(root / "flat", arcname="test")
    return root, labels


def _log_probs(m, images=None, x=None):
    x = m.preprocess(images) if x is None else x
    return np.asarray(jax.nn.log_softmax(m.model.apply(m.variables, x, train=False)))


def _by_hand(logp, labels):
    labels = np.asarray(labels)
    order = np.argsort(-logp, axis=1)
    top1 = np.mean(order[:, 0] == labels)
    top5 = np.mean([y in row[:5] for y, row in zip(labels, order, strict=True)])
    loss = -np.mean(logp[np.arange(len(labels)), labels])
    return 100 * (1 - top1), 100 * (1 - top5), loss


def _eval_json(capsys, *args):
    assert cli.main(["eval", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_folder_and_tar_score_as_computed_by_hand(model_dir, files, capsys):
    root, labels = files
    m = resnet_jax.load(str(model_dir))
    paths = sorted(labels)
    logp = _log_probs(m, [np.asarray(Image.open(p).convert("RGB")) for p in paths])
    top1, top5, loss = _by_hand(logp, [labels[p] for p in paths])
    for data in (root / "flat", root / "set.tar.gz"):
        r = _eval_json(capsys, "--model", str(model_dir), "--data", str(data),
                       "--batch-size", "8")  # 20 images: 3 batches, the last one padded
        assert (r["count"], r["model"], r["crops"]) == (20, "resnet18", "center")
        assert r["split"] == ("all" if data.name == "flat" else "test")
        assert r["top1_error"] == pytest.approx(top1) and r["top5_error"] == pytest.approx(top5)
        assert r["loss"] == pytest.approx(loss, rel=1e-5)
    saved = json.loads((model_dir / "eval" / "set.tar.gz-test-center.json").read_text())
    assert saved == r and saved["model_dir"] == str(model_dir) and "date" in saved
    assert cli.main(["eval", "--model", str(model_dir), "--data", str(root / "set.tar.gz"),
                     "--batch-size", "8"]) == 0
    line = capsys.readouterr().out.strip()
    assert line == (f"resnet18 on {root / 'set.tar.gz'} test (20 images, center): top-1 error "
                    f"{top1:.2f}%, top-5 error {top5:.2f}%, loss {loss:.4f}")


def test_ten_crop_and_multiscale_views_are_the_papers(model_dir):
    img = np.random.default_rng(1).integers(0, 256, (37, 50, 3), np.uint8)
    m = resnet_jax.load(str(model_dir))  # torchvision style: resize 36 (-> 36 x 48), crop 32
    resized = np.asarray(Image.fromarray(img).resize((48, 36), Image.BILINEAR))
    five = [resized[:32, :32], resized[:32, 16:], resized[4:, :32], resized[4:, 16:],
            resized[2:34, 8:40]]  # centre offsets round(4 / 2), round(16 / 2)
    ten = np.stack(five + [c[:, ::-1] for c in five])
    np.testing.assert_array_equal(views.Views(m.preprocessing, "10crop")(img)[0], ten)
    square = np.asarray(Image.fromarray(img).resize((54, 40), Image.BILINEAR))[:, 7:47]
    scales = views.Views(m.preprocessing, "multiscale", (32, 40))(img)
    assert [s.shape for s in scales] == [(2, 32, 32, 3), (2, 40, 40, 3)]
    np.testing.assert_array_equal(scales[1], np.stack([square, square[:, ::-1]]))
    assert views.default_scales(224) == (224, 256, 384, 480, 640)
    assert views.default_scales(32) == (32, 37, 55, 69, 91)
    # Probabilities averaged over the 2 x 2 views of both scales, computed directly.
    source = eval_sources.Source("one", "test", "test", NAMES, 10,
                                 lambda: iter([("one", img, 3)]), 1)
    r = evaluate.score(m, source, views.Views(m.preprocessing, "multiscale", (32, 40)),
                       batch_size=1)
    p = m.preprocessing
    probs = [np.exp(_log_probs(m, x=(s.astype(np.float32) - p.mean) / p.std)) for s in scales]
    mean = np.concatenate(probs).mean(0)
    assert r["loss"] == pytest.approx(-np.log(mean[3]), rel=1e-5) and r["count"] == 1


def test_tf_style_views_are_the_streaming_pipelines():
    """The streaming eval makes its views with `views.Views` ('tf' style) itself; that they
    equal the tf.data views it had before is tests/data/test_augment.py's."""
    from resnet_jax.data import elements
    img = np.random.default_rng(2).integers(0, 256, (37, 50, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    prep = preprocess.Preprocessing([0, 0, 0], 1, resize=36, crop=32, style="tf")

    class One:
        def read(self, i):
            return buf.getvalue(), 3

        def name(self, i):
            return "one.png"

    for mode, scales in (("10crop", ()), ("multiscale", (32, 45))):
        v = views.Views(prep, mode, scales)
        got = elements.EvalElement(One(), v, "error")((0, True))
        for ours, theirs in zip(v(img), got["image"], strict=True):
            np.testing.assert_array_equal(ours, theirs)


# ---- tfds: real datasets prepared here, offline -------------------------------------------

@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory, model_dir):
    """Two tfds datasets: `eval_test_plain` (test split, label) and `eval_test_real`
    (validation split, ReaL label sets chosen from the model's own ranking)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    rng = np.random.default_rng(3)
    images = [_image(rng, i) for i in range(6)]
    rank = np.argsort(-_log_probs(resnet_jax.load(str(model_dir)), images), axis=1)
    # top-1 right | top-5 right only | no set (left out) | right (with a last-ranked) | wrong
    real = [[rank[0, 0]], [rank[1, 2]], [], [rank[3, 9], rank[3, 0]], [rank[4, 9]]]
    feature = lambda: tfds.features.ClassLabel(names=NAMES)  # noqa: E731

    class EvalTestPlain(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"image": tfds.features.Image(shape=(None, None, 3)), "label": feature()}))

        def _split_generators(self, dl_manager):
            return {"test": self._generate_examples()}

        def _generate_examples(self):
            for i, img in enumerate(images):
                yield i, {"image": img, "label": i % 10}

    class EvalTestReal(EvalTestPlain):
        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"image": tfds.features.Image(shape=(None, None, 3)), "original_label": feature(),
                 "real_label": tfds.features.Sequence(feature())}))

        def _split_generators(self, dl_manager):
            return {"validation": self._generate_examples()}

        def _generate_examples(self):
            for i, labels in enumerate(real):
                yield i, {"image": images[i], "original_label": 0, "real_label": labels}

    d = tmp_path_factory.mktemp("tfds")
    for builder in (EvalTestPlain, EvalTestReal):
        builder(data_dir=str(d)).download_and_prepare()
    return d, images


def test_tfds_split_scored_as_by_hand(model_dir, tfds_dir, capsys):
    d, images = tfds_dir
    m = resnet_jax.load(str(model_dir))
    top1, top5, loss = _by_hand(_log_probs(m, images), [i % 10 for i in range(6)])
    r = _eval_json(capsys, "--model", str(model_dir), "--data", "tfds:eval_test_plain",
                   "--data-dir", str(d), "--batch-size", "8")
    assert (r["split"], r["count"], r["source"]) == ("test", 6, "tfds:eval_test_plain")
    assert r["top1_error"] == pytest.approx(top1) and r["top5_error"] == pytest.approx(top5)
    assert r["loss"] == pytest.approx(loss, rel=1e-5)


def test_real_labels_prediction_in_set_and_empty_sets_left_out(model_dir, tfds_dir, capsys):
    d, _ = tfds_dir
    r = _eval_json(capsys, "--model", str(model_dir), "--data", "tfds:eval_test_real",
                   "--data-dir", str(d), "--batch-size", "8")
    assert (r["split"], r["labels"], r["count"], r["left_out"]) == ("validation", "real", 4, 1)
    assert (r["top1_error"], r["top5_error"], r["loss"]) == (50.0, 25.0, None)
    assert cli.main(["eval", "--model", str(model_dir), "--data", "tfds:eval_test_real",
                     "--data-dir", str(d), "--batch-size", "8"]) == 0
    assert "(4 images with ReaL labels, 1 without left out, center): top-1 error 50.00% " \
           "(ReaL), top-5 error 25.00% (ReaL)" in capsys.readouterr().out


def test_tfrecord_only_tfds_without_tensorflow_is_one_error(monkeypatch):
    """eval --data tfds:NAME reads ArrayRecord with no TensorFlow (tests/data/
    test_no_tensorflow.py); a TFRecord-only dataset there is one error saying how to convert."""
    import importlib.util
    builder = types.SimpleNamespace(
        name="imagenet2012", data_dir="/d/tfds/imagenet2012/5.1.0",
        info=types.SimpleNamespace(available_file_formats=lambda: ["tfrecord"]))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorflow" else real(name, *a))
    with pytest.raises(ValueError, match="stored as tfrecord in .*TensorFlow is not installed; "
                       "add an ArrayRecord copy once .*resnet-jax prepare convert --name "
                       "imagenet2012 --data-dir /d/tfds,"):
        next(eval_sources._tfds_rows(builder, "tfds:imagenet2012", "validation"))


def test_tfds_labels_checked_against_the_model():
    def builder(names, splits=("test",)):
        label = types.SimpleNamespace(names=names, num_classes=len(names))
        info = types.SimpleNamespace(features={"image": None, "label": label},
                                     splits={s: None for s in splits})
        return lambda name, data_dir: types.SimpleNamespace(
            info=info, is_prepared=lambda: True, data_dir="/x")
    source = eval_sources.open_source("tfds:x", None, None, builder(NAMES[::-1]))
    with pytest.raises(ValueError, match="same 10 in another order: label 0 is 'airplane' "
                                         "for the model, 'truck' for the data"):
        eval_sources.fit_classes(NAMES, source)
    for names in ([f"n{i:08d}" for i in range(10)], [str(i) for i in range(10)]):
        source = eval_sources.open_source("tfds:x", None, None, builder(names))
        assert eval_sources.fit_classes(NAMES, source)[1] == []  # synsets / numbers: count only
    source = eval_sources.open_source("tfds:x", None, None, builder(NAMES[:9]))
    with pytest.raises(ValueError, match="the model has 10 classes, --data tfds:x has 9"):
        eval_sources.fit_classes(NAMES, source)
    with pytest.raises(ValueError, match="no split 'test'; splits there: train, validation"):
        eval_sources.open_source("tfds:x", "test", None, builder(NAMES, ("train", "validation")))
    assert eval_sources.open_source("tfds:x", None, None, builder(NAMES, (
        "train", "validation", "test"))).split == "validation"


def test_folder_labels_follow_the_model_class_names():
    def folder(names):
        rows = [(f"{n}/0.jpg", None, i) for i, n in enumerate(names)]
        return eval_sources.Source("f", "folder", "val", names, len(names), lambda: iter(rows))

    def labels(source):
        return [y for _, _, y in source.examples()]

    fake = [f"n{i:08d}" for i in range(1000)]  # another synset list, sorted: the same order
    assert eval_sources.fit_classes(bundle.imagenet_class_names(), folder(fake))[1] == []
    with pytest.raises(ValueError, match="only in the model: \\['tench'"):
        eval_sources.fit_classes(bundle.imagenet_class_names(), folder(fake[:999]))
    # ImageNet synsets, any subset (Imagenette's 10): the standard synset order.
    synsets = eval_sources.imagenet_synsets()
    assert len(synsets) == 1000 and synsets == sorted(synsets) and synsets[0] == "n01440764"
    sub = [synsets[0], synsets[217], synsets[999]]
    source, notes = eval_sources.fit_classes(bundle.imagenet_class_names(), folder(sub))
    assert labels(source) == [0, 217, 999] and "3 of the model's 1000 classes" in notes[0]
    # By name: a split missing 'airplane' keeps the other labels (they were shifted by one).
    source, notes = eval_sources.fit_classes(NAMES, folder(NAMES[1:]))
    assert labels(source) == list(range(1, 10)) and source.num_classes == 10
    with pytest.raises(ValueError, match="only in the data: \\['zebra'\\]"):
        eval_sources.fit_classes(NAMES, folder(NAMES[1:] + ["zebra"]))
    source, notes = eval_sources.fit_classes([str(i) for i in range(10)], folder(NAMES))
    assert len(notes) == 1 and "no class names" in notes[0] and labels(source) == list(range(10))
    assert eval_sources.fit_classes(NAMES, folder(NAMES))[1] == []


def test_hidden_folders_are_not_classes_of_eval_data(model_dir, tmp_path, capsys):
    """A `.ipynb_checkpoints` folder in val/ was a class (a label past the model's last); a
    split missing classes is scored by name."""
    from PIL import Image
    rng = np.random.default_rng(1)
    for cls in NAMES[3:5] + [".ipynb_checkpoints"]:
        (tmp_path / "val" / cls).mkdir(parents=True)
        Image.fromarray(_image(rng, 0)).save(tmp_path / "val" / cls / "0.png")
    (tmp_path / "val" / "__MACOSX").mkdir()
    r = _eval_json(capsys, "--model", str(model_dir), "--data", str(tmp_path))
    assert r["count"] == 2 and r["split"] == "val"
    m = bundle.load(str(model_dir))
    images = [np.asarray(Image.open(tmp_path / "val" / c / "0.png")) for c in NAMES[3:5]]
    logp = _log_probs(m, images)
    assert r["top1_error"] == pytest.approx(_by_hand(logp, [3, 4])[0])


# ---- errors: one line each --------------------------------------------------------------

def test_errors_are_one_line(model_dir, files, tfds_dir, tmp_path, capsys):
    root, _ = files
    (root / "extra" / "test" / "zebra").mkdir(parents=True)  # a class the model lacks
    Image.fromarray(_image(np.random.default_rng(0), 0)).save(root / "extra/test/zebra/a.png")
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:  # all classes, and one file that does not decode
        tar.add(root / "flat", arcname="test")
        info = tarfile.TarInfo("test/cat/broken.jpg")
        info.size = 10
        tar.addfile(info, io.BytesIO(b"\xff\xd8not a jpeg"))
    model = ["--model", str(model_dir)]
    cases = [
        (["--data", "hf:cifar10", *model], "--data 'hf:cifar10': unknown source; expected tfds"),
        ([*model, "--data", str(root / "set.tar.gz"), "--split", "val"],
         "has no split 'val'; splits there: test"),
        ([*model, "--data", "tfds:eval_test_plain", "--data-dir", str(tmp_path)],
         "not prepared in .*point --data at a local copy: --data path.tar.gz"),
        ([*model, "--data", str(root / "extra")],
         "the model's 10 class names do not match the 1 of --data .*only in the model: "
         "\\['airplane', .*only in the data: \\['zebra'\\] .folders are matched to the model's "
         "classes by name"),
        ([*model, "--data", str(bad)], "cannot decode image .*bad.tar:test/cat/broken.jpg"),
        (["--data", str(root / "flat")], "give a model: --workdir W .* or --model DIR"),
        ([*model, "--workdir", str(tmp_path)], "give --workdir or --model, not both"),
        (model, "--model needs --data"),
        ([*model, "--data", str(tmp_path / "none")], "no such file or folder"),
        (["--workdir", str(tmp_path), "--data", str(root / "flat")], "no config.json"),
        (["--workdir", str(tmp_path / "doesnotexist")],  # it said "no config.json"
         f"--workdir {tmp_path / 'doesnotexist'} does not exist$"),
    ]
    for args, message in cases:
        assert cli.main(["eval", *args]) == 2, args
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith("resnet-jax eval: error: ")
        assert re.search(message, err), (message, err)

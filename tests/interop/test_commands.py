"""`resnet-jax convert | predict | export --model` as a user runs them: the fixture converted,
images predicted (PNG, JPEG, grayscale), bad inputs as one error line each."""
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

import resnet_jax
from resnet_jax import cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
R18 = str(FIXTURES / "tv_resnet18_w3.safetensors")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "r18"
    assert cli.main(["convert", "--from", "torchvision", R18, "--model", "resnet18",
                     "--width", "3", "--out", str(out), "--resize", "36", "--crop", "32"]) == 0
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), np.uint8)).save(d / "a.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (45, 40), np.uint8)).save(d / "b.png")  # grayscale
    (d / "corrupt.jpg").write_bytes((d / "a.jpg").read_bytes()[:300])
    (d / "text.png").write_text("not an image")
    return d


def test_convert_writes_a_loadable_directory(model_dir, capsys):
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "class_names.txt", "model.json", "preprocessing.json", "variables.safetensors"]
    m = resnet_jax.load(str(model_dir))
    assert (m.preprocessing.resize, m.preprocessing.crop) == (36, 32)
    np.testing.assert_allclose(m.preprocessing.mean, [123.675, 116.28, 103.53], rtol=1e-7)


def test_predict_prints_top5_per_image(model_dir, images, capsys):
    files = [str(images / "a.jpg"), str(images / "b.png")]
    assert cli.main(["predict", "--model", str(model_dir), *files]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == files
    assert all(ln.count("%") == 5 for ln in lines)
    assert cli.main(["predict", "--model", str(model_dir), "--json", "--top-k", "3",
                     *files]) == 0
    rows = [json.loads(ln) for ln in capsys.readouterr().out.strip().splitlines()]
    assert [r["file"] for r in rows] == files
    m = resnet_jax.load(str(model_dir))
    probs = jax.nn.softmax(m.model.apply(m.variables, m.preprocess(
        np.asarray(Image.open(files[0]).convert("RGB"))), train=False))[0]
    top = rows[0]["top"]
    assert [t["index"] for t in top] == list(np.argsort(-np.asarray(probs))[:3])
    np.testing.assert_allclose([t["prob"] for t in top], np.sort(probs)[::-1][:3], rtol=1e-5)
    assert top[0]["class"] == m.class_names[top[0]["index"]]


def test_predict_says_an_imagenet_synsets_class_name(images, tmp_path, capsys):
    """A model whose classes are ImageNet synsets (trained on Imagenette's: the fixture has 10
    classes) printed 'n03417042 68.70%'; --json keeps the class as it is."""
    import re

    from resnet_jax.interop.eval_sources import imagenet_synsets
    synsets = tmp_path / "synsets.txt"
    synsets.write_text("n01440764 n02102040 n02979186 n03000684 n03028079 n03394916 n03417042 "
                       "n03425413 n03445777 n03888605".replace(" ", "\n"))
    out = tmp_path / "r18"
    assert cli.main(["convert", "--from", "torchvision", R18, "--model", "resnet18",
                     "--width", "3", "--out", str(out), "--class-names", str(synsets)]) == 0
    capsys.readouterr()
    assert cli.main(["predict", "--model", str(out), str(images / "a.jpg")]) == 0
    items = capsys.readouterr().out.strip().split(": ", 1)[1].split(", ")
    names = dict(zip(imagenet_synsets(), resnet_jax.interop.bundle.imagenet_class_names()))
    for item in items:
        synset, name = re.fullmatch(r"(n\d{8}) \((.+)\) \d+\.\d\d%", item).groups()
        assert names[synset] == name
    assert cli.main(["predict", "--model", str(out), "--json", str(images / "a.jpg")]) == 0
    assert re.fullmatch(r"n\d{8}", json.loads(capsys.readouterr().out)["top"][0]["class"])


def test_predict_bad_files_are_one_line_each(model_dir, images, capsys):
    bad = [str(images / "missing.jpg"), str(images / "corrupt.jpg"), str(images / "text.png")]
    code = cli.main(["predict", "--model", str(model_dir), str(images / "a.jpg"), *bad])
    out, err = capsys.readouterr()
    assert code == 1
    assert out.startswith(str(images / "a.jpg") + ":")  # the good file is still predicted
    err_lines = err.strip().splitlines()
    assert len(err_lines) == 3 and "Traceback" not in err
    for path, line in zip(bad, err_lines, strict=True):
        assert line.startswith("resnet-jax predict: error: ") and path in line
    assert "no such file" in err_lines[0] and "truncated" in err_lines[1]
    assert cli.main(["predict", "--model", str(model_dir), "--json", *bad[:1]]) == 1
    assert json.loads(capsys.readouterr().out)["error"].endswith("no such file")


def test_convert_errors_are_one_line(tmp_path, capsys):
    code = cli.main(["convert", "--from", "timm", R18, "--model", "resnet34", "--width", "3",
                     "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "80 missing key(s): layer1.2.bn1.bias" in err and "looks like resnet18" in err
    assert not (tmp_path / "x").exists()
    assert cli.main(["convert", "--from", "timm", str(tmp_path / "none.safetensors"),
                     "--model", "resnet18", "--out", str(tmp_path / "y")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_export_model_dir_to_torchvision(model_dir, tmp_path, capsys):
    out = tmp_path / "tv.safetensors"
    assert cli.main(["export", "--model", str(model_dir), "--to", "torchvision",
                     "--out", str(out)]) == 0
    back, original = load_file(str(out)), load_file(R18)
    assert sorted(back) == sorted(original)
    assert all(np.array_equal(back[k], original[k]) for k in original)


def test_out_that_is_taken_is_refused_unless_overwrite(model_dir, tmp_path, capsys):
    """convert / export wrote over a model directory without a word and kept its old eval/
    results (which scored the old model): refused, before the weights are read; --overwrite
    replaces the model directory's files and eval/, and nothing else."""
    out = tmp_path / "out"
    assert cli.main(["export", "--model", str(model_dir), "--out", str(out)]) == 0
    (out / "eval").mkdir()
    (out / "eval" / "old.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    for cmd in (["export", "--model", str(model_dir)],
                ["convert", "--from", "torchvision", R18, "--model", "resnet18", "--width", "3"],
                ["convert", "--from", "timm", str(tmp_path / "missing.safetensors"),
                 "--model", "resnet18"]):  # refused before the file is even looked at
        assert cli.main([*cmd, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert f"{out} is not empty (class_names.txt, eval, model.json, notes.txt, ...); " \
               "pass --overwrite" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert cli.main(["convert", "--from", "torchvision", R18, "--model", "resnet18",
                     "--width", "3", "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "class_names.txt", "model.json", "notes.txt", "preprocessing.json",
        "variables.safetensors"]
    assert resnet_jax.load(str(out)).preprocessing.resize == 256  # the new one
    assert cli.main(["export", "--model", str(model_dir), "--out", str(out / "notes.txt")]) == 2
    assert "is a file" in capsys.readouterr().err
    tv = tmp_path / "tv.safetensors"
    tv.write_bytes(b"keep")
    args = ["export", "--model", str(model_dir), "--to", "torchvision", "--out", str(tv)]
    assert cli.main(args) == 2 and "exists; pass --overwrite" in capsys.readouterr().err
    assert tv.read_bytes() == b"keep"
    assert cli.main([*args, "--overwrite"]) == 0 and tv.stat().st_size > 1000

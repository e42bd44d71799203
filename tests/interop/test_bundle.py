"""The model directory (save / `resnet_jax.load`) and the preprocessing it carries:
torchvision's eval transform reproduced exactly, the project's TF-style resize, and the
input checks."""
import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest

import resnet_jax
from resnet_jax.data import preprocess as data_preprocess
from resnet_jax.interop import bundle, preprocess, torch_import
from resnet_jax.interop.preprocess import Preprocessing

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    out = tmp_path_factory.mktemp("r18")
    torch_import.convert(str(FIXTURES / "tv_resnet18_w3.safetensors"), "resnet18", width=3,
                         out=str(out), preprocessing=preprocess.torchvision_preprocessing(40, 32))
    return out


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_torchvision_eval_transform_reproduced(interpolation):
    """Resize(20) + CenterCrop(16) + ToTensor + Normalize on PIL images, computed by torchvision
    (odd margins: the crop offset rounds half to even)."""
    ref = np.load(FIXTURES / "torchvision_preprocess.npz")
    prep = preprocess.torchvision_preprocessing(20, 16, interpolation)
    for i in range(4):
        np.testing.assert_allclose(prep(ref[f"image_{i}"])[0], ref[f"out_{interpolation}_{i}"],
                                   rtol=0, atol=1e-5)


def test_tf_style_resize_is_bilinear_without_antialiasing():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (37, 50, 3), dtype=np.uint8)
    ours = data_preprocess.tf_bilinear(img, 20, 27).astype(int)
    ref = np.asarray(jax.image.resize(img.astype(np.float32), (20, 27, 3), "bilinear",
                                      antialias=False))
    assert np.abs(ours - ref).max() <= 0.5 + 1e-3  # the same up to the rounding to uint8
    prep = Preprocessing([0, 0, 0], 1, resize=20, crop=20, style="tf")
    assert data_preprocess._resized_shape(prep, 37, 50) == (20, 27)  # round(50 * 20 / 37) = 27
    tv = Preprocessing([0, 0, 0], 1, resize=20, crop=20, style="torchvision")
    assert data_preprocess._resized_shape(tv, 37, 50) == (20, 27)  # int(27.03)
    assert data_preprocess._resized_shape(tv, 37, 55) == (20, 29)  # int(29.73): truncation
    assert data_preprocess._resized_shape(prep, 37, 55) == (20, 30)


def test_preprocess_accepts_images_of_any_size_and_checks_dtypes():
    prep = preprocess.torchvision_preprocessing(20, 16)
    a = np.full((30, 40, 3), 255, np.uint8)
    b = np.zeros((16, 16, 3), np.uint8)
    out = prep([a, b])
    assert out.shape == (2, 16, 16, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0, 0], (1 - np.array([0.485, 0.456, 0.406]))
                               / np.array([0.229, 0.224, 0.225]), rtol=1e-6)
    assert prep(np.stack([b, b, b])).shape == (3, 16, 16, 3)  # (N, H, W, 3)
    assert prep(b).shape == (1, 16, 16, 3)  # one (H, W, 3) image
    from PIL import Image
    assert prep(Image.fromarray(a[..., 0])).shape == (1, 16, 16, 3)  # grayscale PIL image
    with pytest.raises(ValueError, match="uint8"):
        prep(b.astype(np.float32))
    with pytest.raises(ValueError, match="RGB"):
        prep(np.zeros((20, 20, 4), np.uint8))
    with pytest.raises(ValueError, match="per-pixel mean"):
        Preprocessing(np.zeros((8, 8, 3)), 1.0, crop=16)


def test_interop_preprocess_apply_is_a_deprecated_alias():
    """`resnet_jax.interop.preprocess.apply(prep, images)`, which that module's docstring
    offered before issue 25 moved it to `resnet_jax.data.preprocess`, still runs (warned)."""
    prep = preprocess.torchvision_preprocessing(20, 16)
    img = np.random.default_rng(0).integers(0, 256, (24, 30, 3), np.uint8)
    with pytest.warns(DeprecationWarning, match="resnet_jax.data.preprocess.apply"):
        out = preprocess.apply(prep, img)
    np.testing.assert_array_equal(out, data_preprocess.apply(prep, img))


def test_preprocessing_save_load_round_trip(tmp_path):
    prep = Preprocessing(np.random.default_rng(0).random((8, 8, 3)) * 255, 60.5, resize=8,
                         crop=8, style="tf")
    preprocess.save(prep, str(tmp_path), ["a", "b"])
    back = preprocess.load(str(tmp_path))
    np.testing.assert_array_equal(back.mean, prep.mean)  # float32 exactly through JSON
    assert (back.std, back.resize, back.crop, back.style) == (prep.std, 8, 8, "tf")
    assert preprocess.load_class_names(str(tmp_path)) == ["a", "b"]
    with pytest.raises(ValueError, match="line breaks"):
        preprocess.save_class_names(["a\nb"], str(tmp_path))


def test_load_round_trip_and_raw_images(r18):
    m = resnet_jax.load(str(r18))
    assert m.name == "resnet18" and m.model.width == 3 and m.model.bottleneck_stride == "v1.5"
    assert m.class_names == [str(i) for i in range(10)]
    direct = torch_import.convert(str(FIXTURES / "tv_resnet18_w3.safetensors"), "resnet18",
                                  width=3)
    for a, b in zip(jax.tree.leaves(m.variables), jax.tree.leaves(direct.variables),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    assert set(m.variables) == {"params", "batch_stats"}
    images = [np.random.default_rng(i).integers(0, 256, (50 + 9 * i, 45, 3), np.uint8)
              for i in range(3)]
    x = m.preprocess(images)
    assert x.shape == (3, 32, 32, 3)
    logits = m.model.apply(m.variables, x, train=False)
    assert logits.shape == (3, 10) and np.isfinite(logits).all()


def test_load_overrides_and_refusals(r18, tmp_path):
    m = resnet_jax.load(str(r18), dtype="bfloat16")
    assert m.model.dtype == jax.numpy.bfloat16
    with pytest.raises(TypeError, match="unknown model field"):
        resnet_jax.load(str(r18), colour="red")
    with pytest.raises(ValueError, match="no model.json"):
        resnet_jax.load(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="resnet-jax export --workdir"):
        resnet_jax.load(str(tmp_path))
    newer = tmp_path / "newer"
    m.save(str(newer))
    umask = os.umask(0)
    os.umask(umask)  # safetensors alone writes 0600; a model directory is meant to be shared
    assert (newer / "variables.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    meta = json.loads((newer / "model.json").read_text())
    (newer / "model.json").write_text(json.dumps(dict(meta, format_version=99)))
    with pytest.raises(ValueError, match="newer than this"):
        resnet_jax.load(str(newer))
    (newer / "model.json").write_text(json.dumps(dict(meta, fields=dict(meta["fields"],
                                                                         width=4))))
    with pytest.raises(resnet_jax.interop.IncompatibleWeightsError, match="shape mismatch"):
        resnet_jax.load(str(newer))


def test_imagenet_class_names_are_package_data():
    names = bundle.imagenet_class_names()
    assert len(names) == 1000 and names[0] == "tench" and names[281] == "tabby"
    assert bundle.default_class_names(1000) == names
    assert bundle.default_class_names(3) == ["0", "1", "2"]
    with pytest.raises(ValueError, match="2 class names for a model of 3"):
        bundle.default_class_names(3, ["a", "b"])


def test_scan_blocks_model_is_saved_unrolled(tmp_path):
    from resnet_jax.interop.torch_layout import abstract_variables
    from resnet_jax.models import unstack_blocks
    model = resnet_jax.create_model("cifar_resnet20", width=2, scan_blocks=True)
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32),
                             abstract_variables(model))
    assert variables["params"]["layer1_rest"]["block"]["conv1"]["kernel"].shape[0] == 2
    prep = Preprocessing([0, 0, 0], 1.0, resize=8, crop=8)
    bundle.LoadedModel.create(model, variables, prep, None).save(str(tmp_path))
    m = resnet_jax.load(str(tmp_path))
    assert not m.model.scan_blocks and "layer1_rest" not in m.variables["params"]
    expected = unstack_blocks(variables, model.stage_sizes)
    assert jax.tree.structure(expected) == jax.tree.structure(m.variables)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(m.variables), strict=True):
        np.testing.assert_array_equal(a, b)

"""torchvision / timm import against torch's own outputs (fixtures made by
tools/make_torch_fixtures.py; no torch needed here): logits in eval mode, batch statistics in
train mode, the exact state-dict round trip, the full-size key layouts, and named errors for
files that do not fit."""
import functools
import gzip
import json
import struct
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from resnet_jax.interop import torch_import, torch_layout
from resnet_jax.interop.tree import IncompatibleWeightsError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
NETS = {"resnet18": ("tv_resnet18_w3", 3), "resnet50": ("tv_resnet50_w2", 2)}


@pytest.fixture(scope="module", params=sorted(NETS))
def imported(request):
    """(name, LoadedModel of the fixture, torch's outputs, the file's tensors)."""
    stem, width = NETS[request.param]
    path = FIXTURES / f"{stem}.safetensors"
    loaded = torch_import.convert(str(path), request.param, source="torchvision", width=width)
    ref = dict(np.load(FIXTURES / f"{stem}_outputs.npz"))
    ref["x"] = (ref["x_uint8"].astype(np.float32) - 128) / 64
    model = loaded.model
    ours = {"eval": jax.jit(functools.partial(model.apply, train=False))(loaded.variables,
                                                                         ref["x"]),
            "train": jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(
                loaded.variables, ref["x"])}
    return request.param, loaded, ref, load_file(str(path)), ours


def test_eval_logits_equal_torch(imported):
    _, m, ref, _, ours = imported
    logits = np.asarray(ours["eval"])
    # float32 summation order differs between XLA builds and CPUs: 1e-4 absolute, and 2e-6
    # relative for the large logits (one 91.63 differed by 1.1e-4 on another x86 machine).
    np.testing.assert_allclose(logits, ref["eval_logits"], rtol=2e-6, atol=1e-4)
    assert (logits.argmax(1) == ref["eval_logits"].argmax(1)).all()


def test_train_mode_batch_statistics_equal_torch(imported):
    """Torch updates running_var with the unbiased batch variance (x n / (n - 1)); our BN (like
    flax's) with the biased one it normalizes with. Means: the same convention. Tolerances:
    train mode normalizes by the statistics of 4 images, which in these 2-3 channel wide nets
    amplifies float32 rounding (torch's own float32 and float64 train logits differ by 5e-5);
    measured: logits 1.4e-4, running stats 1.6e-4 relative at most (ResNet-50 at width 2)."""
    _, m, ref, before, ours = imported
    logits, upd = ours["train"]
    np.testing.assert_allclose(np.asarray(logits), ref["train_logits"], rtol=0, atol=1e-3)
    ours = torch_layout.to_torch_state_dict(m.model, {"params": m.variables["params"],
                                                      "batch_stats": upd["batch_stats"]})
    momentum = torch_layout.TORCH_BN_MOMENTUM
    assert m.model.bn_momentum == 1 - momentum
    worst_unbiased = 0.0
    for key in [k[len("running_mean/"):] for k in ref if k.startswith("running_mean/")]:
        n = int(ref[f"count/{key}"])
        old_mean, old_var = before[f"{key}.running_mean"], before[f"{key}.running_var"]
        new_mean, new_var = ref[f"running_mean/{key}"], ref[f"running_var/{key}"]
        np.testing.assert_allclose(ours[f"{key}.running_mean"], new_mean, rtol=1e-3, atol=1e-5,
                                   err_msg=key)
        unbiased = (new_var - (1 - momentum) * old_var) / momentum  # torch's batch variance
        expected = (1 - momentum) * old_var + momentum * unbiased * (n - 1) / n
        np.testing.assert_allclose(ours[f"{key}.running_var"], expected, rtol=1e-3, atol=1e-5,
                                   err_msg=key)
        worst_unbiased = max(worst_unbiased,
                             np.max(np.abs(ours[f"{key}.running_var"] / new_var - 1)))
        assert not np.allclose(new_mean, old_mean)  # the update happened
    assert worst_unbiased > 5e-3  # the convention difference is real, above the tolerance


def test_state_dict_round_trip_is_exact(imported, tmp_path):
    name, m, ref, original, ours = imported
    out = tmp_path / "back.safetensors"
    torch_import.export_torchvision(m, str(out))
    back = load_file(str(out))
    assert sorted(back) == sorted(original)
    for key, value in original.items():
        assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
        np.testing.assert_array_equal(back[key], value, err_msg=key)
    again = torch_import.convert(str(out), name, width=m.model.width)
    for a, b in zip(jax.tree.leaves(again.variables), jax.tree.leaves(m.variables),
                    strict=True):
        np.testing.assert_array_equal(a, b)  # so the logits are the same too


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
def test_full_size_layout_equals_torchvision_and_timm(name):
    """Every tensor of the real torchvision (= timm) ResNet maps to one of ours, same shapes."""
    with gzip.open(FIXTURES / "torchvision_keys.json.gz", "rt") as f:
        expected = {k: tuple(v) for k, v in json.load(f)[name].items()}
    layout = torch_layout.torch_layout(torch_import.torch_model(name))
    ours = {k: s for k, (_, s) in layout.items()}
    ours.update({k: () for k in torch_layout.bn_counter_keys(layout)})
    assert ours == expected
    assert len({flax for flax, _ in layout.values()}) == len(layout)  # one-to-one


def _state(stem="tv_resnet18_w3"):
    return load_file(str(FIXTURES / f"{stem}.safetensors"))


def test_wrong_depth_lists_missing_keys_and_guesses_the_file():
    with pytest.raises(IncompatibleWeightsError) as err:
        torch_import.import_state_dict(_state(), "resnet34", width=3)
    e = err.value
    assert isinstance(e, ValueError) and not e.unexpected and not e.mismatched
    assert "layer1.2.conv1.weight" in e.missing and len(e.missing) == 80
    assert "looks like resnet18 (width 3, 10 classes)" in str(e)


def test_wrong_family_and_width_list_unexpected_keys_and_shapes():
    with pytest.raises(IncompatibleWeightsError) as err:
        torch_import.import_state_dict(_state("tv_resnet50_w2"), "resnet18", width=2)
    assert "layer1.0.conv3.weight" in err.value.unexpected
    assert err.value.mismatched["layer1.0.conv1.weight"] == ((2, 2, 1, 1), (2, 2, 3, 3))
    with pytest.raises(IncompatibleWeightsError) as err:
        torch_import.import_state_dict(_state(), "resnet18")  # width 64 expected
    assert err.value.mismatched["conv1.weight"] == ((3, 3, 7, 7), (64, 3, 7, 7))
    assert "width 3" in str(err.value)


def test_one_missing_one_extra_key_and_counters_ignored():
    state = {k: v for k, v in _state().items() if not k.endswith("num_batches_tracked")}
    torch_import.import_state_dict(state, "resnet18", width=3)  # counters are optional
    del state["layer4.1.bn2.running_var"]
    state["head.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(IncompatibleWeightsError) as err:
        torch_import.import_state_dict(state, "resnet18", width=3)
    assert err.value.missing == ["layer4.1.bn2.running_var"]
    assert err.value.unexpected == ["head.weight"]
    assert "1 missing key(s): layer4.1.bn2.running_var" in str(err.value)


def test_v1_model_refused_for_torch_bottleneck_weights():
    with pytest.raises(ValueError, match="v1.5"):
        torch_import.import_state_dict(_state("tv_resnet50_w2"), "resnet50", width=2,
                                       bottleneck_stride="v1")
    import resnet_jax
    v1 = resnet_jax.create_model("resnet50", width=2, num_classes=10)  # our default: v1
    with pytest.raises(ValueError, match="stride on the 3x3"):
        torch_import.import_state_dict(_state("tv_resnet50_w2"), v1)
    with pytest.raises(ValueError, match="bn_epsilon"):
        torch_import.import_state_dict(_state(), "resnet18", width=3, bn_epsilon=1e-3)


def test_file_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="no such file"):
        torch_import.read_state_dict(str(tmp_path / "none.safetensors"))
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown weight file type"):
        torch_import.read_state_dict(str(tmp_path / "w.npz"))
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a readable safetensors"):
        torch_import.read_state_dict(str(tmp_path / "bad.safetensors"))
    (tmp_path / "w.pth").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    with pytest.raises(ValueError, match="needs torch"):
        torch_import.read_state_dict(str(tmp_path / "w.pth"))


def test_bfloat16_and_module_prefix(tmp_path):
    """bfloat16 files (which safetensors' numpy API refuses) and DataParallel's 'module.'."""
    import ml_dtypes
    state = {f"module.{k}": v for k, v in _state().items()}
    header, blobs, offset = {}, [], 0
    for key, value in state.items():
        raw = (value.astype(ml_dtypes.bfloat16) if value.dtype == np.float32 else value)
        dtype = "BF16" if raw.dtype == ml_dtypes.bfloat16 else "I64"
        data = np.ascontiguousarray(raw).tobytes()
        header[key] = {"dtype": dtype, "shape": list(raw.shape),
                       "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    read = torch_import.read_state_dict(str(path))
    assert sorted(read) == sorted(_state())
    expected = _state()["conv1.weight"].astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(read["conv1.weight"].astype(np.float32), expected)
    _, variables = torch_import.import_state_dict(read, "resnet18", width=3)
    assert variables["params"]["conv1"]["kernel"].dtype == np.float32


def test_export_refuses_architectures_torchvision_lacks(tmp_path):
    import resnet_jax
    model = resnet_jax.create_model("cifar_resnet8", width=4)
    with pytest.raises(ValueError, match="stem='cifar'.*shortcut='A'"):
        torch_import.export_torchvision(model, str(tmp_path / "x.safetensors"),
                                        {"params": {}, "batch_stats": {}})
    v1 = resnet_jax.create_model("resnet50", width=2, num_classes=10)
    with pytest.raises(ValueError, match="bottleneck_stride='v1'"):
        torch_layout.to_torch_state_dict(v1, {"params": {}, "batch_stats": {}})


def _random_variables(model, seed=0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32),
                        torch_layout.abstract_variables(model))


def test_scan_blocks_model_exports_like_the_unrolled_one():
    from resnet_jax.models import stack_blocks
    unrolled = torch_import.torch_model("resnet34", width=2, num_classes=3)
    variables = _random_variables(unrolled)
    scanned = unrolled.clone(scan_blocks=True)
    stacked = stack_blocks(variables, unrolled.stage_sizes)
    assert "layer3_rest" in stacked["params"]
    a = torch_layout.to_torch_state_dict(unrolled, variables)
    b = torch_layout.to_torch_state_dict(scanned, stacked)
    assert sorted(a) == sorted(b)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(IncompatibleWeightsError, match="missing"):
        torch_layout.to_torch_state_dict(unrolled, stacked)  # stacked variables, unrolled model

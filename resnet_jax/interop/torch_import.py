"""Import torchvision / timm ResNet weights, and export ours as a torchvision state dict.

    m = convert("resnet50-0676ba61.safetensors", "resnet50", source="torchvision", out="r50")
    export_torchvision(resnet_jax.load("r50"), "resnet50_again.safetensors")

Files: `.safetensors` (read with safetensors' numpy API; no torch needed) or `.pth` / `.pt`
(only through `torch.load(weights_only=True)`, which unpickles tensors and plain containers
but no code; needs torch installed). Layout and conventions: `torch_layout`.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from resnet_jax.interop import bundle, torch_layout
from resnet_jax.interop.preprocess import Preprocessing, torchvision_preprocessing
from resnet_jax.models.resnet import ResNet, create_model

_TORCH_FIXED = dict(shortcut="B", bn_epsilon=torch_layout.TORCH_BN_EPSILON,
                    bn_momentum=1.0 - torch_layout.TORCH_BN_MOMENTUM, scan_blocks=False)
_WRAPPERS = ("state_dict", "model", "module")


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """{key: numpy array} of a `.safetensors` or `.pth` file (a state dict, possibly wrapped in
    {'state_dict': ...} / {'model': ...}; a 'module.' prefix on every key is dropped)."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".safetensors":
        state = _read_safetensors(path)
    elif ext in (".pth", ".pt", ".bin"):
        state = _read_pth(path)
    else:
        raise ValueError(f"{path}: unknown weight file type {ext!r}; use .safetensors or .pth")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    try:
        return load_file(path)
    except TypeError:  # a dtype numpy has no name for (bfloat16): read the raw layout
        return _read_safetensors_raw(path)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None


_RAW_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
               "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
               "BOOL": np.bool_}


def _read_safetensors_raw(path: str) -> dict[str, np.ndarray]:
    """The safetensors layout (u64 header size, JSON header, raw little-endian data), for the
    dtypes the numpy API refuses; BF16 through ml_dtypes (a JAX dependency)."""
    import ml_dtypes
    dtypes = dict(_RAW_DTYPES, BF16=ml_dtypes.bfloat16)
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        data = f.read()
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if info["dtype"] not in dtypes:
            raise ValueError(f"{path}: tensor {key} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        out[key] = np.frombuffer(data[start:end], dtypes[info["dtype"]]).reshape(info["shape"])
    return out


def _read_pth(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ValueError(f"{path}: reading a .pth file needs torch (pip install torch), which "
                         "is not installed; or convert it to .safetensors elsewhere") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds; all mean unreadable
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "Unsupported global" in ln), lines[0] if lines
                      else type(err).__name__).split(" Please")[0][:200]
        raise ValueError(f"{path}: torch.load(weights_only=True) refused it, and nothing else "
                         f"unpickles here ({type(err).__name__}: {detail}); save the "
                         "state dict as .safetensors") from None
    for key in _WRAPPERS:
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in obj.items() if isinstance(v, torch.Tensor)}


def torch_model(name: str, state: Optional[Mapping[str, np.ndarray]] = None,
                **overrides: Any) -> ResNet:
    """Our module with torchvision's architecture and BN settings for `name` (resnet18..152):
    v1.5 bottlenecks, shortcut B, BN eps 1e-5 / momentum 0.1 (our decay 0.9), unrolled.
    `num_classes` defaults to the rows of `state['fc.weight']` when a state dict is given."""
    if not name.startswith("resnet"):
        raise ValueError(f"--model {name}: torchvision / timm ResNets are resnet18, resnet34, "
                         "resnet50, resnet101, resnet152")
    fields = dict(_TORCH_FIXED, bottleneck_stride="v1.5")
    if state is not None and "fc.weight" in state and np.ndim(state["fc.weight"]) == 2:
        fields["num_classes"] = int(np.shape(state["fc.weight"])[0])
    for key, value in overrides.items():
        if key in _TORCH_FIXED or key == "bottleneck_stride":
            ok = value == ("v1.5" if key == "bottleneck_stride" else _TORCH_FIXED[key])
            if not ok:
                raise ValueError(f"{key}={value!r} does not match torchvision's ResNet "
                                 f"({key}={fields[key]!r})")
        fields[key] = value
    model = create_model(name, **fields)
    torch_layout.check_torch_compatible(model)
    return model


def import_state_dict(state: Mapping[str, np.ndarray], model: ResNet | str,
                      what: str = "the state dict", **overrides: Any) -> tuple[ResNet, dict]:
    """(module, {'params', 'batch_stats'}) from a torchvision-layout state dict."""
    if isinstance(model, str):
        model = torch_model(model, state, **overrides)
    elif overrides:
        raise TypeError("overrides apply to a model name, not a module")
    return model, torch_layout.from_torch_state_dict(state, model, what)


def convert(path: str, model: ResNet | str, source: str = "torchvision",
            out: Optional[str] = None, class_names: Optional[Sequence[str]] = None,
            preprocessing: Optional[Preprocessing] = None, **overrides: Any):
    """Import a torchvision / timm ResNet weight file; returns a `LoadedModel` and, with
    `out`, writes it as a model directory (`resnet_jax.load(out)` reads it back).

    model: a name (resnet18/34/50/101/152; `overrides` such as width=... apply) or a module.
    class_names: default the 1000 ImageNet classes (torchvision's names) for 1000 classes,
    else '0', '1', ... . preprocessing: default torchvision's ImageNet eval transform.
    """
    if source not in torch_layout.SOURCES:
        raise ValueError(f"--from {source!r}; allowed: {list(torch_layout.SOURCES)}")
    state = read_state_dict(path)
    module, variables = import_state_dict(state, model, f"{path} ({source})", **overrides)
    names = bundle.default_class_names(module.num_classes, class_names)
    loaded = bundle.LoadedModel.create(
        module, variables, preprocessing or torchvision_preprocessing(), names,
        source={"kind": source, "file": os.path.basename(path)})
    if out is not None:
        loaded.save(out)
    return loaded


def export_torchvision(loaded_or_model: Any, path: str,
                       variables: Optional[Mapping[str, Any]] = None) -> dict[str, np.ndarray]:
    """Write a torchvision state dict (`.safetensors`) of a `LoadedModel` (or a module and its
    variables); `torchvision.models.resnetX().load_state_dict(...)` accepts it (strict)."""
    from safetensors.numpy import save_file
    if variables is None:
        module, variables = loaded_or_model.model, loaded_or_model.variables
    else:
        module = loaded_or_model
    state = torch_layout.to_torch_state_dict(module, variables)
    if not path.endswith(".safetensors"):
        raise ValueError(f"{path}: the torchvision export writes .safetensors")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(state, path, metadata={"format": "pt", "producer": "resnet-jax"})
    bundle.usual_permissions(path)
    return state

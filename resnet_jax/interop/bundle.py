"""The model directory: a trained or imported ResNet that loads without its training run.

    DIR/model.json             {"format": "resnet-jax-model", "format_version": 1,
                                "name": "resnet50", "fields": {ResNet fields}, "source": {...}}
    DIR/variables.safetensors  params/<module>/.../<leaf> and batch_stats/... ('/'-joined),
                               float32, the unrolled layout (scan_blocks=False)
    DIR/preprocessing.json     `resnet_jax.interop.preprocess.Preprocessing`
    DIR/class_names.txt        one name per line, num_classes lines

No pickle anywhere. `resnet_jax.load(DIR)` -> `LoadedModel`.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from resnet_jax import schema
from resnet_jax.interop import preprocess as prep_lib
from resnet_jax.interop.tree import check_shapes, flatten, unflatten
from resnet_jax.models.layout import unstack_blocks
from resnet_jax.models.resnet import DTYPES, ResNet

FORMAT = "resnet-jax-model"
FORMAT_VERSION = 1
MODEL_FILE, VARIABLES_FILE = "model.json", "variables.safetensors"
COLLECTIONS = ("params", "batch_stats")
# ResNet fields a model directory records; the BN reduction (groups, axis names) is a property
# of how a model is run, not of the model (pass it to `load` as an override).
# (model.json files older than the unit and shortcut variants lack those fields: ResNet's
# defaults are what they held.)
FIELDS = ("stage_sizes", "block", "stem", "width", "num_classes", "shortcut", "plain",
          "bottleneck_stride", "zero_init_residual", "dtype", "param_dtype", "bn_momentum",
          "bn_epsilon", *schema.VARIANT_DEFAULTS)


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in label order (torchvision's `categories`)."""
    text = importlib.resources.files("resnet_jax.interop").joinpath(
        "imagenet_classes.txt").read_text(encoding="utf-8")
    return text.rstrip("\n").split("\n")


def default_class_names(num_classes: int, given: Optional[Sequence[str]] = None) -> list[str]:
    if given is not None:
        names = [str(n) for n in given]
        if len(names) != num_classes:
            raise ValueError(f"{len(names)} class names for a model of {num_classes} classes")
        return names
    if num_classes == 1000:
        return imagenet_class_names()
    return [str(i) for i in range(num_classes)]


def _dtype_name(dtype: Any) -> str:
    name = np.dtype(dtype).name
    if name not in DTYPES:
        raise ValueError(f"dtype {name} cannot be saved; allowed: {list(DTYPES)}")
    return name


def model_fields(model: ResNet) -> dict:
    """The JSON-able fields that rebuild `model` (unrolled) with `ResNet(**fields)`."""
    fields = {f: getattr(model, f) for f in FIELDS}
    fields["stage_sizes"] = [int(n) for n in fields["stage_sizes"]]
    fields["dtype"], fields["param_dtype"] = (_dtype_name(model.dtype),
                                              _dtype_name(model.param_dtype))
    return fields


def model_name(fields: Mapping[str, Any]) -> str:
    """'resnet50', 'cifar_resnet20', ... or 'custom' for fields no name builds."""
    from resnet_jax.models.resnet import IMAGENET_STAGES
    kind = "plain" if fields["plain"] else "resnet"
    sizes = tuple(fields["stage_sizes"])
    if fields["stem"] == "cifar" and len(set(sizes)) == 1 and len(sizes) == 3:
        return f"cifar_{kind}{(9 if fields['block'] == 'bottleneck' else 6) * sizes[0] + 2}"
    for depth, (block, stages) in IMAGENET_STAGES.items():
        if fields["stem"] == "imagenet" and (block, stages) == (fields["block"], sizes):
            return f"{kind}{depth}"
    return "custom"


@dataclasses.dataclass
class LoadedModel:
    """A ResNet with everything needed to use it: `model` (linen module), `variables`
    ({'params', 'batch_stats'}), `preprocessing`, `class_names`, and `source` (provenance).

    `model.apply(variables, x, train=False)` takes an NHWC float batch already normalized;
    `preprocess(images)` makes one from raw uint8 images (`data.preprocess.apply`).
    """
    model: ResNet
    variables: dict
    preprocessing: prep_lib.Preprocessing
    class_names: list[str]
    source: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def create(cls, model: ResNet, variables: Mapping[str, Any],
               preprocessing: prep_lib.Preprocessing, class_names: Sequence[str],
               source: Optional[dict] = None) -> "LoadedModel":
        """Checks the variables against the model and unrolls a scan_blocks model."""
        import jax.numpy as jnp
        variables = {c: variables.get(c, {}) for c in COLLECTIONS}
        if model.scan_blocks:
            variables = unstack_blocks(variables, model.stage_sizes)
            model = model.clone(scan_blocks=False)
        check_variables(model, variables, "the variables do not fit the model")
        names = default_class_names(model.num_classes, class_names)
        variables = {c: _map(lambda x: jnp.asarray(x, model.param_dtype), t)
                     for c, t in variables.items()}
        return cls(model, variables, preprocessing, names, dict(source or {}))

    @property
    def name(self) -> str:
        return model_name(model_fields(self.model))

    def preprocess(self, images: Any) -> np.ndarray:
        """uint8 images -> float32 (N, crop, crop, 3): `data.preprocess.apply(self.preprocessing,
        images)` (one (H, W, 3) image, an (N, H, W, 3) batch, or a list of either size)."""
        return self.preprocessing(images)

    def save(self, directory: str, overwrite: bool = False) -> None:
        """Write the model directory, creating it. An existing non-empty `directory` is
        refused unless `overwrite`, which first removes the model directory's files there and
        its `eval/` results (they scored the old model); other files are left alone."""
        from safetensors.numpy import save_file
        check_out(directory, overwrite)
        if overwrite:
            _remove_model_files(directory)
        os.makedirs(directory, exist_ok=True)
        flat = {k: np.ascontiguousarray(np.asarray(v, np.float32))
                for k, v in flatten(self.variables).items()}
        save_file(flat, os.path.join(directory, VARIABLES_FILE),
                  metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
        usual_permissions(os.path.join(directory, VARIABLES_FILE))
        prep_lib.save(self.preprocessing, directory, self.class_names)
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": self.name,
                "fields": model_fields(self.model), "source": self.source}
        with open(os.path.join(directory, MODEL_FILE), "w") as f:
            json.dump(meta, f, indent=2)
            f.write("\n")


# What a model directory holds: replaced as a whole by `save(..., overwrite=True)`.
MODEL_DIR_ENTRIES = (MODEL_FILE, VARIABLES_FILE, prep_lib.FILE, prep_lib.CLASS_NAMES_FILE,
                     "eval")


def check_out(directory: str, overwrite: bool = False) -> None:
    """Refuses (ValueError, before anything heavy) to write a model directory where a file is,
    or into a non-empty folder unless `overwrite`."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"{directory} is a file, not a folder for a model directory")
    entries = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
    if entries and not overwrite:
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise ValueError(f"{directory} is not empty ({shown}); pass --overwrite to replace the "
                         "model directory there (its eval/ results go too), or choose a new "
                         "--out")


def _remove_model_files(directory: str) -> None:
    import shutil
    for name in MODEL_DIR_ENTRIES:
        path = os.path.join(directory, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def usual_permissions(path: str) -> None:
    """safetensors writes its files 0600; give them the permissions of any new file here."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _map(fn, tree):
    return {k: _map(fn, v) if isinstance(v, Mapping) else fn(v) for k, v in tree.items()}


def check_variables(model: ResNet, variables: Mapping[str, Any], what: str) -> None:
    from resnet_jax.interop.torch_layout import abstract_variables
    expected = {k: s.shape for k, s in flatten(abstract_variables(model)).items()}
    check_shapes(expected, {k: np.shape(v) for k, v in flatten(variables).items()}, what)


def load(directory: str, **overrides: Any) -> LoadedModel:
    """Read a model directory written by `resnet-jax convert` / `export` (or
    `LoadedModel.save`). `overrides`: ResNet fields to change, e.g. dtype='bfloat16',
    bn_num_groups=8 (the variables must still fit)."""
    from safetensors.numpy import load_file
    path = os.path.join(directory, MODEL_FILE)
    if not os.path.isfile(path):
        hint = (" (a training workdir: run `resnet-jax export --workdir` on it first)"
                if os.path.isfile(os.path.join(directory, "config.json")) else "")
        raise ValueError(f"{directory}: not a resnet-jax model directory, no {MODEL_FILE}{hint}")
    with open(path) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{path}: format version {meta['format_version']} is newer than this "
                         f"resnet-jax reads ({FORMAT_VERSION}); upgrade resnet-jax")
    fields = dict(meta["fields"], stage_sizes=tuple(meta["fields"]["stage_sizes"]))
    unknown = sorted(set(overrides) - set(f.name for f in dataclasses.fields(ResNet)))
    if unknown:
        raise TypeError(f"unknown model field(s) {unknown}")
    model = ResNet(**{**fields, **overrides})
    if model.scan_blocks:
        raise ValueError("load unrolled (scan_blocks=False); stack with "
                         "resnet_jax.models.stack_blocks if needed")
    try:
        flat = load_file(os.path.join(directory, VARIABLES_FILE))
    except Exception as err:  # noqa: BLE001 - missing, truncated or not safetensors
        raise ValueError(f"{directory}: cannot read {VARIABLES_FILE} ({err})") from None
    variables = unflatten(flat)
    names = prep_lib.load_class_names(directory)
    return LoadedModel.create(model, variables, prep_lib.load(directory), names,
                              meta.get("source"))

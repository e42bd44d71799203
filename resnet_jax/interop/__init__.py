"""Use a ResNet in your own JAX code: import torchvision / timm weights, a self-contained model
directory (export, `load`), predict on image files, and flax.nnx modules.

    m = resnet_jax.load("r50")          # written by `resnet-jax convert` or `resnet-jax export`
    logits = m.model.apply(m.variables, m.preprocess(images), train=False)

Modules: `torch_layout` (the torchvision state-dict layout), `torch_import` (convert, export
to torchvision), `bundle` (the model directory), `preprocess` (eval resize/crop and
normalization), `workdir` (export a training run), `predict`, `nnx`, `commands` (CLI).
"""
from resnet_jax.interop.bundle import LoadedModel, imagenet_class_names, load
from resnet_jax.interop.nnx import NNXResNet, linen_variables, nnx_model
from resnet_jax.interop.preprocess import Preprocessing, torchvision_preprocessing
from resnet_jax.interop.torch_import import convert, export_torchvision, read_state_dict
from resnet_jax.interop.tree import IncompatibleWeightsError

__all__ = ["LoadedModel", "imagenet_class_names", "load", "NNXResNet", "linen_variables",
           "nnx_model", "Preprocessing", "torchvision_preprocessing", "convert",
           "export_torchvision", "read_state_dict", "IncompatibleWeightsError",
           "export_workdir"]


def export_workdir(workdir: str, out: str | None = None, checkpoint: str = "newest"):
    """A training run's newest / best checkpoint as a `LoadedModel` (written to `out` if given);
    see `resnet_jax.interop.workdir.export_workdir`."""
    from resnet_jax.interop import workdir as workdir_lib
    return workdir_lib.export_workdir(workdir, out, checkpoint)

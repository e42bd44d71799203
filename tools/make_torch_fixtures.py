"""Write the torch reference fixtures that tests/interop checks our import against.

Needs torch and torchvision (timm optional), NOT the project's venv; e.g.

    python3 -m venv /work/torchenv
    /work/torchenv/bin/pip install torch==2.14.1 torchvision==0.29.1 safetensors numpy timm
    /work/torchenv/bin/python tools/make_torch_fixtures.py --out tests/fixtures

Everything is seeded, so a rerun with the same versions writes the same numbers. Files:

  tv_resnet18_w3.safetensors, tv_resnet50_w2.safetensors
      torchvision's own ResNet class (its __init__, _make_layer and forward) with the stage
      widths scaled to w, 2w, 4w, 8w (ours: `width=w`) and 10 classes, in torchvision's key
      layout. Weights random; BN weight, bias, running_mean and running_var random too, so
      a swapped scale/bias or mean/var cannot pass. num_batches_tracked = 0.
  tv_resnet18_w3_outputs.npz, tv_resnet50_w2_outputs.npz
      x_uint8: the input as uint8 u (4, 64, 64, 3), x = (u - 128) / 64 NHWC (exact in
      float32); eval_logits: model.eval()(x);
      train_logits: model.train()(x) (batch statistics); after one train-mode forward, for
      every BN `running_mean/<key>` and `running_var/<key>` (torch: momentum 0.1, running_var
      updated with the UNBIASED batch variance) and `count/<key>` (elements per channel).
      eval_logits_f64: the same eval forward in float64 (how far float32 torch is from exact).
  torchvision_keys.json.gz: {resnet18..152: {key: shape}} of the full-size torchvision nets
      (asserted identical to timm's resnet18..152 when timm is installed).
  torchvision_preprocess.npz: a few small uint8 images (any size) and torchvision's eval
      transform on each (Resize(20) + CenterCrop(16) + ToTensor + Normalize(ImageNet)), as
      NHWC float32, with bilinear (`out_bilinear_<i>`) and bicubic (`out_bicubic_<i>`) resize.
"""
from __future__ import annotations

import argparse
import copy
import gzip
import json
import os

import numpy as np
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file
from torchvision import transforms
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class NarrowResNet(ResNet):
    """torchvision's ResNet with stage widths (w, 2w, 4w, 8w) instead of (64, ..., 512)."""

    def __init__(self, block, layers, width: int, num_classes: int):
        self._width = width
        self._first_layer = True
        super().__init__(block, layers, num_classes=num_classes)
        # The stem and the classifier were built for width 64 by ResNet.__init__: rebuild them
        # with the same constructors at width w (same names, so the same state-dict keys).
        self.conv1 = torch.nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = self._norm_layer(width)
        self.fc = torch.nn.Linear(8 * width * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if self._first_layer:
            self.inplanes, self._first_layer = self._width, False
        return super()._make_layer(block, planes * self._width // 64, blocks, stride, dilate)


def randomize_bn(model: torch.nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = 0.5 + torch.rand(c, generator=gen)
            m.bias.data = 0.2 * torch.randn(c, generator=gen)
            m.running_mean.data = 0.2 * torch.randn(c, generator=gen)
            m.running_var.data = 0.5 + torch.rand(c, generator=gen)


def make_model(name: str, seed: int) -> tuple[str, torch.nn.Module]:
    torch.manual_seed(seed)
    block, layers, width = {"resnet18": (BasicBlock, [2, 2, 2, 2], 3),
                            "resnet50": (Bottleneck, [3, 4, 6, 3], 2)}[name]
    model = NarrowResNet(block, layers, width, num_classes=10)
    gen = torch.Generator().manual_seed(seed + 1)
    randomize_bn(model, gen)
    model.fc.bias.data = 0.1 * torch.randn(10, generator=gen)
    return f"tv_{name}_w{width}", model.eval()


def bn_modules(model: torch.nn.Module) -> dict[str, torch.nn.BatchNorm2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}


def reference_outputs(model: torch.nn.Module, x_nchw: torch.Tensor) -> dict[str, np.ndarray]:
    out = {}
    with torch.no_grad():
        out["eval_logits"] = model.eval()(x_nchw).numpy()
        m64 = copy.deepcopy(model).double()
        out["eval_logits_f64"] = m64.eval()(x_nchw.double()).numpy()
        counts = {}
        hooks = [m.register_forward_hook(
            lambda mod, inp, _, name=name: counts.__setitem__(name, inp[0].numel() //
                                                               inp[0].shape[1]))
            for name, m in bn_modules(model).items()]
        out["train_logits"] = model.train()(x_nchw).numpy()
        for h in hooks:
            h.remove()
        model.eval()
    for name, m in bn_modules(model).items():
        out[f"running_mean/{name}"] = m.running_mean.numpy().copy()
        out[f"running_var/{name}"] = m.running_var.numpy().copy()
        out[f"count/{name}"] = np.int64(counts[name])
    return out


def full_size_keys() -> dict:
    keys = {}
    for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
        sd = getattr(torchvision.models, name)().state_dict()
        keys[name] = {k: list(v.shape) for k, v in sd.items()}
        try:
            import timm
        except ImportError:
            continue
        timm_sd = timm.create_model(name, pretrained=False).state_dict()
        assert {k: list(v.shape) for k, v in timm_sd.items()} == keys[name], name
        print(f"{name}: timm's state-dict keys and shapes equal torchvision's")
    return keys


def preprocess_fixture(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    # Odd margins exercise the crop's rounding ((h - 16) / 2 = x.5 rounds half to even).
    for i, (h, w) in enumerate([(37, 29), (40, 61), (20, 20), (21, 33)]):
        yy, xx = np.mgrid[0:h, 0:w]
        smooth = np.stack([yy * 255 / h, xx * 255 / w, (yy + xx) * 127 / (h + w)], -1)
        img = np.clip(smooth + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        out[f"image_{i}"] = img
        for mode, interp in (("bilinear", transforms.InterpolationMode.BILINEAR),
                             ("bicubic", transforms.InterpolationMode.BICUBIC)):
            t = transforms.Compose([transforms.Resize(20, interpolation=interp),
                                    transforms.CenterCrop(16), transforms.ToTensor(),
                                    transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
            out[f"out_{mode}_{i}"] = t(Image.fromarray(img)).permute(1, 2, 0).numpy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="tests/fixtures")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    for seed, name in enumerate(("resnet18", "resnet50")):
        stem, model = make_model(name, seed)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  os.path.join(args.out, f"{stem}.safetensors"))
        # Inputs (u - 128) / 64 for uint8 u: exact in float32, stored as the 48 KB of u.
        u = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(100 + seed))
        x = ((u.float() - 128) / 64).permute(0, 3, 1, 2).contiguous()
        np.savez_compressed(os.path.join(args.out, f"{stem}_outputs.npz"), x_uint8=u.numpy(),
                            **reference_outputs(model, x))
        print(f"{stem}: {sum(p.numel() for p in model.state_dict().values())} numbers")
    text = json.dumps(full_size_keys(), separators=(",", ":"), sort_keys=True)
    with gzip.GzipFile(os.path.join(args.out, "torchvision_keys.json.gz"), "wb", mtime=0) as f:
        f.write(text.encode())
    np.savez_compressed(os.path.join(args.out, "torchvision_preprocess.npz"),
                        **preprocess_fixture(7))
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}: wrote {args.out}")


if __name__ == "__main__":
    main()

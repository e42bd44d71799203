"""Parameter and multiply-add counts against ../shared/PAPER.md."""
import pytest

from resnet_jax import count_macs, count_params, create_model
from resnet_jax.models import abstract_variables

# PAPER.md: params (option B, torchvision count); conv+fc multiply-adds v1 / v1.5.
IMAGENET = {
    "resnet18": (11_689_512, 1.814e9, 1.814e9),
    "resnet34": (21_797_672, 3.664e9, 3.664e9),
    "resnet50": (25_557_032, 3.858e9, 4.089e9),
    "resnet101": (44_549_160, 7.570e9, 7.801e9),
    "resnet152": (60_192_808, 11.282e9, 11.514e9),
}
# PAPER.md Table 6 rows: depth -> (params, option A, exact; multiply-adds).
CIFAR = {20: (269_722, 40.55e6), 32: (464_154, 68.86e6), 44: (658_586, 97.17e6),
         56: (853_018, 125.49e6), 110: (1_727_962, 252.89e6), 1202: (19_421_274, 2829.24e6)}


def params_of(name, image_size, **kw):
    model = create_model(name, **kw)
    return count_params(abstract_variables(model, (1, image_size, image_size, 3))["params"])


@pytest.mark.parametrize("name", sorted(IMAGENET))
def test_imagenet_params_and_macs(name):
    """Slow: traces each ImageNet net 4 times (parameters and multiply-adds, v1 and v1.5
    strides)."""
    params, macs_v1, macs_v15 = IMAGENET[name]
    assert params_of(name, 224) == params
    assert count_macs(create_model(name)) == pytest.approx(macs_v1, rel=5e-3)
    v15 = create_model(name, bottleneck_stride="v1.5")
    assert count_macs(v15) == pytest.approx(macs_v15, rel=5e-3)
    # the stride's position moves compute, never parameters
    assert params_of(name, 224, bottleneck_stride="v1.5") == params


@pytest.mark.parametrize("depth", sorted(CIFAR))
def test_cifar_params_and_macs(depth):
    params, macs = CIFAR[depth]
    name = f"cifar_resnet{depth}"
    # ResNet-1202 counted as its scan_blocks form (traced in seconds, not a minute): the same
    # network, parameters and multiply-adds (test_resnet.py::test_scan_blocks_is_the_same_network)
    kw = {"scan_blocks": True} if depth > 200 else {}
    assert params_of(name, 32, **kw) == params
    assert count_macs(create_model(name, **kw), (1, 32, 32, 3)) == pytest.approx(macs, rel=5e-3)
    # option A adds no parameters: the ResNet and its plain twin are the same size
    assert params_of(f"cifar_plain{depth}", 32, **kw) == params


def test_imagenet_plain_twin_has_no_projection_params():
    # ResNet-34 B has 3 projection shortcuts (conv 1x1 + BN) that plain-34 lacks.
    projections = sum(c_in * c_out + 2 * c_out for c_in, c_out in [(64, 128), (128, 256),
                                                                       (256, 512)])
    assert params_of("resnet34", 224) - params_of("plain34", 224) == projections
    assert params_of("resnet34", 224, shortcut="A") == params_of("plain34", 224)


def test_shortcut_options_order_by_projection_weights():
    a, b, c = (params_of("resnet34", 224, shortcut=s) for s in "ABC")
    # B adds the 3 down-sampling projections; C adds one for each of the other 13 blocks too.
    assert b - a == sum(ci * co + 2 * co for ci, co in [(64, 128), (128, 256), (256, 512)])
    identity_blocks = [(64, 3), (128, 3), (256, 5), (512, 2)]  # (width, blocks without one)
    assert c - b == sum(n * (w * w + 2 * w) for w, n in identity_blocks)
    ca, cb, cc = (params_of("cifar_resnet20", 32, shortcut=s) for s in "ABC")
    assert ca < cb < cc


def test_macs_scale_with_input_size_and_width():
    model = create_model("resnet18", num_classes=10)
    # convs scale with pixels (the fc does not): 448x448 is 4x the conv work of 224x224
    fc = 512 * 10
    assert count_macs(model, (1, 448, 448, 3)) - fc == 4 * (count_macs(model) - fc)
    narrow = count_params(abstract_variables(create_model("cifar_resnet20", width=8),
                                             (1, 32, 32, 3))["params"])
    assert narrow < 269_722 / 3

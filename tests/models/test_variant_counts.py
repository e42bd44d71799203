"""Counts of the 2016 paper's variants: by hand for small nets, its stated sizes for
ResNet-164 and ResNet-1001 (CIFAR-10), and ResNet-1001 built and lowered with scan_blocks.
Every count is abstract (jax.eval_shape): nothing is allocated."""
import jax
import jax.numpy as jnp
from resnet_jax import count_macs, count_params, create_model
from resnet_jax.models import abstract_variables, count_bn_params


def params_of(name, size=32, **kw):
    return count_params(abstract_variables(create_model(name, **kw), (1, size, size, 3))["params"])


def conv(k, c_in, c_out):
    return k * k * c_in * c_out


def bn(c):
    return 2 * c


# cifar_resnet8 at width 4: stem 3x3 conv 3->4 + BN, units 4->4, 4->8 (/2), 8->16 (/2), fc 16->10.
STEM = conv(3, 3, 4) + bn(4)
FC = 16 * 10 + 10
UNITS = [(4, 4), (4, 8), (8, 16)]  # (in, out) channels of the three basic units
POST = STEM + sum(conv(3, i, o) + bn(o) + conv(3, o, o) + bn(o) for i, o in UNITS) + FC


def test_hand_count_post_and_its_moved_bn_twins():
    assert POST == 5006
    # BN after addition, ReLU before addition, ReLU-only pre-activation: the same layers,
    # a BN moved or a ReLU added
    for unit in ("post", "bn_after_add", "relu_before_add", "relu_preact"):
        assert params_of("cifar_resnet8", width=4, unit=unit) == POST


def test_hand_count_full_preactivation():
    # first unit: its bn1 is the stem's BN; the others: BN of the input before conv1, BN of
    # the width before conv2; then BN-ReLU before the pool
    preact = (STEM + conv(3, 4, 4) + bn(4) + conv(3, 4, 4)
              + sum(bn(i) + conv(3, i, o) + bn(o) + conv(3, o, o) for i, o in UNITS[1:])
              + bn(16) + FC)
    assert preact == POST == 5006  # (equal for option A by a coincidence: -8 -8 -16 +32 BN)
    assert params_of("cifar_resnet8", width=4, unit="preact") == preact
    # option B: post projections are conv + BN, pre-activation ones a bare conv
    projections = conv(1, 4, 8) + conv(1, 8, 16)
    assert params_of("cifar_resnet8", width=4, shortcut="B") == POST + projections + bn(8) + bn(16)
    assert params_of("cifar_resnet8", width=4, shortcut="B", unit="preact") == preact + projections


def test_hand_count_shortcut_variants():
    gates = sum(conv(1, i, o) + o for i, o in UNITS)  # a 1x1 conv with bias per unit
    assert gates == 20 + 40 + 144
    for variant in ("exclusive_gate", "shortcut_gate"):
        assert params_of("cifar_resnet8", width=4, shortcut_variant=variant) == POST + gates
    for variant in ("scale", "dropout"):
        assert params_of("cifar_resnet8", width=4, shortcut_variant=variant) == POST
    # the paper's 1x1-conv shortcut = option C: conv + BN on every unit
    assert params_of("cifar_resnet8", width=4, shortcut="C") == POST + sum(
        conv(1, i, o) + bn(o) for i, o in UNITS)
    # a gate's multiply-adds: its 1x1 conv at each unit's output size (32, 16, 8 at 32x32)
    gate_macs = 32 * 32 * 4 * 4 + 16 * 16 * 4 * 8 + 8 * 8 * 8 * 16
    shape = (1, 32, 32, 3)
    assert (count_macs(create_model("cifar_resnet8", width=4,
                                    shortcut_variant="exclusive_gate"), shape)
            - count_macs(create_model("cifar_resnet8", width=4), shape)) == gate_macs == 32768


def bottleneck_count(n, width=16, preact=True, classes=10):
    """A CIFAR bottleneck ResNet of 9n+2 layers, counted by hand: stem 3x3 conv 3->w (+ BN),
    three stages of n units (w_i = w * 2**i in the middle, 4 w_i out; projections where the
    shape changes), fc. Pre-activation: BN before each conv (the first unit's first BN is
    the stem's), bare projections, a last BN; post: BN after each conv and projection."""
    total = conv(3, 3, width) + bn(width)
    c_in = width
    for i in range(3):
        w = width * 2 ** i
        for j in range(n):
            convs = conv(1, c_in, w) + conv(3, w, w) + conv(1, w, 4 * w)
            if preact:
                bns = (bn(c_in) if (i, j) != (0, 0) else 0) + bn(w) + bn(w)
            else:
                bns = bn(w) + bn(w) + bn(4 * w)
            project = conv(1, c_in, 4 * w) + (0 if preact else bn(4 * w)) if j == 0 else 0
            total += convs + bns + project
            c_in = 4 * w
    return total + (bn(c_in) if preact else 0) + c_in * classes + classes


def test_hand_count_bottleneck_cifar():
    assert bottleneck_count(1, width=4) == 8750
    assert params_of("cifar_resnet11", block="bottleneck", width=4, unit="preact") == 8750
    assert bottleneck_count(1, width=4, preact=False) == 8974
    assert params_of("cifar_resnet11", block="bottleneck", width=4) == 8974


def paper_round(n):
    """Millions with one decimal, as the paper prints them (1.7M, 10.2M)."""
    return round(n / 1e6, 1)


def test_resnet164_and_1001_match_the_paper():
    """The 2016 paper: ResNet-164 1.7M, ResNet-1001 10.2M parameters (pre-activation,
    CIFAR-10). Its 10.2M counts the conv and fc weights: with BN's 149,216 scales and
    shifts the total rounds to 10.3M."""
    for depth, n, paper in ((164, 18, 1.7), (1001, 111, 10.2)):
        model = create_model(f"cifar_resnet{depth}", block="bottleneck", unit="preact",
                             scan_blocks=True)
        params = abstract_variables(model, (1, 32, 32, 3))["params"]
        total, norms = count_params(params), count_bn_params(params)
        assert total == bottleneck_count(n)
        assert paper_round(total - norms) == paper
    assert (total, norms) == (10_327_706, 149_216) and paper_round(total) == 10.3
    assert bottleneck_count(18) == 1_703_258
    assert paper_round(params_of("cifar_resnet110", unit="preact")) == 1.7  # basic, 6n+2


def test_resnet1001_lowers_its_training_step_with_scan_blocks():
    """Lowering only: the scanned net traces 3 first units and 3 scan bodies, not 333 units
    (compiling it on CPU is what benchmarks/README.md times)."""
    model = create_model("cifar_resnet1001", block="bottleneck", unit="preact",
                         scan_blocks=True, width=4)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    variables = abstract_variables(model, x.shape)

    def loss(v, images):
        logits, _ = model.apply(v, images, train=True, mutable=["batch_stats"])
        return jnp.mean(logits)

    text = jax.jit(jax.grad(loss)).lower(variables, x).as_text()
    assert text.count("stablehlo.while") >= 3  # one loop per stage's scanned units


def test_resnet200_preact_builds_with_the_stems_activation_shared():
    model = create_model("resnet200", unit="preact")
    assert model.block == "bottleneck" and model.stage_sizes == (3, 24, 36, 3)
    params = abstract_variables(model, (1, 64, 64, 3))["params"]
    # conv-BN-ReLU-maxpool stem whose activation the first unit shares; BN-ReLU before the pool
    assert "bn1" in params and "bn1" not in params["layer1_0"] and "bn1" in params["layer1_1"]
    assert params["bn_final"]["scale"].shape == (2048,)
    assert set(params["layer2_0"]["downsample"]) == {"conv"}

"""Shapes, shortcuts, BN behaviour, dtypes and the constructor's validation."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import (ResNet, conv3x3_responses, count_macs, create_model, model_name,
                        parse_model_name, stage_shapes)
from resnet_jax.models import Shortcut, stack_blocks, unstack_blocks, zero_pad_shortcut


def key(seed: int) -> jax.Array:
    """An 'rbg' key: XLA:CPU compiles its random bits several times faster than threefry's,
    and an initializer compiles them anew for every parameter shape."""
    return jax.random.key(seed, impl="rbg")


def test_imagenet_stage_shapes_follow_table1():
    shapes = stage_shapes(create_model("resnet50"), (2, 224, 224, 3))
    chex.assert_equal(shapes["stem"], (2, 56, 56, 64))
    chex.assert_equal(shapes["layer1"], (2, 56, 56, 256))
    chex.assert_equal(shapes["layer2"], (2, 28, 28, 512))
    chex.assert_equal(shapes["layer3"], (2, 14, 14, 1024))
    chex.assert_equal(shapes["layer4"], (2, 7, 7, 2048))
    basic = stage_shapes(create_model("resnet18", bottleneck_stride="v1.5"), (1, 224, 224, 3))
    assert [basic[f"layer{i}"][1:] for i in range(1, 5)] == [
        (56, 56, 64), (28, 28, 128), (14, 14, 256), (7, 7, 512)]


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_plain20"])
def test_cifar_stage_shapes(name):
    shapes = stage_shapes(create_model(name), (3, 32, 32, 3))
    assert [shapes[f"layer{i}"] for i in (1, 2, 3)] == [
        (3, 32, 32, 16), (3, 16, 16, 32), (3, 8, 8, 64)]


def test_any_input_size_gives_logits():
    model = create_model("cifar_resnet8", width=4, num_classes=7)
    x = jnp.ones((2, 20, 28, 3))
    variables = model.init(key(0), x)
    logits = model.apply(variables, x)
    chex.assert_shape(logits, (2, 7))
    chex.assert_type(logits, jnp.float32)


def test_option_a_is_subsample_plus_zero_channels():
    x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
    y = zero_pad_shortcut(x, out_channels=5, stride=2)
    chex.assert_shape(y, (2, 2, 2, 5))
    np.testing.assert_array_equal(y[..., :3], x[:, ::2, ::2, :])
    np.testing.assert_array_equal(y[..., 3:], 0.0)
    # as a module it has no parameters, and identity when the shape does not change
    sc = Shortcut(5, 2, "A", conv=None, norm=None)
    variables = sc.init(key(0), x)
    assert not jax.tree.leaves(variables)
    np.testing.assert_array_equal(sc.apply(variables, x), y)
    same = Shortcut(3, 1, "A", conv=None, norm=None)
    np.testing.assert_array_equal(same.apply({}, x), x)


def test_option_a_block_in_the_network_uses_the_zero_pad_shortcut():
    # With the residual branch silenced (zero-init last BN scale), a block's output is
    # ReLU(shortcut(x)): for option A at a stage boundary, ReLU(x[::2, ::2]) padded with zeros.
    model = create_model("cifar_resnet8", width=4, zero_init_residual=True)
    x = jax.random.normal(key(1), (2, 16, 16, 3))
    variables = model.init(key(0), x)
    _, state = model.apply(variables, x, mutable=["intermediates"])
    stage1 = state["intermediates"]["layer1"][0]
    stage2 = state["intermediates"]["layer2"][0]
    expected = jax.nn.relu(zero_pad_shortcut(stage1, 8, 2))
    np.testing.assert_allclose(stage2, expected, atol=1e-6)


def test_plain_net_has_no_shortcut():
    model = create_model("cifar_plain8", width=4, zero_init_residual=True)
    x = jax.random.normal(key(1), (2, 8, 8, 3))
    variables = model.init(key(0), x)
    _, state = model.apply(variables, x, mutable=["intermediates"])
    # zero last-BN scale and no shortcut: each block outputs ReLU(bias) = 0
    np.testing.assert_array_equal(state["intermediates"]["layer3"][0], 0.0)


def test_train_mode_updates_batch_stats_eval_mode_uses_them():
    model = create_model("cifar_resnet8", width=4)
    x = 3.0 + 2.0 * jax.random.normal(key(1), (8, 8, 8, 3))
    variables = model.init(key(0), x)
    stats0 = variables["batch_stats"]
    logits_train, new = model.apply(variables, x, train=True, mutable=["batch_stats"])
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), stats0, new["batch_stats"])
    assert all(jax.tree.leaves(changed))
    # the stem BN's running mean moves 10% of the way to the batch mean of its input
    conv1 = jax.lax.conv_general_dilated(
        x, variables["params"]["conv1"]["kernel"], (1, 1), ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(new["batch_stats"]["bn1"]["mean"],
                               0.1 * conv1.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    # eval mode: no mutation possible, output depends on the running statistics
    out_a = model.apply(variables, x, train=False)
    out_b = model.apply({**variables, **new}, x, train=False)
    assert not np.allclose(out_a, out_b)
    # eval output of one example does not depend on the rest of the batch; train output does
    np.testing.assert_allclose(model.apply(variables, x[:1]), out_a[:1], rtol=1e-5, atol=1e-5)
    logits_one, _ = model.apply(variables, x[:1], train=True, mutable=["batch_stats"])
    assert not np.allclose(logits_one, logits_train[:1], atol=1e-3)


def test_bn_groups_normalize_each_group_alone():
    model = create_model("cifar_resnet8", width=4, bn_num_groups=2)
    ref = create_model("cifar_resnet8", width=4)
    x = jax.random.normal(key(2), (8, 8, 8, 3)) * jnp.arange(1, 9)[:, None, None, None]
    variables = ref.init(key(0), x)
    out, new = model.apply(variables, x, train=True, mutable=["batch_stats"])
    halves = [ref.apply(variables, h, train=True, mutable=["batch_stats"]) for h in (x[:4], x[4:])]
    np.testing.assert_allclose(out, jnp.concatenate([h[0] for h in halves]), rtol=2e-4, atol=2e-5)
    mean_of_halves = jax.tree.map(lambda a, b: (a + b) / 2, halves[0][1], halves[1][1])
    chex.assert_trees_all_close(new, mean_of_halves, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="num_groups=2"):
        model.apply(variables, x[:3], train=True, mutable=["batch_stats"])


def test_bfloat16_compute_keeps_float32_params():
    model = create_model("cifar_resnet8", width=4, dtype="bfloat16")
    x = jax.random.normal(key(1), (4, 16, 16, 3))
    variables = model.init(key(0), x)
    assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    logits, new = model.apply(variables, x, train=True, mutable=["batch_stats"])
    chex.assert_type(logits, jnp.float32)
    assert bool(jnp.all(jnp.isfinite(logits)))
    assert {p.dtype for p in jax.tree.leaves(new)} == {jnp.dtype(jnp.float32)}
    # the convs really compute in bfloat16
    jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x))(variables)
    convs = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
    assert not convs or all(e.outvars[0].aval.dtype == jnp.bfloat16 for e in convs)
    assert "bf16" in str(jaxpr)


def test_zero_init_residual_zeroes_last_bn_scale_only():
    # One stage of one bottleneck block, with its projection: what the flag touches.
    v = ResNet(stage_sizes=(1,), block="bottleneck", width=4, zero_init_residual=True).init(
        key(0), jnp.ones((1, 32, 32, 3)))["params"]
    assert float(jnp.abs(v["layer1_0"]["bn3"]["scale"]).max()) == 0.0
    assert float(jnp.abs(v["layer1_0"]["bn2"]["scale"]).min()) == 1.0
    assert float(jnp.abs(v["layer1_0"]["downsample"]["bn"]["scale"]).min()) == 1.0


def test_he_normal_init_std():
    # width 16: layer4 has 128 channels, a 3x3x128x128 kernel (147k draws: the std within
    # 0.2%), instead of drawing all of ResNet-18's 11.7M parameters
    kernel = create_model("resnet18", width=16).init(
        key(0), jnp.ones((1, 32, 32, 3)))["params"]["layer4_1"]["conv2"]["kernel"]
    assert kernel.shape == (3, 3, 128, 128)
    fan_in = 3 * 3 * 128
    assert float(jnp.std(kernel)) == pytest.approx((2.0 / fan_in) ** 0.5, rel=0.02)


def test_conv3x3_responses_one_per_3x3_layer_in_order():
    """Slow: initializes two nets eagerly (a CIFAR net and a bottleneck ResNet-50)."""
    model = create_model("cifar_resnet14", width=4)  # n = 2: 1 + 2*3*2 = 13 3x3 convs
    x = jax.random.normal(key(1), (2, 8, 8, 3))
    variables = model.init(key(0), x)
    responses = conv3x3_responses(model, variables, x)
    assert [r.shape[1:] for r in responses] == (
        [(8, 8, 4)] * 5 + [(4, 4, 8)] * 4 + [(2, 2, 16)] * 4)
    bottleneck = create_model("resnet50", width=8, num_classes=3)
    xb = jnp.ones((1, 32, 32, 3))
    assert len(conv3x3_responses(bottleneck, bottleneck.init(key(0), xb), xb)) == 16


def test_names_round_trip():
    assert model_name("cifar", 110, False) == "cifar_resnet110"
    assert model_name("imagenet", 34, True) == "plain34"
    assert parse_model_name("cifar_plain56") == ("cifar", 56, True)
    assert parse_model_name("resnet152") == ("imagenet", 152, False)


@pytest.mark.parametrize("name, kwargs, message", [
    ("cifar_resnet21", {}, "6n\\+2"),
    ("resnet42", {}, "choose one of \\[18, 34, 50, 101, 152, 200\\]"),
    ("resnet50", {"shortcut": "D"}, "shortcut='D'.*\\['A', 'B', 'C'\\]"),
    ("resnet50", {"bottleneck_stride": "x"}, "bottleneck_stride='x'.*\\['v1', 'v1.5'\\]"),
    ("resnet50", {"dtype": "int8"}, "dtype='int8'.*bfloat16"),
    ("resnet50", {"width": 0}, "width=0"),
    ("vgg16", {}, "model name 'vgg16'"),
])
def test_invalid_requests_name_the_field(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model(name, **kwargs)


def test_unknown_override_lists_allowed():
    with pytest.raises(TypeError, match="shortcuts.*allowed"):
        create_model("resnet50", shortcuts="A")


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_scan_blocks_is_the_same_network(block):
    """Same parameters (stacked), same logits, same BN updates, same 3x3 responses, same
    multiply-adds as the unrolled network (up to float32 reassociation).

    Slow: initializes and runs a net both unrolled and scanned, eagerly, and counts both.
    """
    if block == "basic":
        unrolled = create_model("cifar_resnet20", width=4)
    else:  # a short bottleneck ResNet with projections everywhere
        unrolled = ResNet(stage_sizes=(3, 3), block="bottleneck", width=4, num_classes=10,
                          shortcut="C")
    scanned = unrolled.clone(scan_blocks=True)
    x = jax.random.normal(key(1), (4, 16, 16, 3))
    variables = unrolled.init(key(0), x)
    stacked = stack_blocks(variables, unrolled.stage_sizes)
    chex.assert_trees_all_equal(unstack_blocks(stacked, unrolled.stage_sizes), variables)
    chex.assert_trees_all_equal_shapes(
        stacked, scanned.init(key(0), x))  # the layout scan_blocks creates

    logits_a, upd_a = unrolled.apply(variables, x, train=True, mutable=["batch_stats"])
    logits_b, upd_b = scanned.apply(stacked, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(logits_a, logits_b, rtol=1e-4, atol=1e-4)
    chex.assert_trees_all_close(stack_blocks(upd_a, unrolled.stage_sizes), upd_b,
                                rtol=1e-4, atol=1e-5)
    resp_a = conv3x3_responses(unrolled, variables, x)
    resp_b = conv3x3_responses(scanned, stacked, x)
    assert len(resp_a) == len(resp_b)
    for a, b in zip(resp_a, resp_b, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert count_macs(scanned, x.shape) == count_macs(unrolled, x.shape)

"""The unit and shortcut variants of He et al. 2016 ("Identity Mappings in Deep Residual
Networks"): each unit's formula against a direct implementation written here, the shortcut
variants' formulas, and the equivalences between variants (tiny widths and images)."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import create_model
from resnet_jax.models import BasicBlock, BatchNorm, ShortcutMerge
from resnet_jax.models.resnet import Conv

EPS = 1e-5
# Data from numpy and 'rbg' keys for the initializers: XLA:CPU compiles threefry's random
# draws ~6x slower (tests/train/test_step.py), and these tests only compare nets with nets.
RNG = np.random.default_rng(0)
X = RNG.normal(size=(2, 8, 8, 4)).astype(np.float32)
KEY = jax.random.key(0, impl="rbg")


def randomized(variables, seed=0):
    """Every variable drawn at random (BN variances positive), so no formula passes by
    an identity at init (scale 1, bias 0, mean 0, var 1)."""
    leaves, tree = jax.tree.flatten(variables)
    rng = np.random.default_rng(seed)
    new = [np.abs(rng.normal(size=x.shape)) + 0.5 if x.ndim == 1 else
           0.3 * rng.normal(size=x.shape) for x in leaves]
    return jax.tree.unflatten(tree, [jnp.asarray(x, jnp.float32) for x in new])


def conv(x, kernel, stride=1):
    pad = (kernel.shape[0] - 1) // 2
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def bn(x, v, name):
    p, s = v["params"][name], v["batch_stats"][name]
    return (x - s["mean"]) / jnp.sqrt(s["var"] + EPS) * p["scale"] + p["bias"]


def k(v, name):
    return v["params"][name]["kernel"]


relu = jax.nn.relu

# The 2016 paper's Fig. 4 (a)-(e), written out for a basic unit with an identity shortcut.
UNIT_FORMULAS = {
    "post": lambda v, x: relu(bn(conv(relu(bn(conv(x, k(v, "conv1")), v, "bn1")),
                                      k(v, "conv2")), v, "bn2") + x),
    "bn_after_add": lambda v, x: relu(bn(conv(relu(bn(conv(x, k(v, "conv1")), v, "bn1")),
                                              k(v, "conv2")) + x, v, "bn2")),
    "relu_before_add": lambda v, x: relu(bn(conv(relu(bn(conv(x, k(v, "conv1")), v, "bn1")),
                                                 k(v, "conv2")), v, "bn2")) + x,
    "relu_preact": lambda v, x: bn(conv(relu(bn(conv(relu(x), k(v, "conv1")), v, "bn1")),
                                        k(v, "conv2")), v, "bn2") + x,
    "preact": lambda v, x: conv(relu(bn(conv(relu(bn(x, v, "bn1")), k(v, "conv1")),
                                        v, "bn2")), k(v, "conv2")) + x,
}


def unit(stride=1, width=4, **kw):
    norm = functools.partial(BatchNorm, use_running_average=True, epsilon=EPS)
    return BasicBlock(width=width, stride=stride, conv=Conv, norm=norm, **kw)


@pytest.mark.parametrize("name", sorted(UNIT_FORMULAS))
def test_each_unit_computes_its_formula(name):
    block = unit(unit=name)
    v = randomized(block.init(KEY, X))
    np.testing.assert_allclose(block.apply(v, X), UNIT_FORMULAS[name](v, X),
                               rtol=1e-5, atol=1e-5)


def test_preact_projection_reads_the_preactivated_input_and_has_no_bn():
    block = unit(stride=2, width=8, unit="preact", shortcut="B")
    v = randomized(block.init(KEY, X))
    assert set(v["params"]["downsample"]) == {"conv"}
    a = relu(bn(X, v, "bn1"))
    want = (conv(relu(bn(conv(a, k(v, "conv1"), 2), v, "bn2")), k(v, "conv2"))
            + conv(a, v["params"]["downsample"]["conv"]["kernel"], 2))
    np.testing.assert_allclose(block.apply(v, X), want, rtol=1e-5, atol=1e-5)


def test_first_preact_unit_takes_the_stems_activation():
    block = unit(unit="preact", first=True)
    v = randomized(block.init(KEY, X))
    assert "bn1" not in v["params"]
    want = conv(relu(bn(conv(X, k(v, "conv1")), v, "bn2")), k(v, "conv2")) + X
    np.testing.assert_allclose(block.apply(v, X), want, rtol=1e-5, atol=1e-5)


def gate(v, x):
    g = v["params"]["merge"]["gate"]
    return jax.nn.sigmoid(conv(x, g["kernel"]) + g["bias"])


def residual(v, x):  # F of a post-activation basic unit
    return bn(conv(relu(bn(conv(x, k(v, "conv1")), v, "bn1")), k(v, "conv2")), v, "bn2")


# The 2016 paper's Fig. 2, on a post-activation unit: relu(combine(F(x), x)).
VARIANT_FORMULAS = {
    "scale": ({"shortcut_scale": 0.5, "residual_scale": 2.0},
              lambda v, x: relu(2.0 * residual(v, x) + 0.5 * x)),
    "exclusive_gate": ({"gate_bias": -1.0}, lambda v, x: relu(
        gate(v, x) * residual(v, x) + (1 - gate(v, x)) * x)),
    "shortcut_gate": ({"gate_bias": -1.0}, lambda v, x: relu(
        residual(v, x) + (1 - gate(v, x)) * x)),
}


@pytest.mark.parametrize("name", sorted(VARIANT_FORMULAS))
def test_each_shortcut_variant_computes_its_formula(name):
    options, formula = VARIANT_FORMULAS[name]
    merge = functools.partial(ShortcutMerge, variant=name, conv=Conv, **options)
    block = unit(merge=merge)
    v = randomized(block.init(KEY, X))
    np.testing.assert_allclose(block.apply(v, X), formula(v, X), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rate", [0.5, 0.3])
def test_dropout_merge_is_the_papers_scale_of_expectation_1_minus_rate(rate):
    """He et al. 2016, Sec. 3.1 / Table 1 ("dropout shortcut 1-0.5"): dropout on the shortcut
    imposes a scale lambda with expectation 1 - rate (0.5, like constant scaling by 0.5). So
    at training each value of h is kept as it is (not rescaled by 1 / (1 - rate), as
    nn.Dropout does: expectation 1) with probability 1 - rate, and at evaluation h is scaled
    by its expectation, 1 - rate."""
    r, h = RNG.normal(size=(2, 2, 6, 6, 4)).astype(np.float32)
    merge = ShortcutMerge("dropout", 1, Conv, dropout_rate=rate, deterministic=False)
    out = merge.apply({}, r, h, h, rngs={"dropout": jax.random.key(3, impl="rbg")})
    kept = np.asarray(out) == r + h
    np.testing.assert_array_equal(np.asarray(out)[~kept], r[~kept])
    assert abs(kept.mean() - (1 - rate)) < 0.1  # 288 values
    eval_merge = merge.clone(deterministic=True)
    np.testing.assert_array_equal(eval_merge.apply({}, r, h, h),
                                  r + h * np.float32(1 - rate))


def net(**kw):
    return create_model("cifar_resnet8", width=4, **kw)


IMAGES = RNG.normal(size=(4, 16, 16, 3)).astype(np.float32)


def test_dropout_shortcut_draws_from_the_given_key_and_only_in_training():
    model = net(shortcut_variant="dropout")
    v = model.init(KEY, IMAGES)
    run = jax.jit(lambda key: model.apply(v, IMAGES, train=True, mutable=["batch_stats"],
                                          rngs={"dropout": key})[0])
    key = functools.partial(jax.random.key, impl="rbg")
    # (the same key's masks again: tests/train/test_loop_resume.py resumes a dropout run)
    assert not np.allclose(run(key(5)), run(key(6)))
    # eval: no key needed, the shortcut scaled by its expectation 0.5: the net of constant
    # shortcut scaling 0.5 (Table 1's other row of lambda 0.5), bitwise
    scaled = net(shortcut_variant="scale", shortcut_scale=0.5)
    np.testing.assert_array_equal(model.apply(v, IMAGES), scaled.apply(v, IMAGES))


def test_scale_one_is_the_identity_shortcut_bitwise():
    ident, scaled = net(), net(shortcut_variant="scale")
    v = ident.init(KEY, IMAGES)
    chex.assert_trees_all_equal(scaled.init(KEY, IMAGES), v)
    np.testing.assert_array_equal(scaled.apply(v, IMAGES), ident.apply(v, IMAGES))
    chex.assert_trees_all_equal(
        scaled.apply(v, IMAGES, train=True, mutable=["batch_stats"]),
        ident.apply(v, IMAGES, train=True, mutable=["batch_stats"]))


def _without_gates(variables):
    return {c: {m: {k: w for k, w in blk.items() if k != "merge"} if isinstance(blk, dict)
                else blk for m, blk in tree.items()} for c, tree in variables.items()}


@pytest.mark.parametrize("variant", ["exclusive_gate", "shortcut_gate"])
def test_gates_at_extreme_biases_are_the_shortcut_or_the_residual(variant):
    """b_g = -100 closes the gate (g = 0): exclusive gating passes the shortcut alone (the
    identity net with its residual branches silenced), shortcut-only gating is the identity
    net; b_g = +100 opens it (g = 1): both are the residual branch alone (the plain twin)."""
    closed = net(shortcut_variant=variant, gate_bias=-100.0)
    opened = net(shortcut_variant=variant, gate_bias=100.0)
    v = closed.init(KEY, IMAGES)
    np.testing.assert_array_equal(v["params"]["layer2_0"]["merge"]["gate"]["bias"],
                                  np.full(8, -100.0, np.float32))  # b_g is the gates' bias
    rest = _without_gates(v)
    shortcut_only = net(zero_init_residual=True)
    silenced = {**rest, "params": jax.tree.map(lambda a, b: b, rest["params"], shortcut_only.init(
        KEY, IMAGES)["params"])}
    want_closed = (shortcut_only.apply(silenced, IMAGES) if variant == "exclusive_gate"
                   else net().apply(rest, IMAGES))
    np.testing.assert_allclose(closed.apply(v, IMAGES), want_closed, rtol=1e-5, atol=1e-5)
    plain = create_model("cifar_plain8", width=4)
    v_open = opened.init(KEY, IMAGES)  # the same variables but the gate biases
    chex.assert_trees_all_equal(_without_gates(v_open), rest)
    np.testing.assert_allclose(opened.apply(v_open, IMAGES), plain.apply(rest, IMAGES),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, kwargs, message", [
    ("cifar_resnet8", {"unit": "pre"}, "unit='pre'.*'post', 'bn_after_add', 'relu_before_add', "
                                       "'relu_preact', 'preact'"),
    ("cifar_resnet8", {"shortcut_variant": "gated"}, "shortcut_variant='gated'.*'identity'"),
    ("cifar_resnet8", {"shortcut_variant": "scale", "shortcut_scale": 0.0},
     "shortcut_scale=0.0 must be > 0"),
    ("cifar_resnet8", {"shortcut_variant": "scale", "residual_scale": -1.0},
     "residual_scale=-1.0 must be > 0"),
    ("cifar_resnet8", {"shortcut_variant": "dropout", "shortcut_dropout": 1.0},
     "shortcut_dropout=1.0 must be in \\[0, 1\\)"),
    ("cifar_plain8", {"shortcut_variant": "exclusive_gate"},
     "shortcut_variant='exclusive_gate' with plain=True.*allowed with plain: 'identity'"),
    ("cifar_resnet8", {"gate_bias": -6.0}, "gate_bias=-6.0 acts only with shortcut_variant in "
                                           "\\['exclusive_gate', 'shortcut_gate'\\]"),
    ("cifar_resnet8", {"unit": "preact", "zero_init_residual": True},
     "zero_init_residual=True with unit='preact'"),
    ("cifar_resnet32", {"block": "bottleneck"}, "depth=32.*9n\\+2"),
    ("cifar_resnet164", {"block": "bottlenek"}, "block='bottlenek'.*'bottleneck'"),
    ("resnet50", {"block": "basic"}, "block='basic' does not fit ImageNet depth 50"),
])
def test_bad_variant_options_are_one_line_naming_the_field(name, kwargs, message):
    with pytest.raises(ValueError, match=message) as raised:
        create_model(name, **kwargs)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("unit_name", ["bn_after_add", "preact"])
def test_fig7_still_sees_every_3x3_layer(unit_name):
    """Units whose last conv has no BN of its own before the addition still give one
    response per 3x3 layer, in order (the analysis of Fig. 7 counts on it)."""
    from resnet_jax import conv3x3_responses
    model = net(unit=unit_name)
    x = IMAGES[:2, :8, :8]
    responses = conv3x3_responses(model, model.init(KEY, x), x)
    assert [r.shape[1:] for r in responses] == [(8, 8, 4)] * 3 + [(4, 4, 8)] * 2 + [
        (2, 2, 16)] * 2

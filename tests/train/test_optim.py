"""Schedules hit the paper's boundaries at the right step; weight decay and LARS do what they
say."""
import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from resnet_jax.train import optim


def optim_config(**overrides) -> ml_collections.ConfigDict:
    """The paper's CIFAR-10 recipe (lr 0.1, /10 at 32k and 48k iterations), then overrides."""
    c = ml_collections.ConfigDict(dict(
        name="sgd", lr=0.1, lr_scaling="none", base_batch_size=256, momentum=0.9,
        nesterov=False, weight_decay=1e-4, decay_bn_and_bias=True, schedule="piecewise",
        schedule_unit="steps", boundaries=[32000, 48000], decay_factor=0.1, warmup="none",
        warmup_length=0, warmup_lr=0.0, label_smoothing=0.0))
    c.update(overrides)
    return c


def lrs(schedule, steps):
    return np.array([float(schedule(jnp.asarray(s))) for s in steps])


def test_cifar_paper_schedule_boundaries():
    s = optim.make_schedule(optim_config(), steps_per_epoch=352)
    got = lrs(s, [0, 31999, 32000, 47999, 48000, 63999])
    np.testing.assert_allclose(got, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)


def test_resnet110_constant_warmup_then_paper_schedule():
    c = optim_config(warmup="constant", warmup_length=400, warmup_lr=0.01)
    s = optim.make_schedule(c, steps_per_epoch=352)
    got = lrs(s, [0, 399, 400, 31999, 32000, 48000])
    np.testing.assert_allclose(got, [0.01, 0.01, 0.1, 0.1, 0.01, 0.001], rtol=1e-6)


def test_imagenet_epoch_boundaries():
    spe = 5005  # 1,281,167 / 256 rounded up
    c = optim_config(schedule_unit="epochs", boundaries=[30, 60])
    s = optim.make_schedule(c, steps_per_epoch=spe)
    got = lrs(s, [0, 30 * spe - 1, 30 * spe, 60 * spe - 1, 60 * spe, 90 * spe - 1])
    np.testing.assert_allclose(got, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)


def test_linear_scaling_and_linear_warmup():
    spe = 156  # batch 8192
    c = optim_config(lr_scaling="linear", schedule_unit="epochs", boundaries=[30, 60],
                     warmup="linear", warmup_length=5, warmup_lr=0.1)
    assert optim.base_learning_rate(c, 8192) == pytest.approx(3.2)
    s = optim.make_schedule(c, steps_per_epoch=spe, batch_size=8192)
    w = 5 * spe
    got = lrs(s, [0, w // 2, w, 30 * spe - 1, 30 * spe])
    np.testing.assert_allclose(got, [0.1, 0.1 + 3.1 / 2, 3.2, 3.2, 0.32], rtol=1e-5)


def test_cosine_with_warmup():
    c = optim_config(schedule="cosine", warmup="linear", warmup_length=100, warmup_lr=0.0)
    s = optim.make_schedule(c, steps_per_epoch=10, num_steps=1100)
    got = lrs(s, [0, 50, 100, 600, 1100])
    np.testing.assert_allclose(got, [0.0, 0.05, 0.1, 0.05, 0.0], atol=1e-7)


@pytest.mark.parametrize("field,value", [("schedule", "step"), ("warmup", "cosine"),
                                         ("schedule_unit", "iters"), ("lr_scaling", "sqrt")])
def test_bad_choice_names_field_and_allowed(field, value):
    with pytest.raises(ValueError, match=f"optim.{field}=.*allowed values: "):
        optim.make_schedule(optim_config(**{field: value}), steps_per_epoch=10)


def test_missing_inputs_are_errors():
    with pytest.raises(ValueError, match="batch_size"):
        optim.make_schedule(optim_config(lr_scaling="linear"), 10)
    with pytest.raises(ValueError, match="num_steps"):
        optim.make_schedule(optim_config(schedule="cosine"), 10)
    with pytest.raises(ValueError, match="optim.name"):
        optim.make_optimizer(optim_config(name="adam"), 10)


def _params():
    return {"conv": {"kernel": jnp.full((3, 3, 2, 4), 2.0)},
            "bn": {"scale": jnp.full((4,), 2.0), "bias": jnp.full((4,), 2.0)},
            "fc": {"kernel": jnp.full((4, 10), 2.0), "bias": jnp.full((10,), 2.0)}}


def test_decay_mask_excludes_bn_and_bias_when_asked():
    mask = optim.decay_mask(_params(), decay_bn_and_bias=False)
    assert mask == {"conv": {"kernel": True}, "bn": {"scale": False, "bias": False},
                    "fc": {"kernel": True, "bias": False}}
    assert all(jax.tree.leaves(optim.decay_mask(_params(), decay_bn_and_bias=True)))


@pytest.mark.parametrize("decay_bn_and_bias", [True, False])
def test_weight_decay_is_l2_on_the_gradient(decay_bn_and_bias):
    """Zero gradient: each decayed weight moves by -lr * wd * w, the others not at all."""
    c = optim_config(weight_decay=0.5, decay_bn_and_bias=decay_bn_and_bias)
    tx = optim.make_optimizer(c, steps_per_epoch=10)
    params = _params()
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    moved = -0.1 * 0.5 * 2.0
    assert float(updates["conv"]["kernel"][0, 0, 0, 0]) == pytest.approx(moved)
    assert float(updates["fc"]["kernel"][0, 0]) == pytest.approx(moved)
    for name in ("scale", "bias"):
        expect = moved if decay_bn_and_bias else 0.0
        assert float(updates["bn"][name][0]) == pytest.approx(expect)
    assert float(updates["fc"]["bias"][0]) == pytest.approx(moved if decay_bn_and_bias else 0.0)


def test_sgd_momentum_matches_pytorch_form_and_reports_lr():
    """buf = m*buf + g + wd*w; w -= lr*buf (Caffe/PyTorch SGD), lr from the schedule."""
    c = optim_config(weight_decay=0.01, boundaries=[1], decay_factor=0.5)
    tx = optim.make_optimizer(c, steps_per_epoch=10)
    w = jnp.array([1.0, -2.0])
    g1, g2 = jnp.array([0.3, 0.1]), jnp.array([-0.2, 0.4])
    state = tx.init(w)
    u, state = tx.update(g1, state, w)
    assert float(optim.current_lr(state)) == pytest.approx(0.1)
    w1 = w + u
    u, state = tx.update(g2, state, w1)
    assert float(optim.current_lr(state)) == pytest.approx(0.05)
    w2 = w1 + u
    buf1 = g1 + 0.01 * w
    ref1 = w - 0.1 * buf1
    ref2 = ref1 - 0.05 * (0.9 * buf1 + g2 + 0.01 * ref1)
    np.testing.assert_allclose(w1, ref1, rtol=1e-6)
    np.testing.assert_allclose(w2, ref2, rtol=1e-6)


def test_nesterov_differs_from_heavy_ball():
    w, g = jnp.array([1.0]), jnp.array([1.0])
    outs = []
    for nesterov in (False, True):
        tx = optim.make_optimizer(optim_config(nesterov=nesterov, weight_decay=0.0), 10)
        u, _ = tx.update(g, tx.init(w), w)
        outs.append(float(u[0]))
    assert outs[0] == pytest.approx(-0.1)
    assert outs[1] == pytest.approx(-0.1 * 1.9)  # g + m * (m*0 + g)


def test_lars_trust_ratio_on_kernels_not_on_bn():
    c = optim_config(name="lars", weight_decay=1e-4, decay_bn_and_bias=False)
    tx = optim.make_optimizer(c, steps_per_epoch=10)
    params = _params()
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    w = params["conv"]["kernel"]
    # Kernel: the step has norm lr * trust_coefficient * ||w||, whatever the gradient's size.
    np.testing.assert_allclose(optax.tree.norm(updates["conv"]["kernel"]),
                               0.1 * 1e-3 * jnp.linalg.norm(w), rtol=1e-5)
    # BN: masked out of decay and trust ratio, so a plain -lr * g.
    np.testing.assert_allclose(updates["bn"]["scale"], -0.1 * 0.5, rtol=1e-6)
    assert float(optim.current_lr(tx.init(params))) == pytest.approx(0.1)


@functools.lru_cache(maxsize=None)
def _unrolled_and_scanned():
    """cifar_resnet20 (3 blocks per stage) params, unrolled and in the scan_blocks layout,
    with gradients of the same values in both layouts ('rbg' keys: XLA:CPU compiles
    threefry's draws anew for every parameter shape, several times slower)."""
    import resnet_jax
    from resnet_jax.models import stack_blocks
    model = resnet_jax.create_model("cifar_resnet20", width=4)
    params = model.init(jax.random.key(0, impl="rbg"), jnp.zeros((1, 8, 8, 3)))["params"]
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1, impl="rbg"), len(leaves))
    grads = jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape) for k, x in
                                         zip(keys, leaves)])
    stack = lambda t: stack_blocks({"params": t}, model.stage_sizes)["params"]  # noqa: E731
    return (params, grads), (stack(params), stack(grads)), stack


@pytest.mark.parametrize("name", ["sgd", "lars"])
@pytest.mark.parametrize("decay_bn_and_bias", [False, True])
def test_updates_are_the_same_with_and_without_scan_blocks(name, decay_bn_and_bias):
    """Masks and LARS trust ratios go by the layer, not by the stacked array's shape.

    Slow: the first case initializes ResNet-20 and draws its gradients eagerly (shared by the
    others).
    """
    (p, g), (sp, sg), stack = _unrolled_and_scanned()
    tx = optim.make_optimizer(optim_config(name=name, weight_decay=1e-2,
                                           decay_bn_and_bias=decay_bn_and_bias), 10)
    state, sstate = tx.init(p), tx.init(sp)
    for _ in range(2):  # the second update goes through the momentum too
        u, state = tx.update(g, state, p)
        su, sstate = tx.update(sg, sstate, sp)
        chex.assert_trees_all_close(stack(u), su, rtol=1e-6, atol=1e-9)


def test_decay_mask_sees_stacked_bn_as_vectors():
    _, (sp, _), _ = _unrolled_and_scanned()
    mask = optim.decay_mask(sp, decay_bn_and_bias=False)
    block = mask["layer2_rest"]["block"]
    assert sp["layer2_rest"]["block"]["bn1"]["scale"].ndim == 2       # (blocks, C)
    assert block["bn1"]["scale"] is False and block["bn1"]["bias"] is False
    assert block["conv1"]["kernel"] is True

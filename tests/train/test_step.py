"""The train/eval steps on 8 fake CPU devices: equivalences with 1 device and with hand-made
references for per-device and grouped BatchNorm, scan == step by step, the indexed fast path,
NaN handling, masked evaluation, bfloat16.

The model is a tiny CIFAR ResNet-8 (width 4) on 8x8 images; the initial variables are made
once per module (XLA's CPU compile of the initializers' RNG is the slow part) and copied onto
a mesh per test, because the compiled steps donate (and so delete) the state they are given.
"""
import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import resnet_jax
from resnet_jax import parallel
from resnet_jax.train import metrics as M
from resnet_jax.train import optim
from resnet_jax.train import dispatch as D
from resnet_jax.train import step as S

B, HW, K = 16, 8, 3  # global batch, image size, steps per dispatch


def model_for(groups=1, dtype="float32"):
    return resnet_jax.create_model("cifar_resnet8", width=4, bn_num_groups=groups, dtype=dtype)


@functools.lru_cache(maxsize=None)
def tx():
    c = ml_collections.ConfigDict(dict(
        name="sgd", lr=0.1, lr_scaling="none", base_batch_size=128, momentum=0.9,
        nesterov=False, weight_decay=1e-4, decay_bn_and_bias=True, schedule="piecewise",
        schedule_unit="steps", boundaries=[2], decay_factor=0.1, warmup="none",
        warmup_length=0, warmup_lr=0.0, label_smoothing=0.0))
    return optim.make_optimizer(c, steps_per_epoch=10)


@functools.lru_cache(maxsize=None)
def host_state():
    """Step-0 state as numpy (same params whatever bn_num_groups: BN has no group params).

    An 'rbg' key: XLA compiles its initializers ~6x faster on CPU than threefry's.
    """
    key = jax.random.key(0, impl="rbg")
    return jax.device_get(S.create_train_state(key, model_for(), tx(), (HW, HW, 3)))


def fresh_state(mesh):
    return parallel.replicate(host_state(), mesh)


def flip_preprocess(rng, images, train):
    """Scale and, in training, a random horizontal flip per example (exercises the rng)."""
    x = images.astype(jnp.float32) / 4.0
    if not train:
        return x
    flip = jax.random.bernoulli(rng, 0.5, (x.shape[0], 1, 1, 1))
    return jnp.where(flip, x[:, :, ::-1], x)


@functools.lru_cache(maxsize=None)
def train_fn(num_devices=8, groups=1, loop="auto"):
    """(mesh, fn(state, host chunk (k, B, ...), rng, ok=None)): the compiled chunk function
    with the host data put on the mesh as the loop does."""
    mesh = parallel.make_mesh(num_devices)
    fn = D.make_train_fn(model_for(groups), tx(), mesh, preprocess=flip_preprocess, loop=loop)
    return mesh, lambda state, host, rng, ok=None: fn(state, D.put_chunk(host, mesh, loop),
                                                      rng, ok)


def batches(n, seed=0):
    rng = np.random.default_rng(seed)
    return [{"image": rng.normal(size=(B, HW, HW, 3)).astype(np.float32),
             "label": rng.integers(0, 10, B).astype(np.int32)} for _ in range(n)]


def stack(bs):
    return {k: np.stack([b[k] for b in bs]) for k in bs[0]}


def assert_trees_close(a, b, rtol=2e-5, atol=2e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y),
                                                         rtol=rtol, atol=atol), a, b)


def run(num_devices, groups, data, rng=jax.random.key(7)):
    """One step per call: (final state, [metrics of each step])."""
    mesh, fn = train_fn(num_devices, groups)
    state, ms = fresh_state(mesh), []
    for batch in data:
        state, m = fn(state, stack([batch]), rng)
        ms.append(jax.tree.map(lambda x: x[0], jax.device_get(m)))
    return jax.device_get(state), ms


def test_global_bn_8_devices_equals_1_device():
    """Slow: compiles the step for 8 devices and for 1."""
    data = batches(2)
    s8, m8 = run(8, 1, data)
    s1, m1 = run(1, 1, data)
    assert int(s8.step) == 2
    assert_trees_close(s8.params, s1.params)
    assert_trees_close(s8.batch_stats, s1.batch_stats)
    for a, b in zip(m8, m1, strict=True):
        assert bool(a["finite"])
        assert_trees_close(a, b, rtol=1e-5)
    # The update really moved the weights, and the schedule's lr is reported per update.
    assert np.abs(s8.params["fc"]["kernel"] - host_state().params["fc"]["kernel"]).max() > 1e-4
    assert [float(m["lr"]) for m in m8] == pytest.approx([0.1, 0.1])


def grouped_reference(state, batch, rng, groups):
    """Normalize each group of B/groups examples by hand: a 1-group model per group."""
    model = model_for(1)
    images = flip_preprocess(jax.random.fold_in(rng, state.step), batch["image"], True)
    img_g = images.reshape((groups, -1) + images.shape[1:])
    lab_g = batch["label"].reshape(groups, -1)

    def group_loss(params, x, y):
        logits, upd = model.apply({"params": params, "batch_stats": state.batch_stats}, x,
                                  train=True, mutable=["batch_stats"])
        return jnp.mean(S.cross_entropy(logits, y)), upd["batch_stats"]

    def loss_fn(params):  # each group on its own, then the mean of the groups
        losses, stats = jax.vmap(group_loss, in_axes=(None, 0, 0))(params, img_g, lab_g)
        return jnp.mean(losses), jax.tree.map(lambda v: jnp.mean(v, axis=0), stats)

    (loss, stats), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(state.params)
    updates, _ = tx().update(grads, state.opt_state, state.params)
    params = jax.tree.map(lambda p, u: p + u, state.params, updates)
    return params, stats, loss


@pytest.mark.parametrize("bn_mode,group_size", [("per_device", 1), ("group", 2)])
def test_grouped_bn_equals_normalizing_each_group_by_hand(bn_mode, group_size):
    groups = parallel.bn_num_groups(bn_mode, group_size, 8)
    batch, rng = batches(1, seed=1)[0], jax.random.key(3)
    state, (m,) = run(8, groups, [batch], rng)
    ref_params, ref_stats, ref_loss = grouped_reference(host_state(), batch, rng, groups)
    assert float(m["loss"]) == pytest.approx(float(ref_loss), rel=1e-5)
    assert_trees_close(state.params, ref_params)
    assert_trees_close(state.batch_stats, ref_stats)
    # ...and it is not what global statistics give, so the check has teeth.
    _, (m_global,) = run(8, 1, [batch], rng)
    assert abs(float(m_global["loss"]) - float(m["loss"])) > 1e-4


def test_running_stats_identical_on_every_device():
    mesh, fn = train_fn(8, 8)
    state, _ = fn(fresh_state(mesh), stack(batches(1)), jax.random.key(0))
    for leaf in jax.tree.leaves(state.batch_stats):
        shards = [np.asarray(s.data) for s in leaf.addressable_shards]
        assert len(shards) == 8 and all(np.array_equal(shards[0], s) for s in shards)


@pytest.mark.parametrize("loop", ["scan", "python"])
def test_many_steps_per_dispatch_and_indexed_path_equal_step_by_step(loop):
    """k steps per call ('scan' on accelerators, 'python' on CPU) == k calls of one step."""
    data, rng = batches(K, seed=2), jax.random.key(5)
    s1, m1 = run(8, 1, data, rng)
    mesh, fn = train_fn(8, 1, loop=loop)
    sk, mk = fn(fresh_state(mesh), stack(data), rng)
    assert int(sk.step) == K
    assert_trees_close(jax.device_get(sk.params), s1.params)
    assert_trees_close(jax.device_get(sk.batch_stats), s1.batch_stats)
    np.testing.assert_allclose(np.asarray(mk["loss"]), [m["loss"] for m in m1], rtol=1e-5)
    # The device-resident path: the same batches, gathered on the devices from the whole split.
    images_all = np.concatenate([b["image"] for b in data])[::-1].copy()
    labels_all = np.concatenate([b["label"] for b in data])[::-1].copy()
    indices = (K * B - 1 - np.arange(K * B)).reshape(K, B).astype(np.int32)
    fn = D.make_train_fn(model_for(), tx(), mesh, resident=(images_all, labels_all),
                         preprocess=flip_preprocess, loop=loop)
    si, mi = fn(fresh_state(mesh), D.put_chunk({"index": indices}, mesh, loop), rng)
    assert_trees_close(jax.device_get(si.params), s1.params)
    np.testing.assert_allclose(np.asarray(mi["loss"]), [m["loss"] for m in m1], rtol=1e-5)


class _DropoutNet(nn.Module):
    """Pooling, dropout, a dense layer: the smallest net with a 'dropout' rng (the ResNet's
    dropout shortcut draws from the same collection, tests/models/test_variants.py)."""

    @nn.compact
    def __call__(self, x, train=False):
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(10)(nn.Dropout(0.5, deterministic=not train)(x))


def test_dropout_masks_are_a_function_of_the_step_key():
    """The model's 'dropout' rng comes from the step's key (fold_in(base, step)): another step
    draws other masks (that a resumed run redraws the same ones:
    tests/train/test_loop_resume.py's dropout-shortcut run)."""
    model = _DropoutNet()
    state = S.create_train_state(jax.random.key(0), model, tx(), (HW, HW, 3))
    step = jax.jit(functools.partial(S.train_step, model=model, tx=tx()))
    batch, key = batches(1)[0], jax.random.key(7)
    first, _ = step(state, batch, key)
    # only the dropout key tells step 1 from step 0 here (same lr, preprocessing unkeyed)
    later, _ = step(state.replace(step=state.step + 1), batch, key)
    assert not np.allclose(later.params["Dense_0"]["kernel"], first.params["Dense_0"]["kernel"])


def test_loop_kind():
    mesh = parallel.make_mesh()
    assert D.loop_kind("auto", mesh) == "python"  # CPU: see XLA:CPU convs in while loops
    assert D.loop_kind("scan", mesh) == "scan"
    with pytest.raises(ValueError, match="loop='unrolled'"):
        D.make_train_fn(model_for(), tx(), mesh, loop="unrolled")


def test_state_buffers_are_donated():
    mesh, fn = train_fn(8, 1)
    state = fresh_state(mesh)
    fn(state, stack(batches(1)), jax.random.key(0))
    assert jax.tree.leaves(state.params)[0].is_deleted()


@pytest.mark.parametrize("loop", ["scan", "python"])
def test_planted_nan_stops_at_that_step_and_keeps_last_finite_state(loop):
    data = batches(K, seed=3)
    data[1]["image"][5, 0, 0, 0] = np.nan
    s_ok, _ = run(8, 1, data[:1])
    mesh, fn = train_fn(8, 1, loop=loop)
    state, m = fn(fresh_state(mesh), stack(data), jax.random.key(7))
    np.testing.assert_array_equal(np.asarray(m["finite"]), [True, False, False])
    assert int(state.step) == 1
    assert_trees_close(jax.device_get(state.params), s_ok.params)
    assert_trees_close(jax.device_get(state.opt_state), jax.device_get(s_ok.opt_state))
    with pytest.raises(FloatingPointError, match="at step 11 .*loss=nan"):
        M.check_finite(m, step=10)
    M.check_finite({"finite": np.array([True, True])}, step=0)  # no error when all finite


def test_the_step_alone_returns_its_input_state_on_a_nan():
    """`train_step`'s own guard, without the dispatch's: the state it returns for a NaN batch
    is its input, leaf for leaf (the guard that library users calling the step get)."""
    data = batches(1, seed=5)[0]
    data["image"][3, 0, 0, 0] = np.nan
    start = host_state()
    state, m = jax.jit(functools.partial(S.train_step, model=model_for(), tx=tx(),
                                         preprocess=flip_preprocess))(
        start, data, jax.random.key(1))
    assert not bool(m["finite"]) and np.isnan(float(m["loss"]))
    chex.assert_trees_all_equal(jax.device_get(state), start)


@pytest.mark.parametrize("k, loop", [(1, "auto"), (K, "scan"), (K, "python")])
def test_a_false_ok_from_an_earlier_dispatch_applies_nothing(k, loop):
    """The flag a loop carries between dispatches: after a NaN in one call, the next call
    leaves the state as it was (no training past the NaN before the host looks)."""
    mesh, fn = train_fn(8, 1, loop=loop)
    start = fresh_state(mesh)
    before = jax.device_get(start)
    data = batches(k, seed=4)
    false = jax.device_put(np.array(False), parallel.replicated(mesh))
    state, m = fn(start, stack(data), jax.random.key(7), false)
    assert not np.asarray(m["finite"]).any()
    chex.assert_trees_all_equal(jax.device_get(state), before)


def eval_reference(state, images, labels):
    model = model_for()
    n, v = images.shape[:2]
    x = flip_preprocess(None, images.reshape((n * v,) + images.shape[2:]), False)
    logits = jax.jit(model.apply)({"params": state.params, "batch_stats": state.batch_stats}, x)
    probs = jax.nn.softmax(logits).reshape(n, v, -1).mean(axis=1)
    loss = -np.log(np.asarray(probs)[np.arange(n), labels]).mean()
    order = np.argsort(-np.asarray(probs), axis=1)
    top1 = (order[:, 0] == labels).mean()
    top5 = (order[:, :5] == labels[:, None]).any(axis=1).mean()
    return loss, 100 * (1 - top1), 100 * (1 - top5)


def test_eval_counts_each_example_once_with_padding_and_views():
    n, views, eb = 21, 2, 8  # 21 examples, batches of 8: the last one has 5 real rows
    rng = np.random.default_rng(4)
    images = rng.normal(size=(n, views, HW, HW, 3)).astype(np.float32)
    labels = rng.integers(0, 10, n).astype(np.int32)
    state = host_state()
    mesh = parallel.make_mesh()
    fn = D.make_eval_fn(model_for(8), mesh, preprocess=flip_preprocess)
    total = None
    for start in range(0, n, eb):
        idx = np.arange(start, start + eb)
        mask = idx < n
        idx = np.where(mask, idx, 0)
        batch = {"image": images[idx], "label": labels[idx], "mask": mask}
        batch["image"][~mask] = np.nan  # padding may hold anything
        total = M.add_sums(total, fn(fresh_state(mesh), parallel.to_global(batch, mesh)))
    summary = M.eval_summary(total)
    assert summary["count"] == n
    loss, top1_err, top5_err = eval_reference(state, images, labels)
    assert summary["loss"] == pytest.approx(loss, rel=1e-5)
    assert summary["top1_error"] == pytest.approx(top1_err)
    assert summary["top5_error"] == pytest.approx(top5_err)


def test_multiscale_eval_averages_the_probabilities_of_every_view_of_every_scale():
    n, hw2 = 16, HW + 4  # two scales, 2 views (image + flip) each
    rng = np.random.default_rng(7)
    small = rng.normal(size=(n, 2, HW, HW, 3)).astype(np.float32)
    large = rng.normal(size=(n, 2, hw2, hw2, 3)).astype(np.float32)
    labels = rng.integers(0, 10, n).astype(np.int32)
    state = host_state()
    mesh = parallel.make_mesh()
    fn = D.make_eval_fn(model_for(), mesh, preprocess=flip_preprocess)
    summary = M.eval_summary(M.add_sums(None, fn(fresh_state(mesh), parallel.to_global(
        {"image": (small, large), "label": labels, "mask": np.ones(n, bool)}, mesh))))

    variables = {"params": state.params, "batch_stats": state.batch_stats}
    probs = [jax.nn.softmax(model_for().apply(
        variables, flip_preprocess(None, x.reshape((-1,) + x.shape[2:]), False))
    ).reshape(n, 2, -1) for x in (small, large)]
    mean = np.asarray(jnp.concatenate(probs, axis=1).mean(axis=1))
    assert summary["count"] == n
    assert summary["loss"] == pytest.approx(-np.log(mean[np.arange(n), labels]).mean(),
                                            rel=1e-5)
    assert summary["top1_error"] == pytest.approx(100 * (mean.argmax(1) != labels).mean())
    # Not the same as one scale alone (the test sees both scales).
    one = M.eval_summary(M.add_sums(None, fn(
        fresh_state(mesh), parallel.to_global({"image": small, "label": labels}, mesh))))
    assert one["loss"] != pytest.approx(summary["loss"], rel=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_loss():
    mesh = parallel.make_mesh()
    fn = D.make_train_fn(model_for(dtype="bfloat16"), tx(), mesh, preprocess=flip_preprocess)
    batch = batches(1, seed=5)[0]
    state, m = fn(fresh_state(mesh), D.put_chunk(stack([batch]), mesh), jax.random.key(0))
    m = jax.tree.map(lambda x: x[0], m)
    _, (m32,) = run(8, 1, [batch], jax.random.key(0))
    dtypes = {x.dtype for x in jax.tree.leaves((state.params, state.opt_state, state.batch_stats))
              if jnp.issubdtype(x.dtype, jnp.floating)}
    assert dtypes == {jnp.dtype("float32")}
    assert m["loss"].dtype == jnp.float32
    assert float(m["loss"]) == pytest.approx(float(m32["loss"]), abs=0.05)


def test_cross_entropy_label_smoothing_and_topk():
    logits = jnp.array([[2.0, 1.0, 0.0, -1.0, -2.0, -3.0]])
    labels = jnp.array([1])
    logp = jax.nn.log_softmax(logits)[0]
    assert float(S.cross_entropy(logits, labels)[0]) == pytest.approx(-float(logp[1]), rel=1e-6)
    smooth = -(0.9 * logp[1] + 0.1 * logp.mean())  # alpha=0.1 spread over the 6 classes
    assert float(S.cross_entropy(logits, labels, 0.1)[0]) == pytest.approx(float(smooth), rel=1e-6)
    assert float(S.topk_correct(logits, labels, 1)[0]) == 0.0
    assert float(S.topk_correct(logits, labels, 2)[0]) == 1.0
    assert float(S.topk_correct(logits, jnp.array([5]), 5)[0]) == 0.0


def test_topk_ties_count_against_the_label():
    tied = jnp.zeros((1, 10))                       # a constant (dead) output
    assert float(S.topk_correct(tied, jnp.array([3]), 1)[0]) == 0.0
    assert float(S.topk_correct(tied, jnp.array([3]), 5)[0]) == 0.0
    two = jnp.array([[1.0, 1.0, 0.0]])             # label tied with one rival
    assert float(S.topk_correct(two, jnp.array([0]), 1)[0]) == 0.0
    assert float(S.topk_correct(two, jnp.array([0]), 2)[0]) == 1.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_topk_non_finite_scores_are_never_correct(bad):
    scores = np.array([[3.0, 1.0, 0.0, -1.0], [3.0, 1.0, 0.0, -1.0]], np.float32)
    scores[0, 0] = bad                              # the label's own score
    scores[1, 2] = np.nan if np.isnan(bad) else 0.0  # a NaN elsewhere in the row
    got = np.asarray(S.topk_correct(jnp.asarray(scores), jnp.array([0, 0]), 3))
    assert got[0] == 0.0
    assert got[1] == (0.0 if np.isnan(bad) else 1.0)


def test_eval_of_a_nan_model_is_100_percent_error():
    state = host_state()
    state = state.replace(params=jax.tree.map(lambda p: np.full_like(p, np.nan), state.params))
    batch = {"image": jnp.ones((4, HW, HW, 3)), "label": jnp.arange(4)}
    sums = S.eval_step(state, batch, model=model_for())
    assert float(sums["top1"]) == 0.0 and float(sums["top5"]) == 0.0
    assert M.eval_summary(M.add_sums(None, sums))["top1_error"] == 100.0


def test_train_summary_reports_errors_in_percent():
    m = {"loss": np.array([1.0, 3.0]), "top1": np.array([0.25, 0.75]), "top5": np.array([1.0, 1.0]),
         "lr": np.array([0.1, 0.01]), "grad_norm": np.array([5.0, 6.0]), "finite": np.array([1, 1])}
    s = M.train_summary(m)
    assert s == {"loss": 2.0, "top1_error": 50.0, "top5_error": 0.0, "lr": 0.01, "grad_norm": 6.0}

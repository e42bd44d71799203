"""flax.nnx modules of our linen ResNets: the same logits, the same batch-statistics update,
and a training step with nnx.Optimizer + optax."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import resnet_jax
from resnet_jax.interop import linen_variables
from resnet_jax.interop.bundle import LoadedModel
from resnet_jax.interop.preprocess import Preprocessing
from resnet_jax.interop.torch_layout import abstract_variables


@pytest.fixture(scope="module")
def linen():
    model = resnet_jax.create_model("cifar_resnet8", width=4, num_classes=3)
    rng = np.random.default_rng(0)  # random BN statistics too, so eval and train differ
    variables = jax.tree.map(lambda s: jnp.asarray(rng.uniform(0.5, 1.5, s.shape), s.dtype),
                             abstract_variables(model))
    x = jax.random.normal(jax.random.key(1), (6, 8, 8, 3))
    return model, variables, x, jnp.arange(6) % 3


def _max_diff(a, b):
    return max(float(np.abs(np.asarray(u) - np.asarray(v)).max())
               for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_same_logits_and_batch_stats_update_as_linen(linen):
    model, variables, x, _ = linen
    m = resnet_jax.nnx_model(model, variables)
    assert m.use_running_average  # eval mode by default
    np.testing.assert_array_equal(m(x), model.apply(variables, x, train=False))
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    m.train()
    np.testing.assert_array_equal(m(x), logits)
    after = linen_variables(m)
    assert _max_diff(after["batch_stats"], updates["batch_stats"]) == 0
    assert _max_diff(after["batch_stats"], variables["batch_stats"]) > 0  # it did move
    assert _max_diff(after["params"], variables["params"]) == 0
    m.eval()
    np.testing.assert_array_equal(m(x), model.apply({"params": variables["params"], **updates},
                                                    x, train=False))
    assert len(nnx.to_flat_state(nnx.state(m, nnx.BatchStat))) == 2 * 7  # 7 BNs: mean, var


def test_optimizer_step_changes_params_and_reduces_loss(linen):
    model, variables, x, y = linen
    m = resnet_jax.nnx_model(model, variables)
    m.train()
    opt = nnx.Optimizer(m, optax.sgd(0.05, momentum=0.9), wrt=nnx.Param)

    @nnx.jit
    def step(m, opt, x, y):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(m)
        opt.update(m, grads)
        return loss

    losses = [float(step(m, opt, x, y)) for _ in range(3)]
    assert losses[2] < losses[0]
    after = linen_variables(m)
    assert _max_diff(after["params"], variables["params"]) > 1e-3
    assert _max_diff(after["batch_stats"], variables["batch_stats"]) > 0


def test_from_a_name_and_from_a_loaded_model(linen):
    """Slow: initializes the NNX model eagerly and converts it both ways."""
    model, variables, x, _ = linen
    fresh = resnet_jax.nnx_model("cifar_resnet8", width=4, num_classes=3,
                                 rngs=nnx.Rngs(0), input_shape=(1, 8, 8, 3))
    init = linen_variables(fresh)
    assert jax.tree.map(jnp.shape, init) == jax.tree.map(jnp.shape, dict(variables))
    assert float(jnp.std(init["params"]["conv1"]["kernel"])) > 0.1  # He-normal, not zeros
    assert float(jnp.max(jnp.abs(init["batch_stats"]["bn1"]["var"] - 1))) == 0  # fresh stats
    loaded = LoadedModel.create(model, variables, Preprocessing([0, 0, 0], 1.0), None)
    m = resnet_jax.nnx_model(loaded)
    assert _max_diff(linen_variables(m), variables) == 0
    with pytest.raises(TypeError, match="overrides apply to a model name"):
        resnet_jax.nnx_model(model, width=8)

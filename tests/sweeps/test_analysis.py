"""Fig. 7 analysis: one std per 3x3 layer, equal to a hand computation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.models import create_model
from resnet_jax.sweeps import analysis


def random_variables(model, image_shape, seed=0):
    """Variables filled on the host with numpy: He-like weights, non-trivial BN statistics
    (so eval-mode BN is not the identity). Avoids compiling the model's random init."""
    from resnet_jax.models import abstract_variables

    rng = np.random.default_rng(seed)
    shapes = abstract_variables(model, (1, *image_shape))

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = np.prod(leaf.shape[:-1])
            return rng.normal(0, np.sqrt(2 / fan_in), leaf.shape).astype(np.float32)
        if name in ("var", "scale"):
            return rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32)
        return rng.normal(0, 0.3, leaf.shape).astype(np.float32)  # bias, mean

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def small_model():
    model = create_model("cifar_resnet8", width=4, num_classes=10)
    images = jnp.asarray(np.random.default_rng(1).normal(size=(12, 16, 16, 3)), jnp.float32)
    return model, random_variables(model, (16, 16, 3)), images


def test_accumulator_equals_numpy_std_over_uneven_batches():
    rng = np.random.default_rng(0)
    x = [rng.normal(1.0, 3.0, size=n) for n in (7, 30, 2)]
    y = [rng.normal(-2.0, 0.5, size=n) for n in (7, 30, 2)]
    acc = analysis.MomentAccumulator()
    for a, b in zip(x, y, strict=True):
        acc.add([a.size, b.size], [a.mean(), b.mean()], [a.var(), b.var()])
    np.testing.assert_allclose(acc.std(), [np.concatenate(x).std(), np.concatenate(y).std()],
                               rtol=1e-12)


@pytest.fixture(scope="module")
def split_stds(small_model):
    model, variables, images = small_model
    return analysis.layer_response_stds(model, variables, [images[:6], images[6:]])


def test_one_value_per_3x3_layer(small_model, split_stds):
    model, variables, images = small_model
    # cifar_resnet8: the stem conv + 3 stages x 1 block x 2 convs
    assert split_stds.shape == (7,) and np.all(split_stds > 0)
    plain = create_model("cifar_plain14", width=4, num_classes=10)
    stds = analysis.layer_response_stds(plain, random_variables(plain, (16, 16, 3)), [images[:2]])
    assert stds.shape == (13,)


def test_first_layer_matches_a_hand_computed_conv_and_bn(small_model, split_stds):
    model, variables, images = small_model
    kernel = variables["params"]["conv1"]["kernel"]
    bn_params, bn_stats = variables["params"]["bn1"], variables["batch_stats"]["bn1"]
    y = jax.lax.conv_general_dilated(images, kernel, (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = (y - bn_stats["mean"]) / jnp.sqrt(bn_stats["var"] + 1e-5) * bn_params["scale"] \
        + bn_params["bias"]
    assert float(np.std(np.asarray(y, np.float64))) == pytest.approx(split_stds[0], rel=1e-5)


def test_every_layer_matches_the_whole_batch_at_once(small_model, split_stds):
    from resnet_jax.models import conv3x3_responses

    model, variables, images = small_model
    responses = jax.jit(lambda v, x: conv3x3_responses(model, v, x))(variables, images)
    whole = [float(np.std(np.asarray(r, np.float64))) for r in responses]
    np.testing.assert_allclose(split_stds, whole, rtol=1e-5)

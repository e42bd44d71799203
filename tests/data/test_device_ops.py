"""Device-side ops: pad-crop-flip windows and flip rate, PCA lighting scale, normalization."""
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.data import device_ops


def test_pad_crop_flip_returns_windows_of_padded_image_and_flips_half():
    b, h = 256, 6
    imgs = np.random.default_rng(0).integers(1, 256, (b, h, h, 3)).astype(np.uint8)
    out = np.asarray(jax.jit(device_ops.pad_crop_flip, static_argnums=2)(
        jax.random.key(0), jnp.asarray(imgs), 4))
    assert out.shape == imgs.shape and out.dtype == np.uint8
    padded = np.pad(imgs, ((0, 0), (4, 4), (4, 4), (0, 0)))
    flips, offsets = 0, set()
    for i in range(b):
        hits = [(y, x, f) for y in range(9) for x in range(9) for f in (0, 1)
                if np.array_equal(out[i], (lambda w: w[:, ::-1] if f else w)(
                    padded[i, y:y + h, x:x + h]))]
        assert hits, f"example {i} is not a window of its padded image"
        flips += hits[0][2]
        offsets.add(hits[0][:2])
    assert 0.4 < flips / b < 0.6  # about half are flipped
    assert len(offsets) > 40  # offsets spread over the 9x9 grid


def test_lighting_noise_has_pca_scale():
    n, std = 4000, 0.1
    imgs = jnp.zeros((n, 1, 1, 3), jnp.uint8)
    off = np.asarray(device_ops.lighting(jax.random.key(1), imgs, std))[:, 0, 0, :]
    # Project back onto the eigenvectors: coefficients are alpha_i * eigval_i * 255.
    coef = off @ device_ops.PCA_EIGVEC / 255.0
    want = std * device_ops.PCA_EIGVAL
    np.testing.assert_allclose(coef.std(0), want, rtol=0.06)
    # The dominant component's offset: 0.1 * 0.2175 * 255 * |v| ~ 3.2 grey levels per channel.
    assert 2.5 < np.abs(off).mean() * np.sqrt(np.pi / 2) < 4.0


def test_preprocess_eval_accepts_views_and_train_is_jittable():
    mean, std = np.full(3, 10.0, np.float32), np.full(3, 2.0, np.float32)
    pre = device_ops.make_device_preprocess(mean=mean, std=std, crop_flip_pad=4,
                                            lighting_std=0.1)
    views = jnp.full((2, 10, 4, 4, 3), 14, jnp.uint8)
    np.testing.assert_allclose(pre(None, views, False), 2.0)
    out = jax.jit(pre, static_argnums=2)(jax.random.key(0), views[:, 0], True)
    assert out.shape == (2, 4, 4, 3) and out.dtype == jnp.float32

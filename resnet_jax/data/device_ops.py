"""Device-side image ops in pure JAX: run inside the compiled step, on uint8 host batches.

Everything here is jit-able and takes explicit PRNG keys (no state). Images are
`(..., H, W, 3)`; values stay on the 0-255 scale until `normalize`.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

# ImageNet RGB statistics on the 0-255 scale (the torchvision / big_vision constants).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255.0
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255.0

# AlexNet PCA lighting: eigen-decomposition of the ImageNet RGB covariance, pixels on the 0-1
# scale (fb.resnet.torch `transforms.lua`, big_vision). Columns of EIGVEC are the eigenvectors.
PCA_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32)
PCA_EIGVEC = np.array(
    [[-0.5675, 0.7192, 0.4009],
     [-0.5808, -0.0045, -0.8140],
     [-0.5836, -0.6948, 0.4203]], np.float32)


def pad_crop_flip(rng: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
    """CIFAR augmentation (paper Sec. 4.2): zero-pad `pad` pixels, random HxW crop, random flip.

    images: (B, H, W, C) any dtype; returns the same shape and dtype. Each example gets its
    own offsets and flip, drawn from `rng`.
    """
    b, h, w, _ = images.shape
    k_y, k_x, k_f = jax.random.split(rng, 3)
    dy = jax.random.randint(k_y, (b,), 0, 2 * pad + 1)
    dx = jax.random.randint(k_x, (b,), 0, 2 * pad + 1)
    flip = jax.random.bernoulli(k_f, 0.5, (b,))
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def crop_one(img, y, x, f):
        out = jax.lax.dynamic_slice(img, (y, x, 0), (h, w, img.shape[-1]))
        return jnp.where(f, out[:, ::-1], out)

    return jax.vmap(crop_one)(padded, dy, dx, flip)


def lighting(rng: jax.Array, images: jax.Array, std: float) -> jax.Array:
    """AlexNet PCA colour noise: add `EIGVEC @ (alpha * EIGVAL)` per image, alpha ~ N(0, std).

    images: (B, H, W, 3) on the 0-255 scale (any dtype); returns float32 (B, H, W, 3), not
    clipped. The eigenvalues are for 0-1 pixels, so the offset is multiplied by 255.
    """
    alpha = jax.random.normal(rng, (images.shape[0], 3), jnp.float32) * std
    offset = (alpha * PCA_EIGVAL) @ PCA_EIGVEC.T * 255.0  # (B, 3)
    return images.astype(jnp.float32) + offset[:, None, None, :]


def normalize(images: jax.Array, mean: np.ndarray, std: np.ndarray) -> jax.Array:
    """(images - mean) / std in float32; mean/std broadcast against (..., H, W, 3)."""
    return (images.astype(jnp.float32) - jnp.asarray(mean)) / jnp.asarray(std)


def make_device_preprocess(
    *, mean: np.ndarray, std: np.ndarray, crop_flip_pad: int = 0, lighting_std: float = 0.0
) -> Callable[[jax.Array, jax.Array, bool], jax.Array]:
    """Build `preprocess(rng, images_uint8, train) -> float32 images` (pure, jit-able).

    Train: pad-crop-flip (if `crop_flip_pad` > 0; in-memory path), PCA lighting (if
    `lighting_std` > 0; streaming path), then normalization. Eval: normalization only, so eval
    images may have any leading dims, e.g. (B, V, H, W, 3) views. `train` must be static.
    """
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)

    def preprocess(rng: jax.Array, images: jax.Array, train: bool) -> jax.Array:
        if train:
            k_crop, k_light = jax.random.split(rng)
            if crop_flip_pad > 0:
                images = pad_crop_flip(k_crop, images, crop_flip_pad)
            if lighting_std > 0:
                images = lighting(k_light, images, lighting_std)
        return normalize(images, mean, std)

    return preprocess

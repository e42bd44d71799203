"""The tf.data loader this project used before grain (resnet_jax/data/augment.py and
streaming.py up to issue 17), kept as the baseline of `input_pipeline.py` and as the reference
the numpy evaluation views are checked against (tests/data/test_augment.py). Needs TensorFlow
(`pip install -e ".[tf]"`); nothing in resnet_jax imports it.

Training: read file -> `decode_and_crop_jpeg` of the scale-augmentation / Inception window
(INTEGER_FAST IDCT) -> `tf.image.resize` bilinear -> flip, mapped with `num_parallel_calls`
threads. Evaluation: `decode_image` -> resize shorter side -> centre / 10 crops / a square.
"""
from __future__ import annotations

import tensorflow as tf


def image_shape(image_bytes):
    return tf.cond(tf.io.is_jpeg(image_bytes),
                   lambda: tf.image.extract_jpeg_shape(image_bytes)[:2],
                   lambda: tf.shape(decode_full(image_bytes))[:2])


def decode_full(image_bytes):
    img = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    img.set_shape([None, None, 3])
    return img


def decode_window(image_bytes, window):
    def jpeg():
        return tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3,
                                             dct_method="INTEGER_FAST")

    def other():
        y, x, h, w = tf.unstack(window)
        return decode_full(image_bytes)[y:y + h, x:x + w]

    img = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
    img.set_shape([None, None, 3])
    return img


def _resize_uint8(img, size):
    out = tf.image.resize(img, size, method="bilinear", antialias=False)
    return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)


def _random_flip(img, seed):
    flip = tf.random.stateless_uniform([], seed) < 0.5
    return tf.cond(flip, lambda: tf.image.flip_left_right(img), lambda: img)


def scale_augment(image_bytes, seed, size=224, min_side=256, max_side=480):
    """Paper Sec. 3.4 with the decode fused into the crop."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    shape = image_shape(image_bytes)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    s = tf.random.stateless_uniform([], seeds[0], min_side, max_side + 1, dtype=tf.int32)
    scale = tf.cast(s, tf.float32) / tf.minimum(h, w)
    new_h = tf.maximum(tf.cast(tf.round(h * scale), tf.int32), size)
    new_w = tf.maximum(tf.cast(tf.round(w * scale), tf.int32), size)
    sub = tf.random.experimental.stateless_split(seeds[0], 2)
    oy = tf.random.stateless_uniform([], sub[0], 0, new_h - size + 1, dtype=tf.int32)
    ox = tf.random.stateless_uniform([], sub[1], 0, new_w - size + 1, dtype=tf.int32)
    crop = tf.maximum(tf.cast(tf.round(size / scale), tf.int32), 1)
    y0 = tf.cast(tf.floor(tf.cast(oy, tf.float32) / scale), tf.int32)
    x0 = tf.cast(tf.floor(tf.cast(ox, tf.float32) / scale), tf.int32)
    window = tf.stack([y0, x0, tf.minimum(crop, shape[0] - y0), tf.minimum(crop, shape[1] - x0)])
    img = _resize_uint8(decode_window(image_bytes, window), [size, size])
    return _random_flip(img, seeds[1])


def inception_crop(image_bytes, seed, size=224):
    seeds = tf.random.experimental.stateless_split(seed, 2)
    shape = image_shape(image_bytes)
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.concat([shape, [3]], 0), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seeds[0],
        min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
    img = _resize_uint8(decode_window(image_bytes, window), [size, size])
    return _random_flip(img, seeds[1])


def resize_shorter(img, side):
    h, w = tf.cast(tf.shape(img)[0], tf.float32), tf.cast(tf.shape(img)[1], tf.float32)
    scale = side / tf.minimum(h, w)
    return _resize_uint8(img, [tf.maximum(tf.cast(tf.round(h * scale), tf.int32), side),
                               tf.maximum(tf.cast(tf.round(w * scale), tf.int32), side)])


def center_crop(img, size):
    h, w = tf.shape(img)[0], tf.shape(img)[1]
    y, x = (h - size) // 2, (w - size) // 2
    return img[y:y + size, x:x + size]


def eval_views(image_bytes, mode, size=224, resize=256, scale=0):
    """uint8 (V, H, W, 3): 'center' (V=1), '10crop' (corners, centre, then flipped),
    'multiscale' (the centre square at shorter side `scale` and its flip)."""
    img = decode_full(image_bytes)
    if mode == "center":
        return center_crop(resize_shorter(img, resize), size)[None]
    if mode == "10crop":
        img = resize_shorter(img, resize)
        h, w = tf.shape(img)[0], tf.shape(img)[1]
        crops = tf.stack([img[:size, :size], img[:size, w - size:], img[h - size:, :size],
                          img[h - size:, w - size:], center_crop(img, size)])
        return tf.concat([crops, tf.reverse(crops, axis=[2])], 0)
    sq = center_crop(resize_shorter(img, scale), scale)
    return tf.stack([sq, tf.image.flip_left_right(sq)])


def train_dataset(paths, augment: str, batch: int, threads: int, size: int = 224, seed: int = 0):
    """tf.data of uint8 (batch, size, size, 3) over `paths` in order, `threads` threads."""
    fn = scale_augment if augment == "scale" else inception_crop
    ds = tf.data.Dataset.from_tensor_slices(list(paths)).enumerate()
    ds = ds.map(lambda i, p: fn(tf.io.read_file(p), tf.stack([tf.constant(seed, tf.int64), i]),
                                size),
                num_parallel_calls=threads, deterministic=True)
    opts = tf.data.Options()
    opts.threading.private_threadpool_size = threads
    return ds.batch(batch, drop_remainder=True).prefetch(2).with_options(opts)

"""TensorFlow image ops for the streaming path: decode, train augmentations, eval views.

Only the streaming pipeline imports this module (TensorFlow is not needed elsewhere).
All random ops are stateless: `seed` is an int32/int64 tensor of shape (2,), so the
augmentation of an example depends only on (run seed, its position in the stream).
Outputs are uint8 on the 0-255 scale; normalization and PCA lighting run on the device.

Decoding: JPEGs decode only the window they need (`decode_and_crop_jpeg`, crop fused into
the decode); other formats (PNG saved as .jpg, GIF, BMP) use `decode_image` and are cropped
after. Grayscale and CMYK JPEGs come out RGB (`channels=3`).
"""
from __future__ import annotations

import tensorflow as tf

TEN_CROP_ORDER = ("top_left", "top_right", "bottom_left", "bottom_right", "center")


def image_shape(image_bytes: tf.Tensor) -> tf.Tensor:
    """int32 [height, width] of an encoded image (JPEG: from the header, no decode)."""
    return tf.cond(
        tf.io.is_jpeg(image_bytes),
        lambda: tf.image.extract_jpeg_shape(image_bytes)[:2],
        lambda: tf.shape(decode_full(image_bytes))[:2])


def decode_full(image_bytes: tf.Tensor) -> tf.Tensor:
    """uint8 (H, W, 3) from any supported format."""
    img = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    img.set_shape([None, None, 3])
    return img


def decode_window(image_bytes: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
    """uint8 (h, w, 3): the window [y, x, h, w] of the image, decoding JPEGs only there."""
    def jpeg():
        # INTEGER_FAST: the faster IDCT; differences are below JPEG noise for training crops.
        return tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3,
                                             dct_method="INTEGER_FAST")

    def other():
        y, x, h, w = tf.unstack(window)
        return decode_full(image_bytes)[y:y + h, x:x + w]

    img = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
    img.set_shape([None, None, 3])
    return img


def _resize_uint8(img: tf.Tensor, size) -> tf.Tensor:
    out = tf.image.resize(img, size, method="bilinear", antialias=False)
    return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)


def _random_flip(img: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    flip = tf.random.stateless_uniform([], seed) < 0.5
    return tf.cond(flip, lambda: tf.image.flip_left_right(img), lambda: img)


def scale_crop_window(shape: tf.Tensor, seed: tf.Tensor, size: int = 224,
                      min_side: int = 256, max_side: int = 480):
    """The paper's scale augmentation, as a window of the original image.

    Draws the shorter side s ~ U{min_side..max_side}, and a uniform size x size crop of the
    image resized to shorter side s. Returns (s int32, window int32 [y, x, h, w] in original
    pixels): resizing that window to size x size equals cropping the resized image, so the
    JPEG decode can skip everything outside it.
    """
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    s = tf.random.stateless_uniform([], seed, min_side, max_side + 1, dtype=tf.int32)
    scale = tf.cast(s, tf.float32) / tf.minimum(h, w)
    new_h = tf.maximum(tf.cast(tf.round(h * scale), tf.int32), size)
    new_w = tf.maximum(tf.cast(tf.round(w * scale), tf.int32), size)
    seeds = tf.random.experimental.stateless_split(seed, 2)
    oy = tf.random.stateless_uniform([], seeds[0], 0, new_h - size + 1, dtype=tf.int32)
    ox = tf.random.stateless_uniform([], seeds[1], 0, new_w - size + 1, dtype=tf.int32)
    crop = size / scale
    y0 = tf.cast(tf.floor(tf.cast(oy, tf.float32) / scale), tf.int32)
    x0 = tf.cast(tf.floor(tf.cast(ox, tf.float32) / scale), tf.int32)
    ch = tf.minimum(tf.maximum(tf.cast(tf.round(crop), tf.int32), 1), shape[0] - y0)
    cw = tf.minimum(tf.maximum(tf.cast(tf.round(crop), tf.int32), 1), shape[1] - x0)
    return s, tf.stack([y0, x0, ch, cw])


def scale_augment(image_bytes: tf.Tensor, seed: tf.Tensor, size: int = 224,
                  min_side: int = 256, max_side: int = 480) -> tf.Tensor:
    """Paper Sec. 3.4: shorter side in [min_side, max_side], random size crop, flip -> uint8."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    _, window = scale_crop_window(image_shape(image_bytes), seeds[0], size, min_side, max_side)
    img = _resize_uint8(decode_window(image_bytes, window), [size, size])
    return _random_flip(img, seeds[1])


def inception_crop(image_bytes: tf.Tensor, seed: tf.Tensor, size: int = 224,
                   area_range=(0.08, 1.0), aspect_range=(3 / 4, 4 / 3)) -> tf.Tensor:
    """Inception random-resized crop (area 8-100%, aspect 3/4-4/3), decode fused, flip."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    shape = image_shape(image_bytes)
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.concat([shape, [3]], 0), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seeds[0],
        min_object_covered=0.0, aspect_ratio_range=aspect_range, area_range=area_range,
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
    img = _resize_uint8(decode_window(image_bytes, window), [size, size])
    return _random_flip(img, seeds[1])


def resize_shorter(img: tf.Tensor, side: int) -> tf.Tensor:
    """Resize (H, W, 3) so that min(H, W) == side, keeping the aspect ratio -> uint8."""
    h, w = tf.cast(tf.shape(img)[0], tf.float32), tf.cast(tf.shape(img)[1], tf.float32)
    scale = side / tf.minimum(h, w)
    new = [tf.maximum(tf.cast(tf.round(h * scale), tf.int32), side),
           tf.maximum(tf.cast(tf.round(w * scale), tf.int32), side)]
    return _resize_uint8(img, new)


def center_crop(img: tf.Tensor, size: int) -> tf.Tensor:
    """The centre size x size window of an image at least that large."""
    h, w = tf.shape(img)[0], tf.shape(img)[1]
    y, x = (h - size) // 2, (w - size) // 2
    return img[y:y + size, x:x + size]


def ten_crop(img: tf.Tensor, size: int) -> tf.Tensor:
    """(10, size, size, 3): 4 corners + centre (TEN_CROP_ORDER), then the same 5 flipped."""
    h, w = tf.shape(img)[0], tf.shape(img)[1]
    crops = [img[:size, :size], img[:size, w - size:], img[h - size:, :size],
             img[h - size:, w - size:], center_crop(img, size)]
    crops = tf.stack(crops)
    return tf.concat([crops, tf.reverse(crops, axis=[2])], 0)


def eval_views(image_bytes: tf.Tensor, mode: str, size: int = 224, resize: int = 256,
               scale: int = 0) -> tf.Tensor:
    """uint8 (V, H, W, 3) views of one image for evaluation.

    mode 'center': resize shorter side to `resize`, centre size crop (V=1).
    mode '10crop': the same resize, then `ten_crop` (V=10).
    mode 'multiscale': resize shorter side to `scale`, centre scale x scale square and its
    flip (V=2, H=W=scale); the fully-convolutional model scores each scale, the caller
    averages over scales.
    """
    img = decode_full(image_bytes)
    if mode == "center":
        return center_crop(resize_shorter(img, resize), size)[None]
    if mode == "10crop":
        return ten_crop(resize_shorter(img, resize), size)
    if mode == "multiscale":
        sq = center_crop(resize_shorter(img, scale), scale)
        return tf.stack([sq, tf.image.flip_left_right(sq)])
    raise ValueError(f"data.eval_crops={mode!r}; allowed: ('center', '10crop', 'multiscale')")

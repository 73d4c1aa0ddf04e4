"""Resizing with corners aligned (align_corners=True), deeplab2's convention for every resize in the model's life.

The data pipeline's random scaling and resize-to-range, the decoder's upsampling, the model's outputs, multi-scale
inference and the restore of a prediction to the raw image size all resize this way, through these functions. The
first and the last pixel of each axis map onto each other, so a distance of d pixels becomes
d * (new - 1) / (old - 1) (`offset_scale`), which is how offsets in pixels follow a resize.
"""

from typing import Sequence, Union

import tensorflow as tf

Size = Union[Sequence[int], tf.Tensor]


def resize_align_corners(x: tf.Tensor, size: Size,
                         method: str = tf.image.ResizeMethod.BILINEAR) -> tf.Tensor:
    """[batch,] height, width, channels -> the same at `size` = (height, width), corners aligned.

    Args:
      x: a rank-3 or rank-4 tensor.
      size: static ints (a no-op when they equal x's static size) or an int32 tensor [2].
      method: tf.image.ResizeMethod.BILINEAR or NEAREST_NEIGHBOR (for ids and piecewise-constant maps).
    """
    if not isinstance(size, tf.Tensor) and tuple(x.shape[-3:-1]) == tuple(size):
        return x
    return tf.compat.v1.image.resize(x, size, method=method, align_corners=True)


def offset_scale(old_size: Size, new_size: Size) -> tf.Tensor:
    """float32 [2]: (new - 1) / (old - 1) per axis, what a (dy, dx) distance in pixels is multiplied by when its map
    is resized from `old_size` to `new_size` with corners aligned (an axis of one pixel counts as old - 1 = 1)."""
    old_size = tf.cast(old_size, tf.float32)
    new_size = tf.cast(new_size, tf.float32)
    return (new_size - 1) / tf.maximum(old_size - 1, 1)


def resize_offsets_align_corners(offsets: tf.Tensor, size: Sequence[int]) -> tf.Tensor:
    """[batch, h, w, 2] (dy, dx) offsets in pixels (static h, w) -> [batch, *size, 2] in the new size's pixels."""
    return resize_align_corners(offsets, size) * tf.cast(offset_scale(offsets.shape[1:3], size), offsets.dtype)

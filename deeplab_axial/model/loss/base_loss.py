"""Pixel-wise losses with weight maps and bootstrapped (top-k %) averaging, each returning one value per example.

Normalisation follows deeplab2 `model/loss/base_loss.py`: the per-pixel loss is multiplied by its weight map, the
hardest pixels are kept, and their sum is divided by the NUMBER of kept pixels whose weighted loss is non-zero
(a count, not the sum of the weights: a pixel of weight 3 counts three times in the numerator and once in the
denominator). An image with no such pixel gets loss 0, never NaN.

One difference from deeplab2, chosen on purpose: the top-k fraction is taken of each image's VALID pixels (weight > 0
after the ignore label is applied), not of all pixels, so padding and void do not change how many pixels are mined.
k = max(1, floor(top_k_percent * num_valid + 0.5)) (round half up, at least one pixel when any is valid). Ties at the
k-th value do not change the result: the sum of the k largest values is the same whichever tied pixel is kept. The
sort is one static-size `tf.math.top_k` per image (k = the same rounding of all pixels), so the losses compile
under XLA.

All math is float32, whatever the dtype of the predictions (bfloat16 / float16 under mixed precision).
"""

import tensorflow as tf


def _flatten(x: tf.Tensor) -> tf.Tensor:
    """[batch, ...] -> [batch, num_elements] float32."""
    x = tf.cast(x, tf.float32)
    return tf.reshape(x, [tf.shape(x)[0], -1])


def _round_half_up(x: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.floor(x + 0.5), tf.int32)


def validate_top_k_percent(top_k_percent: float) -> None:
    """Raises ValueError unless 0 < top_k_percent <= 1."""
    if not 0.0 < top_k_percent <= 1.0:
        raise ValueError(f'`top_k_percent` must lie in (0, 1]. Received: {top_k_percent}')


def average_top_k_loss(weighted_loss: tf.Tensor, valid: tf.Tensor, top_k_percent: float = 1.0) -> tf.Tensor:
    """Per-example mean of the hardest `top_k_percent` of the valid pixels (see the module docstring).

    Args:
      weighted_loss: [batch, ...] non-negative per-pixel losses already multiplied by their weights, 0 on invalid
        pixels.
      valid: bool [batch, ...], the pixels the top-k fraction is taken of (label not ignored and weight > 0).
      top_k_percent: fraction in (0, 1] of each example's valid pixels to keep.

    Returns:
      [batch] float32.
    """
    validate_top_k_percent(top_k_percent)
    loss = _flatten(weighted_loss)
    if top_k_percent < 1.0:
        num_pixels = loss.shape[1] if loss.shape[1] is not None else tf.shape(loss)[1]
        k_max = tf.maximum(_round_half_up(top_k_percent * tf.cast(num_pixels, tf.float32)), 1)
        num_valid = tf.reduce_sum(_flatten(valid), axis=1, keepdims=True)
        k = tf.maximum(_round_half_up(top_k_percent * num_valid), 1)
        loss = tf.math.top_k(loss, k_max, sorted=True).values
        rank = tf.range(tf.shape(loss)[1])[tf.newaxis, :]
        loss = tf.where(rank < k, loss, 0.0)
    num_non_zero = tf.reduce_sum(tf.cast(tf.not_equal(loss, 0.0), tf.float32), axis=1)
    return tf.math.divide_no_nan(tf.reduce_sum(loss, axis=1), num_non_zero)


def softmax_cross_entropy_loss(labels: tf.Tensor, logits: tf.Tensor, weights: tf.Tensor, *, ignore_label: int,
                               top_k_percent: float = 1.0) -> tf.Tensor:
    """Weighted, bootstrapped softmax cross-entropy with an ignore label.

    Args:
      labels: int [batch, height, width]; pixels equal to `ignore_label` are dropped (they may lie outside
        [0, num_classes)).
      logits: [batch, height, width, num_classes], any float dtype.
      weights: [batch, height, width] per-pixel weights (e.g. `semantic_loss_weight`).
      ignore_label: label of void pixels.
      top_k_percent: fraction of each image's valid pixels with the largest weighted loss to average.

    Returns:
      [batch] float32.
    """
    labels = tf.cast(labels, tf.int32)
    valid = tf.not_equal(labels, ignore_label)
    pixel_loss = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.where(valid, labels, 0), logits=tf.cast(logits, tf.float32))
    weights = tf.cast(weights, tf.float32)
    valid &= weights > 0.0
    return average_top_k_loss(tf.where(valid, pixel_loss * weights, 0.0), valid, top_k_percent)


def _pixel_error(gt: tf.Tensor, pred: tf.Tensor, weights: tf.Tensor, error_fn, top_k_percent: float) -> tf.Tensor:
    error = error_fn(tf.cast(gt, tf.float32) - tf.cast(pred, tf.float32))
    if error.shape.rank == 4:  # [batch, height, width, channels] -> mean over channels, as deeplab2.
        error = tf.reduce_mean(error, axis=-1)
    weights = tf.cast(weights, tf.float32)
    return average_top_k_loss(error * weights, weights > 0.0, top_k_percent)


def mean_squared_error_loss(gt: tf.Tensor, pred: tf.Tensor, weights: tf.Tensor,
                            top_k_percent: float = 1.0) -> tf.Tensor:
    """Weighted squared error (the center heatmap loss); [batch, h, w] or [batch, h, w, c] (mean over c) -> [batch]."""
    return _pixel_error(gt, pred, weights, tf.square, top_k_percent)


def mean_absolute_error_loss(gt: tf.Tensor, pred: tf.Tensor, weights: tf.Tensor,
                             top_k_percent: float = 1.0) -> tf.Tensor:
    """Weighted L1 error (the offset loss: mean of |dy| and |dx| per pixel) -> [batch]."""
    return _pixel_error(gt, pred, weights, tf.abs, top_k_percent)

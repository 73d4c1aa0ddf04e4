"""Keras 3 BatchNormalization over the last axis, computed by TensorFlow's fused kernel.

Keras 3 builds batch norm from generic ops (moments, then a scale and shift), whose gradient is some twenty
elementwise ops and reductions; TensorFlow's `FusedBatchNormV3` is one op forward and one backward. On the attention
layer's [tokens, 2Dk + Dv] projection that halves the batch norm's forward + backward time on CPU. Same variables,
same statistics and moving-average update as the Keras layer; the synchronized, masked, renormalised and non-last-axis
cases fall back to it.
"""

from typing import Optional, Tuple

import keras
import tensorflow as tf


def fused_batch_norm(x: tf.Tensor, scale: tf.Tensor, offset: tf.Tensor, epsilon: float,
                     mean: Optional[tf.Tensor] = None,
                     variance: Optional[tf.Tensor] = None) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Batch norm of float32 `x` over its last axis with TensorFlow's fused kernel.

    Args:
      x: float32 [..., channels].
      scale, offset: float32 [channels].
      epsilon: added to the variance.
      mean, variance: statistics to normalise with (inference); None for the batch's own (training).

    Returns:
      (y, mean, variance): the output in the shape of `x`, and the statistics used, the variance biased (the kernel
      returns the unbiased one for training; Keras averages the biased one).
    """
    flat = tf.reshape(x, [1, -1, 1, x.shape[-1]])
    if mean is None:
        y, mean, unbiased_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=flat, scale=scale, offset=offset, mean=tf.zeros([0]), variance=tf.zeros([0]), epsilon=epsilon,
            is_training=True)
        count = tf.cast(tf.shape(flat)[1], tf.float32)
        variance = unbiased_variance * (count - 1.0) / tf.maximum(count, 1.0)
    else:
        y = tf.raw_ops.FusedBatchNormV3(x=flat, scale=scale, offset=offset, mean=mean, variance=variance,
                                        epsilon=epsilon, is_training=False)[0]
    return tf.reshape(y, tf.shape(x)), mean, variance


@keras.saving.register_keras_serializable(package='deeplab_axial')
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` (any arguments) with a fused fast path for the last axis."""

    def _fused(self, ndim: int) -> bool:
        return not self.synchronized and not self.renorm and self.axis in (-1, ndim - 1)

    def call(self, inputs: tf.Tensor, training: Optional[bool] = None, mask: Optional[tf.Tensor] = None) -> tf.Tensor:
        if mask is not None or not self._fused(len(inputs.shape)):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        # Statistics in float32 under mixed precision, as the Keras layer computes them.
        x = tf.cast(inputs, tf.float32)
        scale = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels])
        offset = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels])
        if training and self.trainable:
            y, mean, variance = fused_batch_norm(x, scale, offset, self.epsilon)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        else:
            y, _, _ = fused_batch_norm(x, scale, offset, self.epsilon, tf.cast(self.moving_mean, tf.float32),
                                       tf.cast(self.moving_variance, tf.float32))
        return tf.cast(y, self.compute_dtype)

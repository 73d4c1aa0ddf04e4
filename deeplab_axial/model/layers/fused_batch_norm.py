"""Keras 3 BatchNormalization over the last axis, computed by TensorFlow's fused kernel.

Keras 3 builds batch norm from generic ops (moments, then a scale and shift), whose gradient is some twenty
elementwise ops and reductions; TensorFlow's `FusedBatchNormV3` is one op forward and one backward. On the attention
layer's [tokens, 2Dk + Dv] projection that halves the batch norm's forward + backward time on CPU. Same variables,
same statistics and moving-average update as the Keras layer; the synchronized, masked, renormalised and non-last-axis
cases fall back to it.
"""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package='deeplab_axial')
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` (any arguments) with a fused fast path for the last axis."""

    def _fused(self, ndim: int) -> bool:
        return not self.synchronized and not self.renorm and self.axis in (-1, ndim - 1)

    def call(self, inputs, training=None, mask=None):
        if mask is not None or not self._fused(len(inputs.shape)):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        # Statistics in float32 under mixed precision, as the Keras layer computes them.
        x = tf.reshape(tf.cast(inputs, tf.float32), [1, -1, 1, channels])
        scale = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels])
        offset = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels])
        if training and self.trainable:
            y, mean, unbiased_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=scale, offset=offset, mean=tf.zeros([0]), variance=tf.zeros([0]),
                epsilon=self.epsilon, is_training=True)
            # The kernel normalises with the biased variance but returns the unbiased one; Keras averages the biased.
            count = tf.cast(tf.shape(x)[1], tf.float32)
            variance = unbiased_variance * (count - 1.0) / tf.maximum(count, 1.0)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        else:
            y = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=scale, offset=offset, mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32), epsilon=self.epsilon, is_training=False)[0]
        return tf.cast(tf.reshape(y, tf.shape(inputs)), self.compute_dtype)

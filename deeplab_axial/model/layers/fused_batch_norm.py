"""Keras 3 BatchNormalization over the last axis, computed by TensorFlow's fused kernel.

Keras 3 builds batch norm from generic ops (moments, then a scale and shift), whose gradient is some twenty
elementwise ops and reductions; TensorFlow's `FusedBatchNormV3` is one op forward and one backward. On the attention
layer's [tokens, 2Dk + Dv] projection that halves the batch norm's forward + backward time on CPU. Same variables,
same statistics and moving-average update as the Keras layer; the synchronized, masked, renormalised and non-last-axis
cases fall back to it.

With moving statistics (inference) the batch norm of a feature map ([batch, height, width, channels], always a
convolution's output here) is the kernel's inference form, which TensorFlow's graph optimizer fuses into the
convolution before it (one pass instead of three: a 1x1 convolution + batch norm + ReLU on 257x513x256 -> 128 in
0.84x the time of convolution, multiply, bias add and ReLU). Other ranks use the per-channel scale and shift
(`inference_scale_and_shift`): a multiply and a bias add, with the kernel's rounding, a little faster on CPU than
the kernel alone, and foldable into the matmul before it (the attention's qkv projection).
"""

from typing import Optional, Tuple

import keras
import tensorflow as tf


def inference_scale_and_shift(scale: Optional[tf.Tensor], offset: Optional[tf.Tensor], mean: tf.Tensor,
                              variance: tf.Tensor, epsilon: float) -> Tuple[tf.Tensor, tf.Tensor]:
    """float32 [channels] (a, b) with which batch norm by `mean` and `variance` is y = x * a + b (None: no gamma or
    no beta)."""
    a = tf.math.rsqrt(tf.cast(variance, tf.float32) + epsilon)
    if scale is not None:
        a = a * tf.cast(scale, tf.float32)
    b = -tf.cast(mean, tf.float32) * a
    return a, b if offset is None else b + tf.cast(offset, tf.float32)


def fused_batch_norm(x: tf.Tensor, scale: tf.Tensor, offset: tf.Tensor, epsilon: float,
                     mean: Optional[tf.Tensor] = None,
                     variance: Optional[tf.Tensor] = None) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Batch norm of float32 `x` over its last axis: TensorFlow's fused kernel with the batch's statistics; with
    given ones, the kernel's inference form for a feature map (rank 4, which grappler fuses into a convolution before
    it), else a multiply and a bias add (`inference_scale_and_shift`).

    Args:
      x: float32 [..., channels].
      scale, offset: float32 [channels].
      epsilon: added to the variance.
      mean, variance: statistics to normalise with (inference); None for the batch's own (training).

    Returns:
      (y, mean, variance): the output in the shape of `x`, and the statistics used, the variance biased (the kernel
      returns the unbiased one for training; Keras averages the biased one).
    """
    if mean is not None and len(x.shape) == 4:
        y = tf.raw_ops.FusedBatchNormV3(x=x, scale=scale, offset=offset, mean=mean, variance=variance,
                                        epsilon=epsilon, is_training=False)[0]
        return y, mean, variance
    if mean is not None:
        a, b = inference_scale_and_shift(scale, offset, mean, variance, epsilon)
        return tf.nn.bias_add(x * a, b), mean, variance
    flat = tf.reshape(x, [1, -1, 1, x.shape[-1]])
    y, mean, unbiased_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=flat, scale=scale, offset=offset, mean=tf.zeros([0]), variance=tf.zeros([0]), epsilon=epsilon,
        is_training=True)
    count = tf.cast(tf.shape(flat)[1], tf.float32)
    variance = unbiased_variance * (count - 1.0) / tf.maximum(count, 1.0)
    return tf.reshape(y, tf.shape(x)), mean, variance


@keras.saving.register_keras_serializable(package='deeplab_axial')
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` (any arguments) with a fused fast path for the last axis."""

    def uses_batch_statistics(self, training: Optional[bool]) -> bool:
        """Whether a call with `training` normalises with the batch's statistics (else with the moving ones)."""
        return bool(training) and self.trainable

    def folded_scale_and_shift(self) -> Tuple[tf.Tensor, tf.Tensor]:
        """float32 [channels] (a, b) with which the moving statistics normalise: y = x * a + b."""
        return inference_scale_and_shift(self.gamma if self.scale else None, self.beta if self.center else None,
                                         self.moving_mean, self.moving_variance, self.epsilon)

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
        if self.uses_batch_statistics(training):
            y, mean, variance = fused_batch_norm(x, scale, offset, self.epsilon)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        else:
            y, _, _ = fused_batch_norm(x, scale, offset, self.epsilon, tf.cast(self.moving_mean, tf.float32),
                                       tf.cast(self.moving_variance, tf.float32))
        return tf.cast(y, self.compute_dtype)

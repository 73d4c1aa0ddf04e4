"""Batch normalisation of several similar terms with one set of statistics per (term, channel).

deeplab2 normalises the stacked attention logits with `BatchNormalization(axis=[0, 2])` (one gamma/beta per
(term, head)) and the stacked retrieved outputs with `axis=[0, 2, 4]` (one per (term, head, channel)). Keras 3's
`BatchNormalization` takes one axis only, and stacking copies of [batch, heads, length, length] tensors is what makes
the reference layer slow. This layer therefore keeps the statistics itself, in two ways: the caller passes each
term's batch moments (which it can compute on masked, blocked tensors without copies) and gets back a per-(term,
channel) scale and shift, so that `sum_t scale[t] * x_t + shift` is the sum of the normalised terms; or it passes
the terms, channels last, to `normalize_sum`, which runs the fused batch-norm kernel on each. Statistics are float32.
"""

from typing import List, Tuple

import keras
import tensorflow as tf

from deeplab_axial.model.layers.fused_batch_norm import fused_batch_norm


@keras.saving.register_keras_serializable(package='deeplab_axial')
class TermBatchNormalization(keras.layers.Layer):
    """One BatchNormalization per (term, channel), folded into a scale and shift.

    Args:
      num_terms: number of terms normalised separately.
      channels: channels per term (heads for the similarities, heads * depth for the retrieved outputs).
      momentum: moving-average momentum of the inference statistics.
      epsilon: added to the variance.
      synchronized: average the batch moments over all replicas of the current `tf.distribute` strategy.
      **kwargs: forwarded to `keras.layers.Layer`.
    """

    def __init__(self, num_terms: int, channels: int, momentum: float = 0.99, epsilon: float = 1e-3,
                 synchronized: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.num_terms = num_terms
        self.channels = channels
        self.momentum = momentum
        self.epsilon = epsilon
        self.synchronized = synchronized

    def build(self, input_shape=None):
        shape = (self.num_terms, self.channels)
        self.gamma = self.add_weight(name='gamma', shape=shape, initializer='ones', autocast=False)
        self.beta = self.add_weight(name='beta', shape=shape, initializer='zeros', autocast=False)
        self.moving_mean = self.add_weight(name='moving_mean', shape=shape, initializer='zeros',
                                           trainable=False, autocast=False)
        self.moving_variance = self.add_weight(name='moving_variance', shape=shape, initializer='ones',
                                               trainable=False, autocast=False)
        self.built = True

    def call(self, moments: List[Tuple[tf.Tensor, tf.Tensor]], training: bool = False) -> Tuple[tf.Tensor, tf.Tensor]:
        """Returns (scale, shift), each float32 [num_terms, channels].

        Args:
          moments: per term, (mean, mean of squares) of that term over its reduced axes, float32 [channels]. Only
            read when `training` is true.
          training: use (and record) the batch statistics instead of the moving ones.
        """
        if training:
            mean = tf.stack([m for m, _ in moments])
            mean_square = tf.stack([s for _, s in moments])
            if self.synchronized:
                mean, mean_square = _replica_mean(mean, mean_square)
            variance = tf.nn.relu(mean_square - tf.square(mean))
            self._record(mean, variance)
        else:
            mean = tf.convert_to_tensor(self.moving_mean)
            variance = tf.convert_to_tensor(self.moving_variance)
        scale = self.gamma * tf.math.rsqrt(variance + self.epsilon)
        shift = self.beta - mean * scale
        return scale, shift

    def normalize_sum(self, terms: List[tf.Tensor], training: bool = False) -> tf.Tensor:
        """Sum over t of terms[t] normalised per channel (last axis) with term t's statistics; float32.

        Without cross-replica statistics each term goes through TensorFlow's fused batch-norm kernel: one op
        forward and one backward per term, where moments, scale and shift cost some ten ops each way.
        """
        terms = [tf.cast(x, tf.float32) for x in terms]
        if self.synchronized:
            moments = [masked_moments(x, list(range(len(x.shape) - 1))) for x in terms] if training else []
            scale, shift = self(moments, training=training)
            return tf.reduce_sum(shift, 0) + tf.add_n([scale[t] * x for t, x in enumerate(terms)])
        outputs, means, variances = [], [], []
        for t, x in enumerate(terms):
            statistics = () if training else (self.moving_mean[t], self.moving_variance[t])
            y, mean, variance = fused_batch_norm(x, self.gamma[t], self.beta[t], self.epsilon, *statistics)
            outputs.append(y)
            means.append(mean)
            variances.append(variance)
        if training:
            self._record(tf.stack(means), tf.stack(variances))
        return tf.add_n(outputs)

    def _record(self, mean: tf.Tensor, variance: tf.Tensor) -> None:
        """Moves the inference statistics towards this batch's [num_terms, channels] mean and (biased) variance."""
        decay = 1.0 - self.momentum
        self.moving_mean.assign(self.moving_mean - (self.moving_mean - mean) * decay)
        self.moving_variance.assign(self.moving_variance - (self.moving_variance - variance) * decay)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(num_terms=self.num_terms, channels=self.channels, momentum=self.momentum,
                      epsilon=self.epsilon, synchronized=self.synchronized)
        return config


def _replica_mean(mean: tf.Tensor, mean_square: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """Averages moments over replicas (equal per-replica batch sizes, as in synchronous data parallelism)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return mean, mean_square
    both = context.all_reduce(tf.distribute.ReduceOp.MEAN, tf.stack([mean, mean_square]))
    return both[0], both[1]


def masked_moments(x: tf.Tensor, axes: List[int], mask: tf.Tensor = None, count: float = None
                   ) -> Tuple[tf.Tensor, tf.Tensor]:
    """Float32 (mean, mean of squares) of `x` over `axes`, counting only entries where `mask` is 1.

    Args:
      x: any-rank tensor.
      axes: axes to reduce; the remaining ones form the channel shape.
      mask: optional float32 tensor broadcastable to `x`, 1 for entries that exist.
      count: the number of unmasked entries per channel (static); required with `mask`.
    """
    x = tf.cast(x, tf.float32)
    if mask is None:
        return tf.reduce_mean(x, axes), tf.reduce_mean(tf.square(x), axes)
    masked = x * mask
    return tf.reduce_sum(masked, axes) / count, tf.reduce_sum(masked * x, axes) / count

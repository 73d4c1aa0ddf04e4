"""Drop path (stochastic depth, Huang et al. 2016): drop a residual branch per example during training."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package='deeplab_axial')
class DropPath(keras.layers.Layer):
    """Zeroes the whole input of an example with probability 1 - keep_prob and rescales the rest by 1 / keep_prob.

    Args:
      keep_prob: probability of keeping an example's branch; 1.0 is the identity.
      **kwargs: forwarded to `keras.layers.Layer`.
    """

    def __init__(self, keep_prob: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < keep_prob <= 1.0:
            raise ValueError(f'DropPath: `keep_prob` must be in (0, 1]. Received: keep_prob={keep_prob}')
        self.keep_prob = keep_prob

    def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
        if not training or self.keep_prob == 1.0:
            return inputs
        shape = [tf.shape(inputs)[0]] + [1] * (inputs.shape.rank - 1)
        keep = tf.floor(self.keep_prob + tf.random.uniform(shape, dtype=inputs.dtype))
        return inputs / tf.cast(self.keep_prob, inputs.dtype) * keep

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(keep_prob=self.keep_prob)
        return config

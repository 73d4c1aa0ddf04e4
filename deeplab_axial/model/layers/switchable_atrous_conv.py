"""Switchable atrous convolution (SAC; Qiao et al., "DetectoRS", 2020) as deeplab2's SWideRNets use it.

One kernel is applied at two rates, r and 3r, and a per-pixel switch s in [0, 1] (a 1x1 conv with bias of the 5x5
average-pooled input, initialised to zero) mixes them: s * conv_3r(x) + (1 - s) * conv_r(x). deeplab2 wraps it in
global contexts: the image mean through a 1x1 conv (zero-initialised, with bias) added to every pixel, before and after
the convolution (`ConvBN(use_sac=True)`). Names follow deeplab2's checkpoints (`switch`, `convolution`).
"""

from typing import Sequence

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package='deeplab_axial')
class SwitchableAtrousConv2D(keras.layers.Layer):
    """Stride-1 'same' convolution without bias whose rate switches per pixel between r and 3r.

    Args:
      filters: output channels.
      kernel_size: square kernel size.
      atrous_rate: the small rate r (the large one is 3r).
      **kwargs: forwarded to `keras.layers.Layer`.
    """

    def __init__(self, filters: int, kernel_size: int = 3, atrous_rate: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.atrous_rate = atrous_rate
        # === Layers ===
        self.switch = keras.layers.Conv2D(1, 1, kernel_initializer='zeros', bias_initializer='zeros', name='switch')

    def build(self, input_shape: Sequence[int]):
        self.kernel = self.add_weight(name='kernel', shape=(self.kernel_size, self.kernel_size, input_shape[-1],
                                                            self.filters), initializer='he_normal')
        self.switch.build(input_shape)
        self.built = True

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        kernel = tf.cast(self.kernel, inputs.dtype)
        # TensorFlow's 'SAME' average excludes the padding, as deeplab2's Keras pooling layer does.
        switch = self.switch(tf.nn.avg_pool2d(inputs, 5, 1, 'SAME'))
        small = tf.nn.convolution(inputs, kernel, padding='SAME', dilations=self.atrous_rate)
        large = tf.nn.convolution(inputs, kernel, padding='SAME', dilations=3 * self.atrous_rate)
        return switch * large + (1.0 - switch) * small

    def compute_output_shape(self, input_shape: Sequence[int]):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size, atrous_rate=self.atrous_rate)
        return config


@keras.saving.register_keras_serializable(package='deeplab_axial')
class GlobalContext(keras.layers.Layer):
    """x + conv1x1(mean of x over the image): a per-image bias, zero at initialisation."""

    def build(self, input_shape: Sequence[int]):
        self.convolution = keras.layers.Conv2D(input_shape[-1], 1, kernel_initializer='zeros',
                                               bias_initializer='zeros', name='convolution')
        self.convolution.build((input_shape[0], 1, 1, input_shape[-1]))
        self.built = True

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return inputs + self.convolution(tf.reduce_mean(inputs, axis=[1, 2], keepdims=True))

    def compute_output_shape(self, input_shape: Sequence[int]):
        return input_shape

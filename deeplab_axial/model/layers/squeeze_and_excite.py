"""Simplified squeeze-and-excitation (one 1x1 conv; Lee and Park, CenterMask, 2020) with deeplab2's hard sigmoid.

    y = x * hard_sigmoid(conv1x1(mean of x over the image))

as deeplab2's `SimplifiedSqueezeAndExcite` (its residual blocks with `use_squeeze_and_excite`); the conv keeps the
channel count, has a bias and a VarianceScaling initialiser, and is named `se_conv` as in deeplab2's checkpoints.
"""

from typing import Sequence

import keras
import tensorflow as tf

from deeplab_axial.model.layers import activations


@keras.saving.register_keras_serializable(package='deeplab_axial')
class SqueezeAndExcite(keras.layers.Layer):
    """Rescales each channel of an example by a gate in [0, 1] computed from the channel means."""

    def build(self, input_shape: Sequence[int]):
        self.se_conv = keras.layers.Conv2D(input_shape[-1], 1, kernel_initializer='variance_scaling', name='se_conv')
        self.se_conv.build((input_shape[0], 1, 1, input_shape[-1]))
        self.built = True

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return activations.hard_sigmoid(self.se_conv(tf.reduce_mean(inputs, axis=[1, 2], keepdims=True))) * inputs

    def compute_output_shape(self, input_shape: Sequence[int]):
        return input_shape

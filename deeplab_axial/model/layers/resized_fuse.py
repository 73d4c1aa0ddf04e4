"""deeplab2's `ResizedFuse` (MaX-DeepLab's stacked decoder): features of several strides summed at one size.

Each input, a block sum before activation, reaches [height, width, channels] by the cheapest of:
  - the same channels: bilinear resize (align_corners), no activation, no conv (the identity at the same size);
  - half the size (ceil) away: act -> 1x1 conv with stride 2 + BN (`strided_conv_bn<i>`);
  - otherwise: act -> 1x1 conv + BN (`resized_conv_bn<i>`), then bilinear resize (align_corners);
and the results are added. <i> counts the inputs from 1, as in deeplab2's checkpoints.
"""

from typing import List, Sequence

import keras
import tensorflow as tf

from deeplab_axial.resize import resize_align_corners
from deeplab_axial.model.layers import activations
from deeplab_axial.model.layers.convolutions import ConvBN


@keras.saving.register_keras_serializable(package='deeplab_axial')
class ResizedFuse(keras.layers.Layer):
    """Sums a list of [batch, h_i, w_i, c_i] features at [batch, height, width, channels].

    Args:
      height: output height.
      width: output width.
      channels: output channels.
      activation: `activations` name applied before each projection.
      bn_momentum: batch-norm momentum.
      bn_epsilon: batch-norm epsilon.
      use_sync_batchnorm: synchronise batch statistics across replicas.
      **kwargs: forwarded to `keras.layers.Layer`.
    """

    def __init__(self, height: int, width: int, channels: int, activation: str = 'relu', bn_momentum: float = 0.99,
                 bn_epsilon: float = 1e-3, use_sync_batchnorm: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.height = height
        self.width = width
        self.channels = channels
        self.activation = activation
        self.bn_args = dict(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, use_sync_batchnorm=use_sync_batchnorm)
        self._activation_fn = activations.get(activation)
        self._projections: List[str] = []

    def _is_halving(self, shape: Sequence[int]) -> bool:
        return (shape[1] + 1) // 2 == self.height and (shape[2] + 1) // 2 == self.width

    def build(self, input_shapes: Sequence[Sequence[int]]):
        # Projection layer names per input ('' = resize only); attributes, so that checkpoints track them by name.
        self._projections = []
        for index, shape in enumerate(input_shapes, start=1):
            if shape[-1] == self.channels:
                self._projections.append('')
                continue
            strided = self._is_halving(shape)
            name = f'strided_conv_bn{index}' if strided else f'resized_conv_bn{index}'
            layer = ConvBN(self.channels, 1, 2 if strided else 1, activation=False, name=name, **self.bn_args)
            layer.build(tuple(shape))
            setattr(self, name, layer)
            self._projections.append(name)
        self.built = True

    def call(self, inputs: Sequence[tf.Tensor], training: bool = False) -> tf.Tensor:
        outputs = []
        for feature, name in zip(inputs, self._projections):
            if name:
                feature = getattr(self, name)(self._activation_fn(feature), training=training)
            # The resize computes in float32 (as deeplab2's); the sum keeps the compute dtype.
            outputs.append(tf.cast(resize_align_corners(feature, (self.height, self.width)), feature.dtype))
        return tf.add_n(outputs)

    def compute_output_shape(self, input_shapes):
        return (input_shapes[0][0], self.height, self.width, self.channels)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(height=self.height, width=self.width, channels=self.channels, activation=self.activation,
                      **self.bn_args)
        return config

"""deeplab2's Inception stem (its `InceptionSTEM`, the 'resnet_beta' backbones), named as in its checkpoints.

    3x3/2 conv c + BN + act (`conv1_bn_act`) -> 3x3 conv c + BN + act (`conv2_bn_act`) -> 3x3 conv d + BN (`conv3_bn`)

with c = int(64 * width multiplier) and d = int(128 * width multiplier) (truncated, as deeplab2). The output is not
activated: in deeplab2's order the first residual block activates it.
"""

from typing import Sequence

import keras
import tensorflow as tf

from deeplab_axial.model.layers.convolutions import ConvBN


@keras.saving.register_keras_serializable(package='deeplab_axial')
class InceptionStem(keras.layers.Layer):
    """[batch, H, W, 3] -> [batch, ceil(H / 2), ceil(W / 2), d], before activation.

    Args:
      width_multiplier: c = int(64 * width_multiplier), d = int(128 * width_multiplier).
      activation: `activations` name of the first two convs' activation.
      bn_momentum: batch-norm momentum.
      bn_epsilon: batch-norm epsilon.
      use_sync_batchnorm: synchronise batch statistics across replicas.
      **kwargs: forwarded to `keras.layers.Layer`.
    """

    def __init__(self, width_multiplier: float = 1.0, activation: str = 'relu', bn_momentum: float = 0.99,
                 bn_epsilon: float = 1e-3, use_sync_batchnorm: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.width_multiplier = width_multiplier
        self.activation = activation
        self.bn_args = dict(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, use_sync_batchnorm=use_sync_batchnorm)
        self.channels = int(64 * width_multiplier)
        # === Layers ===
        self.conv1_bn_act = ConvBN(self.channels, 3, 2, activation=activation, name='conv1_bn_act', **self.bn_args)
        self.conv2_bn_act = ConvBN(self.channels, 3, activation=activation, name='conv2_bn_act', **self.bn_args)
        self.conv3_bn = ConvBN(int(128 * width_multiplier), 3, activation=False, name='conv3_bn', **self.bn_args)

    def build(self, input_shape: Sequence[int]):
        shape = tuple(input_shape)
        for conv in (self.conv1_bn_act, self.conv2_bn_act, self.conv3_bn):
            conv.build(shape)
            shape = tuple(conv.compute_output_shape(shape))
        self.built = True

    def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
        x = self.conv1_bn_act(inputs, training=training)
        x = self.conv2_bn_act(x, training=training)
        return self.conv3_bn(x, training=training)

    def compute_output_shape(self, input_shape):
        return self.conv3_bn.compute_output_shape(self.conv1_bn_act.compute_output_shape(input_shape))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(width_multiplier=self.width_multiplier, activation=self.activation, **self.bn_args)
        return config

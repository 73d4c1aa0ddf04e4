"""Convolution + batch norm (+ ReLU) building blocks shared by stems, blocks and decoders."""

from typing import Optional

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package='deeplab_axial')
class ConvBN(keras.layers.Layer):
    """Conv2D (no bias, he_normal) -> BatchNormalization -> optional ReLU.

    Args:
      filters: output channels (ignored by a depthwise convolution, which keeps the input channels).
      kernel_size: square kernel size.
      strides: convolution stride ('same' padding, so the output size is ceil(input / strides)).
      activation: apply ReLU after the batch norm.
      depthwise: a depthwise convolution.
      bn_gamma_zero: initialise the batch-norm gamma to zero (last layer of a residual branch).
      bn_momentum: batch-norm momentum.
      bn_epsilon: batch-norm epsilon.
      use_sync_batchnorm: synchronise batch statistics across replicas.
      symmetric_padding: zero-pad (kernel_size - 1) // 2 on every side, then convolve without padding (PyTorch's
        `padding=k // 2`). 'same' pads a strided conv of an even size one less at the start: the output size is
        the same, the values are not.
      **kwargs: forwarded to `keras.layers.Layer`.
    """

    def __init__(self, filters: Optional[int], kernel_size: int = 1, strides: int = 1, activation: bool = True,
                 depthwise: bool = False, bn_gamma_zero: bool = False, bn_momentum: float = 0.99,
                 bn_epsilon: float = 1e-3, use_sync_batchnorm: bool = False, symmetric_padding: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.activation = activation
        self.depthwise = depthwise
        self.bn_gamma_zero = bn_gamma_zero
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.use_sync_batchnorm = use_sync_batchnorm
        self.symmetric_padding = symmetric_padding
        # === Layers ===
        padding = 'valid' if symmetric_padding else 'same'
        self.padding = keras.layers.ZeroPadding2D((kernel_size - 1) // 2, name='padding') if symmetric_padding \
            else None
        if depthwise:
            self.conv = keras.layers.DepthwiseConv2D(kernel_size, strides, padding=padding, use_bias=False,
                                                     depthwise_initializer='he_normal', name='depthwise_conv')
        else:
            self.conv = keras.layers.Conv2D(filters, kernel_size, strides, padding=padding, use_bias=False,
                                            kernel_initializer='he_normal', name='conv')
        self.batch_norm = keras.layers.BatchNormalization(
            momentum=bn_momentum, epsilon=bn_epsilon, synchronized=use_sync_batchnorm,
            gamma_initializer='zeros' if bn_gamma_zero else 'ones', name='batch_norm')

    def build(self, input_shape):
        if self.padding is not None:
            input_shape = self.padding.compute_output_shape(input_shape)
        self.conv.build(input_shape)
        self.batch_norm.build(self.conv.compute_output_shape(input_shape))
        self.built = True

    def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
        x = self.padding(inputs) if self.padding is not None else inputs
        x = self.batch_norm(self.conv(x), training=training)
        return tf.nn.relu(x) if self.activation else x

    def compute_output_shape(self, input_shape):
        if self.padding is not None:
            input_shape = self.padding.compute_output_shape(input_shape)
        return self.conv.compute_output_shape(input_shape)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size, strides=self.strides,
                      activation=self.activation, depthwise=self.depthwise, bn_gamma_zero=self.bn_gamma_zero,
                      bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                      use_sync_batchnorm=self.use_sync_batchnorm, symmetric_padding=self.symmetric_padding)
        return config


@keras.saving.register_keras_serializable(package='deeplab_axial')
class DepthwiseSeparableConv(keras.layers.Layer):
    """Depthwise k x k conv + BN + ReLU, then pointwise 1x1 conv + BN + ReLU (Panoptic-DeepLab's fusion conv).

    Args:
      filters: output channels of the pointwise conv.
      kernel_size: depthwise kernel size.
      bn_momentum: batch-norm momentum.
      bn_epsilon: batch-norm epsilon.
      use_sync_batchnorm: synchronise batch statistics across replicas.
      **kwargs: forwarded to `keras.layers.Layer`.
    """

    def __init__(self, filters: int, kernel_size: int = 5, bn_momentum: float = 0.99, bn_epsilon: float = 1e-3,
                 use_sync_batchnorm: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.use_sync_batchnorm = use_sync_batchnorm
        self._bn_args = dict(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, use_sync_batchnorm=use_sync_batchnorm)
        # === Layers ===
        self.depthwise = ConvBN(None, kernel_size, depthwise=True, name='depthwise', **self._bn_args)
        self.pointwise = ConvBN(filters, 1, name='pointwise', **self._bn_args)

    def build(self, input_shape):
        self.depthwise.build(input_shape)
        self.pointwise.build(input_shape)
        self.built = True

    def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
        return self.pointwise(self.depthwise(inputs, training=training), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size, **self._bn_args)
        return config

"""Convolution + batch norm (+ activation) building blocks shared by stems, blocks and decoders."""

from typing import Optional, Union

import keras
import tensorflow as tf

from deeplab_axial.model.layers import activations
from deeplab_axial.model.layers.fused_batch_norm import FusedBatchNormalization
from deeplab_axial.model.layers.switchable_atrous_conv import GlobalContext, SwitchableAtrousConv2D


@tf.custom_gradient
def depthwise_conv2d_same(inputs: tf.Tensor, kernel: tf.Tensor):
    """`tf.nn.depthwise_conv2d` with stride 1 and 'SAME' padding, [kh, kw, channels, 1] kernel.

    The kernel's gradient, sum over the batch and positions of the padded input times the output gradient, is itself
    a depthwise convolution: the padded input convolved ('VALID') with the output gradient as a [height, width]
    filter, batch folded into the channels. On CPU that runs about 4x faster than TensorFlow's
    DepthwiseConv2dNativeBackpropFilter (5x5 kernel, 129x129x288 input: 18 vs 81 ms), the largest single op of the
    Panoptic-DeepLab decoder's training step.
    """
    strides = [1, 1, 1, 1]
    outputs = tf.nn.depthwise_conv2d(inputs, kernel, strides, 'SAME')

    def grad(d_outputs):
        d_inputs = tf.nn.depthwise_conv2d_backprop_input(tf.shape(inputs), kernel, d_outputs, strides, 'SAME')
        kh, kw, channels, _ = kernel.shape
        padded = tf.pad(inputs, [[0, 0], [(kh - 1) // 2, kh // 2], [(kw - 1) // 2, kw // 2], [0, 0]])
        batch = tf.shape(inputs)[0]
        # [batch, h, w, c] -> [1, h, w, batch * c]: one depthwise convolution for all examples.
        padded = tf.reshape(tf.transpose(padded, [1, 2, 0, 3]), tf.concat([[1], tf.shape(padded)[1:3], [-1]], 0))
        d_flat = tf.reshape(tf.transpose(d_outputs, [1, 2, 0, 3]), tf.concat([tf.shape(d_outputs)[1:3], [-1, 1]], 0))
        d_kernel = tf.nn.depthwise_conv2d(padded, d_flat, strides, 'VALID')  # [1, kh, kw, batch * c]
        d_kernel = tf.reduce_sum(tf.reshape(d_kernel, [kh, kw, batch, channels]), 2)
        return d_inputs, d_kernel[..., None]
    return outputs, grad


class _DepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D` computed by `depthwise_conv2d_same` where it applies (stride 1, 'same', one
    output channel per input channel, channels last, no dilation or bias); same variables."""

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        if (tuple(self.strides) != (1, 1) or tuple(self.dilation_rate) != (1, 1) or self.depth_multiplier != 1
                or self.padding != 'same' or self.data_format != 'channels_last' or self.use_bias):
            return super().call(inputs)
        return depthwise_conv2d_same(inputs, tf.cast(self.kernel, inputs.dtype))


@keras.saving.register_keras_serializable(package='deeplab_axial')
class ConvBN(keras.layers.Layer):
    """Conv2D (no bias, he_normal) -> BatchNormalization -> optional activation.

    Args:
      filters: output channels (ignored by a depthwise convolution, which keeps the input channels).
      kernel_size: square kernel size.
      strides: convolution stride ('same' padding, so the output size is ceil(input / strides)).
      activation: True (ReLU), False (none) or an `activations` name ('gelu', ...) applied after the batch norm.
      depthwise: a depthwise convolution.
      atrous_rate: dilation of the convolution (stride 1 only).
      use_sac: switchable atrous convolution (SWideRNet, Qiao et al. 2020) as deeplab2 builds it: a global context
        (mean over the image, 1x1 conv, added) before and after the convolution, which switches per pixel between
        rates `atrous_rate` and 3 * `atrous_rate` when unstrided (a strided one keeps only the global contexts).
      bn_gamma_zero: initialise the batch-norm gamma to zero (last layer of a residual branch).
      bn_momentum: batch-norm momentum.
      bn_epsilon: batch-norm epsilon.
      use_sync_batchnorm: synchronise batch statistics across replicas.
      symmetric_padding: zero-pad (kernel_size - 1) * atrous_rate // 2 on every side, then convolve without padding (PyTorch's
        `padding=k // 2`). 'same' pads a strided conv of an even size one less at the start: the output size is
        the same, the values are not.
      **kwargs: forwarded to `keras.layers.Layer`.
    """

    def __init__(self, filters: Optional[int], kernel_size: int = 1, strides: int = 1,
                 activation: Union[bool, str] = True, depthwise: bool = False, bn_gamma_zero: bool = False,
                 bn_momentum: float = 0.99, bn_epsilon: float = 1e-3, use_sync_batchnorm: bool = False,
                 atrous_rate: int = 1, use_sac: bool = False, symmetric_padding: bool = False, **kwargs):
        super().__init__(**kwargs)
        if use_sac and depthwise:
            raise ValueError('ConvBN: `use_sac` needs a regular (not depthwise) convolution')
        if use_sac and symmetric_padding:
            raise ValueError('ConvBN: `symmetric_padding` is not available with `use_sac`')
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.activation = activation
        self.depthwise = depthwise
        self.bn_gamma_zero = bn_gamma_zero
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.use_sync_batchnorm = use_sync_batchnorm
        self.atrous_rate = atrous_rate
        self.use_sac = use_sac
        self.symmetric_padding = symmetric_padding
        if isinstance(activation, str):
            self._activation_fn = activations.get(activation)
        else:
            self._activation_fn = tf.nn.relu if activation else None
        # === Layers ===
        padding = 'valid' if symmetric_padding else 'same'
        self.padding = keras.layers.ZeroPadding2D((kernel_size - 1) * atrous_rate // 2, name='padding') \
            if symmetric_padding else None
        self.pre_global_context = GlobalContext(name='pre_global_context') if use_sac else None
        self.post_global_context = GlobalContext(name='post_global_context') if use_sac else None
        if depthwise:
            self.conv = _DepthwiseConv2D(kernel_size, strides, padding=padding, use_bias=False,
                                         dilation_rate=atrous_rate, depthwise_initializer='he_normal',
                                         name='depthwise_conv')
        elif use_sac and strides == 1:
            self.conv = SwitchableAtrousConv2D(filters, kernel_size, atrous_rate, name='conv')
        else:
            self.conv = keras.layers.Conv2D(filters, kernel_size, strides, padding=padding, use_bias=False,
                                            dilation_rate=atrous_rate, kernel_initializer='he_normal', name='conv')
        self.batch_norm = FusedBatchNormalization(
            momentum=bn_momentum, epsilon=bn_epsilon, synchronized=use_sync_batchnorm,
            gamma_initializer='zeros' if bn_gamma_zero else 'ones', name='batch_norm')

    def build(self, input_shape):
        if self.padding is not None:
            input_shape = self.padding.compute_output_shape(input_shape)
        output_shape = self.conv.compute_output_shape(input_shape)
        if self.use_sac:
            self.pre_global_context.build(input_shape)
            self.post_global_context.build(output_shape)
        self.conv.build(input_shape)
        self.batch_norm.build(output_shape)
        self.built = True

    def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
        x = inputs if self.pre_global_context is None else self.pre_global_context(inputs)
        if self.padding is not None:
            x = self.padding(x)
        x = self.conv(x)
        if self.post_global_context is not None:
            x = self.post_global_context(x)
        x = self.batch_norm(x, training=training)
        return x if self._activation_fn is None else self._activation_fn(x)

    def compute_output_shape(self, input_shape):
        if self.padding is not None:
            input_shape = self.padding.compute_output_shape(input_shape)
        return self.conv.compute_output_shape(input_shape)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size, strides=self.strides,
                      activation=self.activation, depthwise=self.depthwise, bn_gamma_zero=self.bn_gamma_zero,
                      bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                      use_sync_batchnorm=self.use_sync_batchnorm, atrous_rate=self.atrous_rate, use_sac=self.use_sac,
                      symmetric_padding=self.symmetric_padding)
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

"""The residual wrapper shared by the axial and convolutional blocks.

    y = branch(x) -> optional squeeze-and-excitation -> drop path;  out = y + shortcut(x)

The shortcut is a 1x1 conv + BN (with the block's stride) when the channels change, or when the block strides and
`project_strided_shortcut` is set (ResNet); otherwise x, subsampled x[:, ::s, ::s] when strided (deeplab2).

Two activation orders, equivalent between blocks but not at a network's ends:
  post-activation (default, ResNet):      the input is activated already; the block returns act(out).
  `activate_input` (deeplab2's order):    the block activates its input (branch and shortcut both see act(x)) and
                                           returns out before any activation; the encoder activates the endpoints.
deeplab2's stacked decoder (MaX-DeepLab-L) fuses those non-activated sums, so its encoder needs the second order.
"""

from typing import Optional, Sequence

import keras
import tensorflow as tf

from deeplab_axial.model.layers import activations
from deeplab_axial.model.layers.convolutions import ConvBN
from deeplab_axial.model.layers.drop_path import DropPath
from deeplab_axial.model.layers.squeeze_and_excite import SqueezeAndExcite


class ResidualBlock(keras.layers.Layer):
    """Base class: subclasses create their branch layers, set `output_channels`, and implement `build_branch`,
    `branch` and `branch_output_shape`.

    Args:
      strides: spatial stride of the block (taken inside the branch and by the shortcut).
      drop_path_keep_prob: keep probability of the residual branch (stochastic depth).
      use_squeeze_and_excite: rescale the branch's channels (`SqueezeAndExcite`).
      activation: `activations` name of the block's activation.
      activate_input: deeplab2's activation order (module docstring).
      project_strided_shortcut: project, rather than subsample, the shortcut of a strided block whose channels do
        not change.
      bn_momentum: momentum of every batch norm.
      bn_epsilon: epsilon of every batch norm.
      use_sync_batchnorm: synchronise batch statistics across replicas.
      **kwargs: forwarded to `keras.layers.Layer`.
    """

    output_channels: int

    def __init__(self, strides: int = 1, drop_path_keep_prob: float = 1.0, use_squeeze_and_excite: bool = False,
                 activation: str = 'relu', activate_input: bool = False, project_strided_shortcut: bool = True,
                 bn_momentum: float = 0.99, bn_epsilon: float = 1e-3, use_sync_batchnorm: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.strides = strides
        self.drop_path_keep_prob = drop_path_keep_prob
        self.use_squeeze_and_excite = use_squeeze_and_excite
        self.activation = activation
        self.activate_input = activate_input
        self.project_strided_shortcut = project_strided_shortcut
        self.bn_args = dict(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, use_sync_batchnorm=use_sync_batchnorm)
        self._activation_fn = activations.get(activation)
        self.shortcut: Optional[ConvBN] = None
        # === Layers ===
        self.squeeze_and_excite = SqueezeAndExcite(name='squeeze_and_excite') if use_squeeze_and_excite else None
        self.drop_path = DropPath(drop_path_keep_prob, name='drop_path')

    def build_branch(self, input_shape: Sequence[Optional[int]]) -> None:
        raise NotImplementedError

    def branch(self, inputs: tf.Tensor, training: bool) -> tf.Tensor:
        raise NotImplementedError

    def branch_output_shape(self, input_shape: Sequence[Optional[int]]) -> tuple:
        raise NotImplementedError

    def build(self, input_shape):
        self.build_branch(input_shape)
        if self.squeeze_and_excite is not None:
            self.squeeze_and_excite.build(self.branch_output_shape(input_shape))
        if input_shape[-1] != self.output_channels or (self.strides != 1 and self.project_strided_shortcut):
            self.shortcut = ConvBN(self.output_channels, 1, self.strides, activation=False, name='shortcut',
                                   **self.bn_args)
            self.shortcut.build(input_shape)
        self.built = True

    def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
        """[batch, height, width, channels] -> [batch, ceil(height / s), ceil(width / s), output_channels]."""
        x = self._activation_fn(inputs) if self.activate_input else inputs
        y = self.branch(x, training)
        if self.squeeze_and_excite is not None:
            y = self.squeeze_and_excite(y)
        y = self.drop_path(y, training=training)
        if self.shortcut is not None:
            shortcut = self.shortcut(x, training=training)
        else:
            shortcut = x[:, ::self.strides, ::self.strides] if self.strides != 1 else x
        return y + shortcut if self.activate_input else self._activation_fn(y + shortcut)

    def compute_output_shape(self, input_shape):
        return tuple(self.branch_output_shape(input_shape))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(strides=self.strides, drop_path_keep_prob=self.drop_path_keep_prob,
                      use_squeeze_and_excite=self.use_squeeze_and_excite, activation=self.activation,
                      activate_input=self.activate_input, project_strided_shortcut=self.project_strided_shortcut,
                      **self.bn_args)
        return config

"""The axial-attention bottleneck block (Axial-DeepLab §3.2): a ResNet bottleneck whose 3x3 conv is replaced by a
height-axis and a width-axis attention layer.

    1x1 conv 2f -> BN -> ReLU -> AxialAttention2D(f: Dk = f, Dv = 2f) -> ReLU -> 1x1 conv 4f -> BN (gamma = 0)
    (+ drop path) + shortcut (1x1 conv with stride + BN when the shape changes) -> ReLU

deeplab2 projects the shortcut only when the channels change and subsamples it, x[:, ::s, ::s], when only the
stride does; `project_strided_shortcut=False` builds that variant (to run deeplab2's checkpoints).

f is deeplab2's `filters_list[1]`; for Axial-ResNet-L's first stage f = 64 (d_q = 8, d_out = 16 per head).
"""

from typing import Optional

import keras
import tensorflow as tf

from deeplab_axial.model.layers.axial_attention import AxialAttention2D
from deeplab_axial.model.layers.convolutions import ConvBN
from deeplab_axial.model.layers.drop_path import DropPath


@keras.saving.register_keras_serializable(package='deeplab_axial')
class AxialBlock(keras.layers.Layer):
    """Axial-attention bottleneck block with post-activation output.

    Args:
      filters: attention width f; the block outputs 4f channels.
      strides: spatial stride, taken after each attention axis (and by the 1x1 shortcut conv).
      span: None (global) or an odd local span of both axial layers.
      num_heads: attention heads.
      drop_path_keep_prob: keep probability of the residual branch (stochastic depth).
      bn_momentum: momentum of every batch norm.
      bn_epsilon: epsilon of every batch norm.
      use_sync_batchnorm: synchronise batch statistics across replicas.
      block_size: largest query block of local attention (`AxialAttention`).
      max_span: relative tables have 2 * max_span - 1 rows.
      core_dtype: dtype of the attention core's products (`AxialAttention`).
      project_strided_shortcut: a strided block whose channels do not change projects its shortcut by a strided
        1x1 conv + BN (True, ResNet) or subsamples it (False, deeplab2).
      **kwargs: forwarded to `keras.layers.Layer`.
    """

    def __init__(self, filters: int, strides: int = 1, span: Optional[int] = None, num_heads: int = 8,
                 drop_path_keep_prob: float = 1.0, bn_momentum: float = 0.99, bn_epsilon: float = 1e-3,
                 use_sync_batchnorm: bool = False, block_size: int = 64, max_span: int = 255,
                 project_strided_shortcut: bool = True, core_dtype: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.strides = strides
        self.span = span
        self.num_heads = num_heads
        self.drop_path_keep_prob = drop_path_keep_prob
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.use_sync_batchnorm = use_sync_batchnorm
        self.block_size = block_size
        self.max_span = max_span
        self.core_dtype = core_dtype
        self.project_strided_shortcut = project_strided_shortcut
        bn_args = dict(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, use_sync_batchnorm=use_sync_batchnorm)
        self.shortcut: Optional[ConvBN] = None
        # === Layers ===
        self.conv1 = ConvBN(2 * filters, 1, name='conv1', **bn_args)
        self.attention = AxialAttention2D(filters, key_expansion=1, value_expansion=2, num_heads=num_heads,
                                          span=span, strides=strides, block_size=block_size, max_span=max_span,
                                          core_dtype=core_dtype,
                                          name='attention', **bn_args)
        self.conv3 = ConvBN(4 * filters, 1, activation=False, bn_gamma_zero=True, name='conv3', **bn_args)
        self.drop_path = DropPath(drop_path_keep_prob, name='drop_path')
        self._bn_args = bn_args

    def build(self, input_shape):
        self.conv1.build(input_shape)
        attention_input = tuple(input_shape[:-1]) + (2 * self.filters,)
        self.attention.build(attention_input)
        attention_output = self.attention.compute_output_shape(attention_input)
        self.conv3.build(attention_output)
        if input_shape[-1] != 4 * self.filters or (self.strides != 1 and self.project_strided_shortcut):
            self.shortcut = ConvBN(4 * self.filters, 1, self.strides, activation=False, name='shortcut',
                                   **self._bn_args)
            self.shortcut.build(input_shape)
        self.built = True

    def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
        """[batch, height, width, channels] -> [batch, ceil(height/s), ceil(width/s), 4 * filters]."""
        x = self.conv1(inputs, training=training)
        x = tf.nn.relu(self.attention(x, training=training))
        x = self.drop_path(self.conv3(x, training=training), training=training)
        if self.shortcut is not None:
            shortcut = self.shortcut(inputs, training=training)
        else:
            shortcut = inputs[:, ::self.strides, ::self.strides] if self.strides != 1 else inputs
        return tf.nn.relu(x + shortcut)

    def compute_output_shape(self, input_shape):
        return self.attention.compute_output_shape(input_shape)[:-1] + (4 * self.filters,)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(filters=self.filters, strides=self.strides, span=self.span, num_heads=self.num_heads,
                      drop_path_keep_prob=self.drop_path_keep_prob, block_size=self.block_size,
                      max_span=self.max_span, project_strided_shortcut=self.project_strided_shortcut,
                      core_dtype=self.core_dtype, **self._bn_args)
        return config

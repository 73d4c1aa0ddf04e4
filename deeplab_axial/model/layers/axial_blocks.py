"""The axial-attention bottleneck block (Axial-DeepLab §3.2): a ResNet bottleneck whose 3x3 conv is replaced by a
height-axis and a width-axis attention layer.

    1x1 conv e*f -> BN -> act -> AxialAttention2D(f: Dk = k*f, Dv = v*f) -> act -> 1x1 conv 4f -> BN (gamma = 0)
    (+ squeeze-and-excitation, drop path) + shortcut (`ResidualBlock`)

with deeplab2's filters_list [e*f, f, 4f]: e = `bottleneck_expansion`, k / v the key / value expansions. Axial-DeepLab
and MaX-DeepLab-S use (e, k, v) = (2, 1, 2), deeplab2's SWideRNets and MaX-DeepLab-L (4, 2, 4). For Axial-ResNet-L's
first stage f = 64 (d_q = 8, d_out = 16 per head).

deeplab2 projects the shortcut only when the channels change and subsamples it, x[:, ::s, ::s], when only the
stride does; `project_strided_shortcut=False` builds that variant (to run deeplab2's checkpoints).
"""

from typing import Optional

import keras
import tensorflow as tf

from deeplab_axial.model.layers.axial_attention import AxialAttention2D
from deeplab_axial.model.layers.convolutions import ConvBN
from deeplab_axial.model.layers.residual_block import ResidualBlock


@keras.saving.register_keras_serializable(package='deeplab_axial')
class AxialBlock(ResidualBlock):
    """Axial-attention bottleneck block (post-activation output unless `activate_input`).

    Args:
      filters: attention width f; the block outputs 4f channels.
      strides: spatial stride, taken after each attention axis or by an average pool (`stride_by_average_pool`),
        and by the 1x1 shortcut conv.
      span: None (global) or an odd local span of both axial layers.
      num_heads: attention heads.
      block_size: largest query block of local attention (`AxialAttention`).
      max_span: relative tables have 2 * max_span - 1 rows.
      query_shape: axes up to this length attend globally whatever the span (deeplab2's rule; `AxialAttention`).
      bottleneck_expansion: the first 1x1 conv has bottleneck_expansion * f channels.
      key_expansion: attention key depth over f.
      value_expansion: attention value depth (its output channels) over f.
      stride_by_average_pool: both attention axes run at full resolution, then an average pool strides (the
        official PyTorch block) instead of subsampling after each axis.
      core_dtype: dtype of the attention core's products (`AxialAttention`; None: the compute dtype).
      **kwargs: `ResidualBlock` arguments (drop path, squeeze-and-excitation, activation and its order, shortcut
        layout, batch-norm settings), then `keras.layers.Layer` arguments.
    """

    def __init__(self, filters: int, strides: int = 1, span: Optional[int] = None, num_heads: int = 8,
                 block_size: int = 64, max_span: int = 255, query_shape: Optional[int] = None,
                 bottleneck_expansion: int = 2, key_expansion: float = 1, value_expansion: float = 2,
                 stride_by_average_pool: bool = False, core_dtype: Optional[str] = None, **kwargs):
        super().__init__(strides=strides, **kwargs)
        self.filters = filters
        self.span = span
        self.num_heads = num_heads
        self.block_size = block_size
        self.max_span = max_span
        self.query_shape = query_shape
        self.bottleneck_expansion = bottleneck_expansion
        self.key_expansion = key_expansion
        self.value_expansion = value_expansion
        self.stride_by_average_pool = stride_by_average_pool
        self.core_dtype = core_dtype
        self.output_channels = 4 * filters
        # === Layers ===
        self.conv1 = ConvBN(bottleneck_expansion * filters, 1, activation=self.activation, name='conv1',
                            **self.bn_args)
        self.attention = AxialAttention2D(filters, key_expansion=key_expansion, value_expansion=value_expansion,
                                          num_heads=num_heads, span=span, strides=strides,
                                          stride_by_average_pool=stride_by_average_pool, block_size=block_size,
                                          max_span=max_span, query_shape=query_shape, core_dtype=core_dtype,
                                          name='attention', **self.bn_args)
        self.conv3 = ConvBN(4 * filters, 1, activation=False, bn_gamma_zero=True, name='conv3', **self.bn_args)

    def build_branch(self, input_shape):
        self.conv1.build(input_shape)
        attention_input = tuple(input_shape[:-1]) + (self.bottleneck_expansion * self.filters,)
        self.attention.build(attention_input)
        self.conv3.build(self.attention.compute_output_shape(attention_input))

    def branch(self, inputs: tf.Tensor, training: bool) -> tf.Tensor:
        x = self.conv1(inputs, training=training)
        x = self._activation_fn(self.attention(x, training=training))
        return self.conv3(x, training=training)

    def branch_output_shape(self, input_shape):
        return self.attention.compute_output_shape(input_shape)[:-1] + (4 * self.filters,)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(filters=self.filters, span=self.span, num_heads=self.num_heads, block_size=self.block_size,
                      max_span=self.max_span, query_shape=self.query_shape,
                      bottleneck_expansion=self.bottleneck_expansion, key_expansion=self.key_expansion,
                      value_expansion=self.value_expansion, stride_by_average_pool=self.stride_by_average_pool,
                      core_dtype=self.core_dtype)
        return config

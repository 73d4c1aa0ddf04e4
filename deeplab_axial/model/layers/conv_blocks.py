"""deeplab2's convolutional residual blocks (the conv path of its `AxialBlock`), named as in its checkpoints.

    basic      (filters [a, b]):    3x3 conv a (stride, rate r1) + BN + act -> 3x3 conv b (rate r2) + BN (gamma = 0)
    bottleneck (filters [a, b, c]): 1x1 conv a + BN + act -> 3x3 conv b (stride, rate r1) + BN + act
                                    -> 1x1 conv c + BN (gamma = 0)

wrapped by `ResidualBlock` (squeeze-and-excitation, drop path, shortcut). Wide ResNets use basic blocks, ResNets and
the last stage of Wide ResNets bottlenecks; the stride is taken by the first 3x3 conv, and with `use_sac` every 3x3
conv is a switchable atrous convolution (`ConvBN`). r2 differs from r1 only in the first block of a stage past the
output stride (deeplab2's `basic_block_second_conv_atrous_rate`, which keeps features independent of the output
stride).
"""

from typing import List, Sequence

import keras
import tensorflow as tf

from deeplab_axial.model.layers.convolutions import ConvBN
from deeplab_axial.model.layers.residual_block import ResidualBlock


@keras.saving.register_keras_serializable(package='deeplab_axial')
class ConvBlock(ResidualBlock):
    """A basic (two filters) or bottleneck (three filters) residual block.

    Args:
      filters: [a, b] (basic) or [a, b, c] (bottleneck); the block outputs the last.
      strides: stride of the first 3x3 conv and of the shortcut.
      atrous_rate: rate r1 of the first 3x3 conv (and of the bottleneck's only one).
      second_atrous_rate: rate r2 of a basic block's second 3x3 conv; None means `atrous_rate`.
      use_sac: switchable atrous 3x3 convolutions.
      **kwargs: `ResidualBlock` arguments (drop path, squeeze-and-excitation, activation and its order, shortcut
        layout, batch-norm settings), then `keras.layers.Layer` arguments.
    """

    def __init__(self, filters: Sequence[int], strides: int = 1, atrous_rate: int = 1, second_atrous_rate=None,
                 use_sac: bool = False, **kwargs):
        super().__init__(strides=strides, **kwargs)
        if len(filters) not in (2, 3):
            raise ValueError(f'ConvBlock: `filters` must hold 2 (basic block) or 3 (bottleneck) channel counts. '
                             f'Received: filters={list(filters)}')
        self.filters = [int(f) for f in filters]
        self.atrous_rate = atrous_rate
        self.second_atrous_rate = second_atrous_rate
        self.use_sac = use_sac
        self.output_channels = self.filters[-1]
        act = dict(activation=self.activation, **self.bn_args)
        last = dict(activation=False, bn_gamma_zero=True, **self.bn_args)
        # === Layers ===
        if len(self.filters) == 2:
            self.conv1_bn_act = ConvBN(self.filters[0], 3, strides, atrous_rate=atrous_rate, use_sac=use_sac,
                                       name='conv1_bn_act', **act)
            rate = atrous_rate if second_atrous_rate is None else second_atrous_rate
            self.conv2_bn = ConvBN(self.filters[1], 3, atrous_rate=rate, use_sac=use_sac, name='conv2_bn', **last)
        else:
            self.conv1_bn_act = ConvBN(self.filters[0], 1, name='conv1_bn_act', **act)
            self.conv2_bn_act = ConvBN(self.filters[1], 3, strides, atrous_rate=atrous_rate, use_sac=use_sac,
                                       name='conv2_bn_act', **act)
            self.conv3_bn = ConvBN(self.filters[2], 1, name='conv3_bn', **last)

    @property
    def convs(self) -> List[ConvBN]:
        """The branch's convolutions in order."""
        names = ('conv1_bn_act', 'conv2_bn') if len(self.filters) == 2 else ('conv1_bn_act', 'conv2_bn_act', 'conv3_bn')
        return [getattr(self, name) for name in names]

    def build_branch(self, input_shape):
        shape = tuple(input_shape)
        for conv in self.convs:
            conv.build(shape)
            shape = tuple(conv.compute_output_shape(shape))

    def branch(self, inputs: tf.Tensor, training: bool) -> tf.Tensor:
        x = inputs
        for conv in self.convs:
            x = conv(x, training=training)
        return x

    def branch_output_shape(self, input_shape):
        strided = [None if size is None else -(-size // self.strides) for size in input_shape[1:3]]
        return (input_shape[0], *strided, self.output_channels)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(filters=self.filters, atrous_rate=self.atrous_rate,
                      second_atrous_rate=self.second_atrous_rate, use_sac=self.use_sac)
        return config

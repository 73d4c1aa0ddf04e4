"""Panoptic-DeepLab dual decoder and prediction heads (Cheng et al., CVPR 2020), as Axial-DeepLab uses them.

Each branch projects the stride-32/16 feature with a 1x1 conv to 256 (Axial-DeepLab replaces ASPP by this
projection), then twice upsamples (bilinear, align_corners), concatenates a 1x1 projection of a lower-level feature
and fuses with one 5x5 depthwise-separable conv:

  semantic: res5 -> 256; + res3 proj 64 -> 256; + res2 proj 32 -> 256; head 5x5 dw-sep 256 -> 1x1 num_classes
  instance: res5 -> 256; + res3 proj 32 -> 128; + res2 proj 16 -> 128; center head 5x5 dw-sep 32 -> 1x1 1,
            offset head 5x5 dw-sep 32 -> 1x1 2

The final 1x1 convs (bias, TruncatedNormal(0.01), float32) live in separate layers so that checkpoints can restore
the decoder without them (fine-tuning to another class count).
"""

from typing import Dict, List, Sequence

import keras
import tensorflow as tf

from deeplab_axial import common
from deeplab_axial.model.layers.convolutions import ConvBN, DepthwiseSeparableConv
from deeplab_axial.resize import resize_align_corners


@keras.saving.register_keras_serializable(package='deeplab_axial')
class PanopticDeepLabBranch(keras.layers.Layer):
    """One decoder branch: 1x1 projection of the top feature, two upsample-concat-fuse stages.

    Args:
      channels: 1x1 projection channels of the top feature (ASPP replacement).
      low_level_projections: projection channels of the two lower-level features (res3, res2).
      fusion_channels: output channels of each 5x5 depthwise-separable fusion conv.
      bn_momentum: batch-norm momentum.
      bn_epsilon: batch-norm epsilon.
      use_sync_batchnorm: synchronise batch statistics across replicas.
      **kwargs: forwarded to `keras.layers.Layer`.
    """

    def __init__(self, channels: int = 256, low_level_projections: Sequence[int] = (64, 32),
                 fusion_channels: int = 256, bn_momentum: float = 0.99, bn_epsilon: float = 1e-3,
                 use_sync_batchnorm: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.low_level_projections = list(low_level_projections)
        self.fusion_channels = fusion_channels
        self._bn_args = dict(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, use_sync_batchnorm=use_sync_batchnorm)
        # === Layers ===
        self.top_projection = ConvBN(channels, 1, name='aspp_projection', **self._bn_args)
        # Attributes, not lists, so that tf.train.Checkpoint tracks them by name.
        for i, c in enumerate(self.low_level_projections):
            setattr(self, f'low_level_projection{i + 1}', ConvBN(c, 1, name=f'low_level_projection{i + 1}',
                                                                 **self._bn_args))
            setattr(self, f'fusion{i + 1}', DepthwiseSeparableConv(fusion_channels, 5, name=f'fusion{i + 1}',
                                                                   **self._bn_args))

    @property
    def projections(self) -> List[ConvBN]:
        return [getattr(self, f'low_level_projection{i + 1}') for i in range(len(self.low_level_projections))]

    @property
    def fusions(self) -> List[DepthwiseSeparableConv]:
        return [getattr(self, f'fusion{i + 1}') for i in range(len(self.low_level_projections))]

    def build(self, input_shapes: Sequence[Sequence[int]]):
        """input_shapes: the top feature's shape, then the low-level ones (res3, res2)."""
        self.top_projection.build(input_shapes[0])
        channels = self.channels
        for projection, fusion, shape in zip(self.projections, self.fusions, input_shapes[1:]):
            projection.build(shape)
            fusion.build(tuple(shape[:-1]) + (channels + projection.filters,))
            channels = self.fusion_channels
        self.built = True

    def call(self, features: Sequence[tf.Tensor], training: bool = False) -> tf.Tensor:
        """features: [top, res3, res2] -> [batch, res2 height, res2 width, fusion_channels]."""
        x = self.top_projection(features[0], training=training)
        for projection, fusion, low in zip(self.projections, self.fusions, features[1:]):
            x = resize_align_corners(x, low.shape[1:3])
            x = tf.concat([x, tf.cast(projection(low, training=training), x.dtype)], axis=-1)
            x = fusion(x, training=training)
        return x

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(channels=self.channels, low_level_projections=self.low_level_projections,
                      fusion_channels=self.fusion_channels, **self._bn_args)
        return config


@keras.saving.register_keras_serializable(package='deeplab_axial')
class PanopticDeepLabDecoder(keras.layers.Layer):
    """Semantic and instance branches plus the heads' 5x5 depthwise-separable convs (not their last 1x1 convs).

    The widths default to the paper's (deeplab2's `decoder` / `panoptic_deeplab` config fields in brackets).

    Args:
      semantic_aspp_channels: semantic 1x1 projection of res5 [decoder.aspp_channels].
      semantic_decoder_channels: semantic fusion convs [decoder.decoder_channels].
      semantic_low_level_projections: res3, res2 projections [panoptic_deeplab.low_level.channels_project].
      semantic_head_channels: semantic head's 5x5 conv [semantic_head.head_channels].
      instance_aspp_channels: instance 1x1 projection of res5 [instance_decoder_override.aspp_channels].
      instance_decoder_channels: instance fusion convs [instance_decoder_override.decoder_channels].
      instance_low_level_projections: res3, res2 projections [instance.low_level_override.channels_project].
      center_head_channels: center head's 5x5 conv [center_head.head_channels].
      offset_head_channels: offset head's 5x5 conv [regression_head.head_channels].
      bn_momentum: batch-norm momentum.
      bn_epsilon: batch-norm epsilon.
      use_sync_batchnorm: synchronise batch statistics across replicas.
      **kwargs: forwarded to `keras.layers.Layer`.

    Returns from call: {'semantic': [B, h, w, semantic_head_channels], 'center': [B, h, w, center_head_channels],
    'offset': [B, h, w, offset_head_channels]} at the stride of res2.
    """

    def __init__(self, semantic_aspp_channels: int = 256, semantic_decoder_channels: int = 256,
                 semantic_low_level_projections: Sequence[int] = (64, 32), semantic_head_channels: int = 256,
                 instance_aspp_channels: int = 256, instance_decoder_channels: int = 128,
                 instance_low_level_projections: Sequence[int] = (32, 16), center_head_channels: int = 32,
                 offset_head_channels: int = 32, bn_momentum: float = 0.99, bn_epsilon: float = 1e-3,
                 use_sync_batchnorm: bool = False, **kwargs):
        super().__init__(**kwargs)
        self._widths = dict(
            semantic_aspp_channels=semantic_aspp_channels, semantic_decoder_channels=semantic_decoder_channels,
            semantic_low_level_projections=list(semantic_low_level_projections),
            semantic_head_channels=semantic_head_channels, instance_aspp_channels=instance_aspp_channels,
            instance_decoder_channels=instance_decoder_channels,
            instance_low_level_projections=list(instance_low_level_projections),
            center_head_channels=center_head_channels, offset_head_channels=offset_head_channels)
        self._bn_args = dict(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, use_sync_batchnorm=use_sync_batchnorm)
        # === Layers ===
        self.semantic_decoder = PanopticDeepLabBranch(
            semantic_aspp_channels, semantic_low_level_projections, semantic_decoder_channels,
            name='semantic_decoder', **self._bn_args)
        self.instance_decoder = PanopticDeepLabBranch(
            instance_aspp_channels, instance_low_level_projections, instance_decoder_channels,
            name='instance_decoder', **self._bn_args)
        self.semantic_head = DepthwiseSeparableConv(semantic_head_channels, 5, name='semantic_head', **self._bn_args)
        self.center_head = DepthwiseSeparableConv(center_head_channels, 5, name='center_head', **self._bn_args)
        self.offset_head = DepthwiseSeparableConv(offset_head_channels, 5, name='offset_head', **self._bn_args)

    def build(self, input_shapes: Dict[str, Sequence[int]]):
        shapes = [input_shapes[common.RES5], input_shapes[common.RES3], input_shapes[common.RES2]]
        self.semantic_decoder.build(shapes)
        self.instance_decoder.build(shapes)
        res2 = tuple(input_shapes[common.RES2][:-1])
        self.semantic_head.build(res2 + (self.semantic_decoder.fusion_channels,))
        self.center_head.build(res2 + (self.instance_decoder.fusion_channels,))
        self.offset_head.build(res2 + (self.instance_decoder.fusion_channels,))
        self.built = True

    def call(self, features: Dict[str, tf.Tensor], training: bool = False) -> Dict[str, tf.Tensor]:
        inputs = [features[common.RES5], features[common.RES3], features[common.RES2]]
        semantic = self.semantic_decoder(inputs, training=training)
        instance = self.instance_decoder(inputs, training=training)
        return dict(semantic=self.semantic_head(semantic, training=training),
                    center=self.center_head(instance, training=training),
                    offset=self.offset_head(instance, training=training))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(self._widths, **self._bn_args)
        return config


def prediction_conv(filters: int, name: str) -> keras.layers.Conv2D:
    """A head's last 1x1 conv: bias, TruncatedNormal(0.01), float32 under mixed precision."""
    return keras.layers.Conv2D(filters, 1, kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.01),
                               name=name, dtype='float32')


@keras.saving.register_keras_serializable(package='deeplab_axial')
class InstanceLastLayers(keras.layers.Layer):
    """The center (1 channel) and offset (2 channels, dy dx) last 1x1 convs, one checkpoint item together."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # === Layers ===
        self.center = prediction_conv(1, 'center_last_layer')
        self.offset = prediction_conv(2, 'offset_last_layer')

    def build(self, input_shapes: Sequence[Sequence[int]]):
        self.center.build(input_shapes[0])
        self.offset.build(input_shapes[1])
        self.built = True

    def call(self, center: tf.Tensor, offset: tf.Tensor):
        return self.center(center), self.offset(offset)

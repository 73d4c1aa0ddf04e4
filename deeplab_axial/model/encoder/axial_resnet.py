"""Axial-ResNet encoders (Axial-DeepLab §3.2): ResNet-50-style stages of axial-attention bottleneck blocks.

Stages res2..res5 hold `blocks_per_stage` AxialBlocks with attention width f = 64 * width_multiplier * 2^i (block
output 4f); the first block of res3, res4 and res5 is strided (res5 not at output stride 16). Three stems, all at
stride 2 and followed either by a 3x3/2 max-pool (`stem_pool`, as ResNet; the layer is `stem_max_pool`) or,
without it, by a strided first res2 block (deeplab2 moves the pool's stride there, so res2's first height axis runs at
stride 2):
  'conv':      7x7/2 conv 64 + BN + ReLU (the ImageNet conv-stem models of Table 1).
  'inception': 3x3/2 conv 64 -> 3x3 conv 64 -> 3x3 conv 128, each + BN + ReLU (Panoptic-DeepLab; Axial-DeepLab).
  'axial':     three AxialBlocks of width 32, the first with stride 2 (the full, stand-alone Axial-ResNet; the
               paper gives no stem widths, this follows deeplab2's stride-2 axial stage).
Stem channels scale with `stem_width_multiplier`.

Three switches build the official PyTorch Axial-ResNet (`pytorch_checkpoint.PYTORCH_LAYOUT`): the conv stem and its
max-pool padded on both sides, strided blocks that attend at full resolution and then average-pool, and relative
tables sized to each layer's axis length at one input size (PyTorch's kernel_size) instead of `max_span`.
"""

from typing import Dict, List, Optional, Sequence

import keras
import tensorflow as tf

from deeplab_axial.model.encoder.base import ENDPOINTS, Encoder
from deeplab_axial.model.layers.axial_blocks import AxialBlock
from deeplab_axial.model.layers.convolutions import ConvBN

STEMS = ('conv', 'inception', 'axial')
OUTPUT_STRIDES = (16, 32)
DROP_PATH_SCHEDULES = ('constant', 'linear')


@keras.saving.register_keras_serializable(package='deeplab_axial')
class AxialResNet(Encoder):
    """Axial-ResNet backbone: [batch, height, width, 3] (normalised) -> {res2..res5: features} (`encoder.base`).

    Args:
      stem: 'conv', 'inception' or 'axial' (see the module docstring).
      stem_pool: a 3x3/2 max-pool after the stem; otherwise res2's first block strides.
      width_multiplier: stage width multiplier (S 0.5, M 0.75, L 1.0, XL 2.0).
      stem_width_multiplier: multiplier of the stem's channels.
      blocks_per_stage: blocks in res2..res5 ([3, 4, 6, 3] for 50 layers, [1, 2, 4, 1] for 26).
      output_stride: 32, or 16 (res5 unstrided).
      span: None (global) or the odd local span of every stage block.
      query_shape: axes up to this length attend globally whatever the span (deeplab2's rule, 129 in its layout).
      stem_span: local span of the axial stem's blocks.
      drop_path_keep_prob: keep probability of the residual branches (1.0 disables drop path).
      drop_path_schedule: 'constant', or 'linear' (block j of n keeps 1 - (1 - keep_prob) * (j + 1) / n).
      num_heads: attention heads.
      block_size: largest query block of local attention (`AxialAttention`).
      max_span: relative tables have 2 * max_span - 1 rows.
      bn_momentum: momentum of every batch norm.
      bn_epsilon: epsilon of every batch norm.
      use_sync_batchnorm: synchronise batch statistics across replicas.
      project_strided_shortcut: False subsamples, rather than projects, the shortcut of a strided block whose
        channels do not change (deeplab2; see `deeplab2_checkpoint`).
      symmetric_stem_padding: zero-pad the conv stem's 7x7/2 conv by 3 and its max-pool by 1 on every side, then
        neither pads (PyTorch's ResNet stem). Keras 'same' pads one less at the start for even sizes, which moves
        every output; zeros pad the pool exactly as PyTorch's -inf because it follows a ReLU.
      stride_by_average_pool: strided blocks attend at full resolution and then average-pool (PyTorch) instead of
        subsampling after each attention axis.
      relative_table_input_size: when set, each attention layer's relative tables have 2 * L - 1 rows, L its axis
        length at this (square) input size, instead of 2 * max_span - 1 (PyTorch's kernel_size = L). Longer axes
        reuse the last rows, as beyond max_span.
      core_dtype: dtype of the attention cores' products (`AxialAttention`; None: the compute dtype).
      **kwargs: forwarded to `keras.layers.Layer`.
    """

    OUTPUT_STRIDES = OUTPUT_STRIDES

    def __init__(self, stem: str = 'conv', stem_pool: bool = True, width_multiplier: float = 1.0,
                 stem_width_multiplier: float = 1.0,
                 blocks_per_stage: Sequence[int] = (3, 4, 6, 3), output_stride: int = 32,
                 span: Optional[int] = None, stem_span: Optional[int] = 15, query_shape: Optional[int] = None,
                 drop_path_keep_prob: float = 1.0,
                 drop_path_schedule: str = 'constant', num_heads: int = 8, block_size: int = 64,
                 max_span: int = 255, bn_momentum: float = 0.99, bn_epsilon: float = 1e-3,
                 use_sync_batchnorm: bool = False, project_strided_shortcut: bool = True,
                 symmetric_stem_padding: bool = False, stride_by_average_pool: bool = False,
                 relative_table_input_size: Optional[int] = None, core_dtype: Optional[str] = None,
                 **kwargs):
        super().__init__(**kwargs)
        if stem not in STEMS:
            raise ValueError(f'AxialResNet: `stem` must be one of {STEMS}. Received: stem={stem!r}')
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f'AxialResNet: `output_stride` must be one of {OUTPUT_STRIDES}. Received: '
                             f'output_stride={output_stride}')
        if len(blocks_per_stage) != 4 or min(blocks_per_stage) < 1:
            raise ValueError('AxialResNet: `blocks_per_stage` must be 4 positive counts (res2..res5). Received: '
                             f'blocks_per_stage={blocks_per_stage}')
        if drop_path_schedule not in DROP_PATH_SCHEDULES:
            raise ValueError(f'AxialResNet: `drop_path_schedule` must be one of {DROP_PATH_SCHEDULES}. Received: '
                             f'drop_path_schedule={drop_path_schedule!r}')
        if symmetric_stem_padding and stem != 'conv':
            raise ValueError(f'AxialResNet: `symmetric_stem_padding` pads the conv stem. Received: stem={stem!r}')
        self.stem = stem
        self.stem_pool = stem_pool
        self.width_multiplier = width_multiplier
        self.stem_width_multiplier = stem_width_multiplier
        self.blocks_per_stage = list(blocks_per_stage)
        self.output_stride = output_stride
        self.span = span
        self.stem_span = stem_span
        self.query_shape = query_shape
        self.drop_path_keep_prob = drop_path_keep_prob
        self.drop_path_schedule = drop_path_schedule
        self.num_heads = num_heads
        self.block_size = block_size
        self.max_span = max_span
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.use_sync_batchnorm = use_sync_batchnorm
        self.project_strided_shortcut = project_strided_shortcut
        self.symmetric_stem_padding = symmetric_stem_padding
        self.stride_by_average_pool = stride_by_average_pool
        self.relative_table_input_size = relative_table_input_size
        self.core_dtype = core_dtype
        bn_args = dict(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, use_sync_batchnorm=use_sync_batchnorm)
        block_args = dict(num_heads=num_heads, block_size=block_size, stride_by_average_pool=stride_by_average_pool,
                          query_shape=query_shape, core_dtype=core_dtype, **bn_args)
        length = relative_table_input_size

        def table_span(strides: int) -> int:
            """max_span of the next layer: the axis length it attends at with `relative_table_input_size` (then
            stepping past its stride), else `max_span`. Layers without tables call it for their stride alone."""
            nonlocal length
            if length is None:
                return max_span
            span_here, length = length, -(-length // strides)
            return span_here

        # === Layers ===
        # Sub-layers are attributes (not lists) so that tf.train.Checkpoint tracks them by name.
        if stem == 'conv':
            stem_layers = [ConvBN(_scaled(64, stem_width_multiplier), 7, 2, name='stem_conv',
                                  symmetric_padding=symmetric_stem_padding, **bn_args)]
            table_span(2)
        elif stem == 'inception':
            stem_layers = [
                ConvBN(_scaled(64, stem_width_multiplier), 3, 2, name='stem_conv1', **bn_args),
                ConvBN(_scaled(64, stem_width_multiplier), 3, 1, name='stem_conv2', **bn_args),
                ConvBN(_scaled(128, stem_width_multiplier), 3, 1, name='stem_conv3', **bn_args)]
            table_span(2)
        else:
            stem_layers = [AxialBlock(_scaled(32, stem_width_multiplier), 2 if i == 0 else 1, stem_span,
                                      max_span=table_span(2 if i == 0 else 1), name=f'stem_block{i + 1}',
                                      **block_args) for i in range(3)]
        if stem_pool and symmetric_stem_padding:
            stem_layers.append(keras.layers.ZeroPadding2D(1, name='stem_pool_padding'))
        if stem_pool:
            # Not named 'stem_pool': sub-layers become attributes by name, which would replace the `stem_pool` flag.
            stem_layers.append(keras.layers.MaxPooling2D(3, 2, padding='valid' if symmetric_stem_padding else 'same',
                                                         name='stem_max_pool'))
            table_span(2)
        first_stride = 1 if stem_pool else 2
        strides = [first_stride, 2, 2, 2 if output_stride == 32 else 1]
        total = sum(self.blocks_per_stage)
        stages = []
        index = 0
        for stage, (count, stride) in enumerate(zip(self.blocks_per_stage, strides)):
            blocks = []
            for i in range(count):
                block_stride = stride if i == 0 else 1
                blocks.append(AxialBlock(
                    _scaled(64 * 2 ** stage, width_multiplier), block_stride, span, max_span=table_span(block_stride),
                    drop_path_keep_prob=self._keep_prob(index, total), name=f'{ENDPOINTS[stage]}_block{i + 1}',
                    project_strided_shortcut=project_strided_shortcut, **block_args))
                index += 1
            stages.append(blocks)
        for layer in stem_layers + [block for blocks in stages for block in blocks]:
            setattr(self, layer.name, layer)
        self._stem_names = tuple(layer.name for layer in stem_layers)
        self._stage_names = tuple(tuple(block.name for block in blocks) for blocks in stages)
        cumulative = [4, 8, 16, 16 * strides[3]]
        self.feature_info: Dict[str, Dict[str, int]] = {
            key: dict(channels=4 * _scaled(64 * 2 ** i, width_multiplier), stride=cumulative[i])
            for i, key in enumerate(ENDPOINTS)}

    @property
    def stem_layers(self) -> List[keras.layers.Layer]:
        """The stem's layers in order."""
        return [getattr(self, name) for name in self._stem_names]

    @property
    def stages(self) -> List[List[AxialBlock]]:
        """The blocks of res2..res5."""
        return [[getattr(self, name) for name in names] for names in self._stage_names]

    def _keep_prob(self, index: int, total: int) -> float:
        if self.drop_path_schedule == 'constant':
            return self.drop_path_keep_prob
        return 1.0 - (1.0 - self.drop_path_keep_prob) * (index + 1) / total

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.stem_layers + [block for blocks in self.stages for block in blocks]:
            layer.build(shape)
            shape = tuple(layer.compute_output_shape(shape))
        self.built = True

    def call(self, inputs: tf.Tensor, training: bool = False) -> Dict[str, tf.Tensor]:
        """Returns {res2, res3, res4, res5}: [batch, ceil(H / stride), ceil(W / stride), channels] per
        `feature_info`."""
        x = inputs
        for layer in self.stem_layers:
            x = layer(x, training=training) if isinstance(layer, (ConvBN, AxialBlock)) else layer(x)
        features = {}
        for key, blocks in zip(ENDPOINTS, self.stages):
            for block in blocks:
                x = block(x, training=training)
            features[key] = x
        return features

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(stem=self.stem, stem_pool=self.stem_pool,
                      width_multiplier=self.width_multiplier, stem_width_multiplier=self.stem_width_multiplier,
                      blocks_per_stage=self.blocks_per_stage,
                      output_stride=self.output_stride, span=self.span, stem_span=self.stem_span,
                      query_shape=self.query_shape,
                      drop_path_keep_prob=self.drop_path_keep_prob, drop_path_schedule=self.drop_path_schedule,
                      num_heads=self.num_heads, block_size=self.block_size, max_span=self.max_span,
                      bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                      use_sync_batchnorm=self.use_sync_batchnorm,
                      project_strided_shortcut=self.project_strided_shortcut,
                      symmetric_stem_padding=self.symmetric_stem_padding,
                      stride_by_average_pool=self.stride_by_average_pool,
                      relative_table_input_size=self.relative_table_input_size, core_dtype=self.core_dtype)
        return config


def _scaled(channels: int, multiplier: float) -> int:
    """Channels times a width multiplier, kept a positive multiple of 8 heads' worth where possible."""
    return max(1, int(round(channels * multiplier)))

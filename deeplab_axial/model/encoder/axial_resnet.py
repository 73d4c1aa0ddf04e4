"""Axial-ResNet encoders (Axial-DeepLab §3.2): ResNet-50-style stages of axial-attention bottleneck blocks.

Stages res2..res5 hold `blocks_per_stage` AxialBlocks with attention width f = 64 * width_multiplier * 2^i (block
output 4f); the first block of res3, res4 and res5 is strided (res5 not at output stride 16). Three stems, all at
stride 2 and followed either by a 3x3/2 max-pool (`stem_pool`, as ResNet) or, without it, by a strided first res2
block (deeplab2 moves the pool's stride there, so res2's first height axis runs at stride 2):
  'conv':      7x7/2 conv 64 + BN + ReLU (the ImageNet conv-stem models of Table 1).
  'inception': 3x3/2 conv 64 -> 3x3 conv 64 -> 3x3 conv 128, each + BN + ReLU (Panoptic-DeepLab; Axial-DeepLab).
  'axial':     three AxialBlocks of width 32, the first with stride 2 (the full, stand-alone Axial-ResNet; the
               paper gives no stem widths, this follows deeplab2's stride-2 axial stage).
Stem channels scale with `stem_width_multiplier`.
"""

from typing import Dict, List, Optional, Sequence

import keras
import tensorflow as tf

from deeplab_axial import common
from deeplab_axial.model.layers.axial_blocks import AxialBlock
from deeplab_axial.model.layers.convolutions import ConvBN

STEMS = ('conv', 'inception', 'axial')
ENDPOINTS = (common.RES2, common.RES3, common.RES4, common.RES5)


@keras.saving.register_keras_serializable(package='deeplab_axial')
class AxialResNet(keras.layers.Layer):
    """Axial-ResNet backbone: [batch, height, width, 3] (normalised) -> {res2..res5: features}.

    Args:
      stem: 'conv', 'inception' or 'axial' (see the module docstring).
      stem_pool: a 3x3/2 max-pool after the stem; otherwise res2's first block strides.
      width_multiplier: stage width multiplier (S 0.5, M 0.75, L 1.0, XL 2.0).
      stem_width_multiplier: multiplier of the stem's channels.
      blocks_per_stage: blocks in res2..res5 ([3, 4, 6, 3] for 50 layers, [1, 2, 4, 1] for 26).
      output_stride: 32, or 16 (res5 unstrided).
      span: None (global) or the odd local span of every stage block.
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
      core_dtype: dtype of the attention cores' products (`AxialAttention`; None: the compute dtype).
      **kwargs: forwarded to `keras.layers.Layer`.
    """

    def __init__(self, stem: str = 'conv', stem_pool: bool = True, width_multiplier: float = 1.0,
                 stem_width_multiplier: float = 1.0,
                 blocks_per_stage: Sequence[int] = (3, 4, 6, 3), output_stride: int = 32,
                 span: Optional[int] = None, stem_span: Optional[int] = 15, drop_path_keep_prob: float = 1.0,
                 drop_path_schedule: str = 'constant', num_heads: int = 8, block_size: int = 64,
                 max_span: int = 255, bn_momentum: float = 0.99, bn_epsilon: float = 1e-3,
                 use_sync_batchnorm: bool = False, project_strided_shortcut: bool = True,
                 core_dtype: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        if stem not in STEMS:
            raise ValueError(f'AxialResNet: `stem` must be one of {STEMS}. Received: stem={stem!r}')
        if output_stride not in (16, 32):
            raise ValueError(f'AxialResNet: `output_stride` must be 16 or 32. Received: output_stride={output_stride}')
        if len(blocks_per_stage) != 4 or min(blocks_per_stage) < 1:
            raise ValueError('AxialResNet: `blocks_per_stage` must be 4 positive counts (res2..res5). Received: '
                             f'blocks_per_stage={blocks_per_stage}')
        if drop_path_schedule not in ('constant', 'linear'):
            raise ValueError('AxialResNet: `drop_path_schedule` must be "constant" or "linear". Received: '
                             f'drop_path_schedule={drop_path_schedule!r}')
        self.stem = stem
        self.stem_pool = stem_pool
        self.width_multiplier = width_multiplier
        self.stem_width_multiplier = stem_width_multiplier
        self.blocks_per_stage = list(blocks_per_stage)
        self.output_stride = output_stride
        self.span = span
        self.stem_span = stem_span
        self.drop_path_keep_prob = drop_path_keep_prob
        self.drop_path_schedule = drop_path_schedule
        self.num_heads = num_heads
        self.block_size = block_size
        self.max_span = max_span
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.use_sync_batchnorm = use_sync_batchnorm
        self.project_strided_shortcut = project_strided_shortcut
        self.core_dtype = core_dtype
        bn_args = dict(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, use_sync_batchnorm=use_sync_batchnorm)
        block_args = dict(num_heads=num_heads, block_size=block_size, max_span=max_span, core_dtype=core_dtype,
                          **bn_args)

        # === Layers ===
        # Sub-layers are attributes (not lists) so that tf.train.Checkpoint tracks them by name.
        if stem == 'conv':
            stem_layers = [ConvBN(_scaled(64, stem_width_multiplier), 7, 2, name='stem_conv', **bn_args)]
        elif stem == 'inception':
            stem_layers = [
                ConvBN(_scaled(64, stem_width_multiplier), 3, 2, name='stem_conv1', **bn_args),
                ConvBN(_scaled(64, stem_width_multiplier), 3, 1, name='stem_conv2', **bn_args),
                ConvBN(_scaled(128, stem_width_multiplier), 3, 1, name='stem_conv3', **bn_args)]
        else:
            stem_layers = [AxialBlock(_scaled(32, stem_width_multiplier), 2 if i == 0 else 1, stem_span,
                                      name=f'stem_block{i + 1}', **block_args) for i in range(3)]
        if stem_pool:
            stem_layers.append(keras.layers.MaxPooling2D(3, 2, padding='same', name='stem_pool'))
        first_stride = 1 if stem_pool else 2
        strides = [first_stride, 2, 2, 2 if output_stride == 32 else 1]
        total = sum(self.blocks_per_stage)
        stages = []
        index = 0
        for stage, (count, stride) in enumerate(zip(self.blocks_per_stage, strides)):
            blocks = []
            for i in range(count):
                blocks.append(AxialBlock(
                    _scaled(64 * 2 ** stage, width_multiplier), stride if i == 0 else 1, span,
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
        config.update(stem=self.stem, stem_pool=self.stem_pool, width_multiplier=self.width_multiplier,
                      stem_width_multiplier=self.stem_width_multiplier, blocks_per_stage=self.blocks_per_stage,
                      output_stride=self.output_stride, span=self.span, stem_span=self.stem_span,
                      drop_path_keep_prob=self.drop_path_keep_prob, drop_path_schedule=self.drop_path_schedule,
                      num_heads=self.num_heads, block_size=self.block_size, max_span=self.max_span,
                      bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                      use_sync_batchnorm=self.use_sync_batchnorm,
                      project_strided_shortcut=self.project_strided_shortcut, core_dtype=self.core_dtype)
        return config


def _scaled(channels: int, multiplier: float) -> int:
    """Channels times a width multiplier, kept a positive multiple of 8 heads' worth where possible."""
    return max(1, int(round(channels * multiplier)))

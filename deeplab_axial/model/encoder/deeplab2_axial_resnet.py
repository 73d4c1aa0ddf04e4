"""deeplab2's general (Axial-)ResNet encoder: its ResNet-50, ResNet-50-Beta, Wide-ResNet-41 / SWideRNet,
Axial-SWideRNet, MaX-DeepLab-S/L backbones and the GeLU Axial-ResNet-50, layer for layer and named as in its
checkpoints (deeplab2's `model/encoder/axial_resnet.py`; Wang et al. 2020, Chen et al. "Scaling Wide Residual Networks
for Panoptic Segmentation" 2020, Wang et al. "MaX-DeepLab" 2021).

Stem by `backbone_type` (stride 2, not activated: deeplab2's order, `residual_block`):
  'resnet'        7x7/2 conv round(64 s) + BN
  'resnet_beta'   Inception stem (`InceptionStem`)
  'wider_resnet'  3x3/2 conv round(64 s) + BN, then a stage 'res1' of 3 basic blocks of 4 * round(32 s) channels
Stages res2..res5 with blocks_per_stage blocks and filters f = round(32 * 2^i * w) for i = 1..4 (s, w the stem and
stage width multipliers). No max-pool: the first block of res2 strides instead, as the first block of res3, res4 and
res5 (res5 not at output stride 16, where later convolutions are atrous instead: rate 2, and deeplab2's rate for the
second conv of the first basic block past the output stride).

Each block's type follows deeplab2 from its "original ResNet" stride t (the input stride of its stage for the first
block, the stage's output stride for the rest; strides beyond the output stride count as if taken):
  t >= use_axial_beyond_stride > 0          `AxialBlock` [e f, f, 4f], key/value expansions k, v
  'resnet' / 'resnet_beta'                  bottleneck [f, f, 4f]
  'wider_resnet', stage output stride < 32  basic [4f, 4f]; from 32 on a bottleneck [f, 2f, 4f]
so with use_axial_beyond_stride 16 the first block of res4 (t = 8) is convolutional and the rest axial. Switchable
atrous convolution in the conv blocks of stages whose output stride is >= use_sac_beyond_stride > 0;
squeeze-and-excitation in every block when set; drop path (keep p) in blocks with t >= drop_path_beyond_stride,
'linear': 1 - (1 - p) * (log2 t - 1) / 4 (per stage, not per block as `AxialResNet`).

`backbone_decoder_num_stacks` > 0 adds deeplab2's stacked (hourglass) decoder to the backbone (MaX-DeepLab-L): from
the output stride down to `high_resolution_output_stride` and back up, each stage a `ResizedFuse` of the current
feature with the latest two of its stride, then blocks as above (channels round(64 t w), t = 32 at the output
stride). It yields the extra endpoint 'backbone_output'; res2..res5 stay the stage outputs (what deeplab2's
Panoptic-DeepLab reads), so the decoder only shapes the classification feature.

deeplab2 wraps blocks in tf.recompute_grad (a memory saving with identical results); this encoder does not.
"""

import math
from typing import Dict, List, Optional, Sequence, Tuple

import keras
import tensorflow as tf

from deeplab_axial.model.encoder.base import ENDPOINTS, Encoder
from deeplab_axial.model.layers import activations
from deeplab_axial.model.layers.axial_blocks import AxialBlock
from deeplab_axial.model.layers.conv_blocks import ConvBlock
from deeplab_axial.model.layers.convolutions import ConvBN
from deeplab_axial.model.layers.resized_fuse import ResizedFuse
from deeplab_axial.model.layers.stems import InceptionStem

BACKBONE_TYPES = ('resnet', 'resnet_beta', 'wider_resnet')
BACKBONE_OUTPUT = 'backbone_output'
_AXIAL_STRIDES = (0, 2, 4, 8, 16, 32)


@keras.saving.register_keras_serializable(package='deeplab_axial')
class DeepLab2AxialResNet(Encoder):
    """deeplab2's Axial-ResNet family (module docstring): [batch, H, W, 3] (normalised) -> {res2..res5, ...}.

    Args:
      backbone_type: 'resnet', 'resnet_beta' or 'wider_resnet'.
      blocks_per_stage: blocks of res2..res5 (deeplab2's num_blocks after its layer multiplier).
      width_multiplier: stage width multiplier.
      stem_width_multiplier: stem width multiplier (and res1's for 'wider_resnet').
      output_stride: 8, 16 or 32.
      use_axial_beyond_stride: blocks at original stride >= this are axial (0: none).
      span: local span of the attention on axes longer than `query_shape` (None: global everywhere).
      query_shape: axes up to this length attend globally (deeplab2's 129).
      num_heads: attention heads.
      attention_bottleneck_expansion: e of the axial blocks.
      key_expansion: k of the axial blocks.
      value_expansion: v of the axial blocks.
      use_squeeze_and_excite: squeeze-and-excitation in every block.
      use_sac_beyond_stride: switchable atrous convolution from this stage stride on (0 or -1: none).
      drop_path_keep_prob: keep probability p of the last stage.
      drop_path_beyond_stride: drop path only in blocks at original stride >= this.
      drop_path_schedule: 'constant' or 'linear' (per stage).
      activation: 'relu', 'gelu', ... (`activations`).
      backbone_decoder_num_stacks: stacked decoders in the backbone (0 or more).
      backbone_decoder_blocks_per_stage: blocks per decoder stage.
      high_resolution_output_stride: the decoder's finest stride.
      block_size: query block size of local attention.
      max_span: relative tables have 2 * max_span - 1 rows.
      bn_momentum: momentum of every batch norm.
      bn_epsilon: epsilon of every batch norm.
      use_sync_batchnorm: synchronise batch statistics across replicas.
      **kwargs: forwarded to `keras.layers.Layer`.
    """

    def __init__(self, backbone_type: str = 'resnet_beta', blocks_per_stage: Sequence[int] = (3, 4, 6, 3),
                 width_multiplier: float = 1.0, stem_width_multiplier: float = 1.0, output_stride: int = 16,
                 use_axial_beyond_stride: int = 16, span: Optional[int] = 65, query_shape: Optional[int] = 129,
                 num_heads: int = 8, attention_bottleneck_expansion: int = 2, key_expansion: float = 1,
                 value_expansion: float = 2, use_squeeze_and_excite: bool = False, use_sac_beyond_stride: int = 0,
                 drop_path_keep_prob: float = 1.0, drop_path_beyond_stride: int = 16,
                 drop_path_schedule: str = 'constant', activation: str = 'relu', backbone_decoder_num_stacks: int = 0,
                 backbone_decoder_blocks_per_stage: int = 1, high_resolution_output_stride: int = 4,
                 block_size: int = 64, max_span: int = 255, bn_momentum: float = 0.99, bn_epsilon: float = 1e-3,
                 use_sync_batchnorm: bool = False, **kwargs):
        super().__init__(**kwargs)
        _check_arguments(backbone_type, blocks_per_stage, output_stride, use_axial_beyond_stride, drop_path_schedule,
                         activation, backbone_decoder_num_stacks, high_resolution_output_stride)
        self.backbone_type = backbone_type
        self.blocks_per_stage = [int(b) for b in blocks_per_stage]
        self.width_multiplier = width_multiplier
        self.stem_width_multiplier = stem_width_multiplier
        self.output_stride = output_stride
        self.use_axial_beyond_stride = use_axial_beyond_stride
        self.span = span
        self.query_shape = query_shape
        self.num_heads = num_heads
        self.attention_bottleneck_expansion = attention_bottleneck_expansion
        self.key_expansion = key_expansion
        self.value_expansion = value_expansion
        self.use_squeeze_and_excite = use_squeeze_and_excite
        self.use_sac_beyond_stride = use_sac_beyond_stride
        self.drop_path_keep_prob = drop_path_keep_prob
        self.drop_path_beyond_stride = drop_path_beyond_stride
        self.drop_path_schedule = drop_path_schedule
        self.activation = activation
        self.backbone_decoder_num_stacks = backbone_decoder_num_stacks
        self.backbone_decoder_blocks_per_stage = backbone_decoder_blocks_per_stage
        self.high_resolution_output_stride = high_resolution_output_stride
        self.block_size = block_size
        self.max_span = max_span
        self.bn_args = dict(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, use_sync_batchnorm=use_sync_batchnorm)
        self._activation_fn = activations.get(activation)
        wider = backbone_type == 'wider_resnet'

        # === Layers ===
        # Sub-layers are attributes (not lists) so that tf.train.Checkpoint tracks them by name.
        if backbone_type == 'resnet_beta':
            self.stem = InceptionStem(stem_width_multiplier, activation, name='stem', **self.bn_args)
        else:
            self.stem = ConvBN(int(round(64 * stem_width_multiplier)), 3 if wider else 7, 2, activation=False,
                               name='stem', **self.bn_args)
        # Stages 1..5 (res1 only for Wide ResNets), deeplab2's five-stage bookkeeping.
        input_strides = [2 if wider else 1, 2, 4, 8, 16]
        stage_strides = [1 if wider else 2, 2, 2, 2, 2]
        counts = [3] + self.blocks_per_stage
        self._stage_names: List[Tuple[int, Tuple[str, ...]]] = []
        self.feature_info: Dict[str, Dict[str, int]] = {}
        for index in range(0 if wider else 1, 5):
            base = stem_width_multiplier if index == 0 else width_multiplier
            filters = int(round(2 ** index * 32 * base))
            names = self._add_group(f'res{index + 1}_block', filters, counts[index], stage_strides[index],
                                    input_strides[index])
            self._stage_names.append((index + 1, names))
            if index > 0:
                self.feature_info[ENDPOINTS[index - 1]] = dict(channels=4 * filters,
                                                               stride=min(2 ** (index + 1), output_stride))
        # The stacked decoder: (stage, stride, fused channels, block names) per step; the last gives backbone_output.
        self._decoder_steps: List[Tuple[int, int, int, Tuple[str, ...]]] = []
        for stage, stride, resnet_stride in self._decoder_strides():
            channels = resnet_stride * 64 * width_multiplier
            names = self._add_group(f'decoder_stage{stage}_block', int(channels // 4),
                                    backbone_decoder_blocks_per_stage, 1, resnet_stride)
            self._decoder_steps.append((stage, stride, int(round(channels)), names))
        if self._decoder_steps:
            last = getattr(self, self._decoder_steps[-1][-1][-1])
            self.feature_info[BACKBONE_OUTPUT] = dict(channels=last.output_channels, stride=output_stride)
            self.classification_feature = BACKBONE_OUTPUT

    def _add_group(self, prefix: str, filters: int, count: int, stride: int, input_stride: int) -> Tuple[str, ...]:
        """Adds deeplab2's BlockGroup as blocks `<prefix><i>`; returns their names."""
        current = input_stride
        use_sac = input_stride * stride >= self.use_sac_beyond_stride > 0
        common_args = dict(use_squeeze_and_excite=self.use_squeeze_and_excite, activation=self.activation,
                           activate_input=True, project_strided_shortcut=False, **self.bn_args)
        names = []
        for i in range(count):
            block_stride = stride if i == 0 and input_stride < self.output_stride else 1
            rate = current // self.output_stride if current > self.output_stride else 1
            args = dict(common_args, strides=block_stride, drop_path_keep_prob=self._keep_prob(current),
                        name=f'{prefix}{i + 1}')
            if current >= self.use_axial_beyond_stride > 0:
                block = AxialBlock(filters, span=self.span, num_heads=self.num_heads, block_size=self.block_size,
                                   max_span=self.max_span, query_shape=self.query_shape,
                                   bottleneck_expansion=self.attention_bottleneck_expansion,
                                   key_expansion=self.key_expansion, value_expansion=self.value_expansion, **args)
            elif self.backbone_type != 'wider_resnet':
                block = ConvBlock([filters, filters, 4 * filters], atrous_rate=rate, use_sac=use_sac, **args)
            elif input_stride * stride < 32:
                second = input_stride * stride // self.output_stride if (
                    i == 0 and input_stride * stride > self.output_stride) else rate
                block = ConvBlock([4 * filters, 4 * filters], atrous_rate=rate, second_atrous_rate=second,
                                  use_sac=use_sac, **args)
            else:
                block = ConvBlock([filters, 2 * filters, 4 * filters], atrous_rate=rate, use_sac=use_sac, **args)
            setattr(self, block.name, block)
            names.append(block.name)
            if i == 0 and stride > 1:
                current *= stride
        return tuple(names)

    def _keep_prob(self, stride: int) -> float:
        if stride < self.drop_path_beyond_stride or self.drop_path_keep_prob == 1.0:
            return 1.0
        if self.drop_path_schedule == 'constant':
            return self.drop_path_keep_prob
        return 1.0 - (1.0 - self.drop_path_keep_prob) * int(round(math.log2(stride) - 1)) / 4

    def _decoder_strides(self) -> List[Tuple[int, int, int]]:
        """(stage, stride, original ResNet stride) of each stacked-decoder stage, in order (deeplab2's loop)."""
        if not self.backbone_decoder_num_stacks:
            return []
        steps, stack, stride, halve = [], 0, self.output_stride, True
        while True:
            stride = stride // 2 if halve else stride * 2
            if stride == self.output_stride:
                stack += 1
                halve = True
            steps.append((len(steps) + 1, stride, 32 if stride == self.output_stride else stride))
            if stride == self.output_stride and stack == self.backbone_decoder_num_stacks:
                return steps
            if stride == self.high_resolution_output_stride:
                halve = False

    def _group(self, names: Sequence[str]) -> List[keras.layers.Layer]:
        return [getattr(self, name) for name in names]

    def _fuse(self, stage: int) -> ResizedFuse:
        return getattr(self, f'decoder_stage{stage}_resized_fuse')

    def build(self, input_shape):
        shape = tuple(input_shape)
        self.stem.build(shape)
        shape = tuple(self.stem.compute_output_shape(shape))
        # Shapes by stride, as the stacked decoder picks its inputs (deeplab2's stride_to_features).
        by_stride = {min(2, self.output_stride): [shape]}
        for stage, names in self._stage_names:
            for block in self._group(names):
                block.build(shape)
                shape = tuple(block.compute_output_shape(shape))
            by_stride[min(2 ** stage, self.output_stride)] = [shape]
        for stage, stride, channels, names in self._decoder_steps:
            inputs = [shape] + by_stride[stride][-2:]
            size = [-(-dim // stride) for dim in input_shape[1:3]]
            fuse = ResizedFuse(*size, channels, self.activation,
                               name=f'decoder_stage{stage}_resized_fuse', **self.bn_args)
            fuse.build(inputs)
            setattr(self, fuse.name, fuse)
            shape = fuse.compute_output_shape(inputs)
            for block in self._group(names):
                block.build(shape)
                shape = tuple(block.compute_output_shape(shape))
            by_stride[stride].append(shape)
        self.built = True

    def call(self, inputs: tf.Tensor, training: bool = False) -> Dict[str, tf.Tensor]:
        """Returns {res2..res5 (and backbone_output with a stacked decoder)} per `feature_info` (`encoder.base`)."""
        x = self.stem(inputs, training=training)
        by_stride = {min(2, self.output_stride): [x]}
        features = {}
        for stage, names in self._stage_names:
            for block in self._group(names):
                x = block(x, training=training)
            by_stride[min(2 ** stage, self.output_stride)] = [x]
            if stage > 1:
                features[ENDPOINTS[stage - 2]] = self._activation_fn(x)
        for stage, stride, _, names in self._decoder_steps:
            x = self._fuse(stage)([x] + by_stride[stride][-2:], training=training)
            for block in self._group(names):
                x = block(x, training=training)
            by_stride[stride].append(x)
        if self._decoder_steps:
            features[BACKBONE_OUTPUT] = self._activation_fn(x)
        return features

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            backbone_type=self.backbone_type, blocks_per_stage=self.blocks_per_stage,
            width_multiplier=self.width_multiplier, stem_width_multiplier=self.stem_width_multiplier,
            output_stride=self.output_stride, use_axial_beyond_stride=self.use_axial_beyond_stride, span=self.span,
            query_shape=self.query_shape, num_heads=self.num_heads,
            attention_bottleneck_expansion=self.attention_bottleneck_expansion, key_expansion=self.key_expansion,
            value_expansion=self.value_expansion, use_squeeze_and_excite=self.use_squeeze_and_excite,
            use_sac_beyond_stride=self.use_sac_beyond_stride, drop_path_keep_prob=self.drop_path_keep_prob,
            drop_path_beyond_stride=self.drop_path_beyond_stride, drop_path_schedule=self.drop_path_schedule,
            activation=self.activation, backbone_decoder_num_stacks=self.backbone_decoder_num_stacks,
            backbone_decoder_blocks_per_stage=self.backbone_decoder_blocks_per_stage,
            high_resolution_output_stride=self.high_resolution_output_stride, block_size=self.block_size,
            max_span=self.max_span, **self.bn_args)
        return config


def _check_arguments(backbone_type, blocks_per_stage, output_stride, use_axial_beyond_stride, drop_path_schedule,
                     activation, decoder_stacks, high_resolution_output_stride) -> None:
    """Raises ValueError naming the first bad argument."""
    checks = [
        (backbone_type in BACKBONE_TYPES, f'`backbone_type` must be one of {BACKBONE_TYPES}. Received: '
                                          f'{backbone_type!r}'),
        (len(blocks_per_stage) == 4 and min(blocks_per_stage) >= 1,
         f'`blocks_per_stage` must be 4 positive counts (res2..res5). Received: {list(blocks_per_stage)}'),
        (output_stride in (8, 16, 32), f'`output_stride` must be 8, 16 or 32. Received: {output_stride}'),
        (use_axial_beyond_stride in _AXIAL_STRIDES,
         f'`use_axial_beyond_stride` must be one of {_AXIAL_STRIDES}. Received: {use_axial_beyond_stride}'),
        (drop_path_schedule in ('constant', 'linear'),
         f'`drop_path_schedule` must be "constant" or "linear". Received: {drop_path_schedule!r}'),
        (activation in activations.NAMES, f'`activation` must be one of {activations.NAMES}. Received: '
                                          f'{activation!r}'),
        (decoder_stacks >= 0, f'`backbone_decoder_num_stacks` must be >= 0. Received: {decoder_stacks}'),
        (not decoder_stacks or 2 <= high_resolution_output_stride < output_stride,
         '`high_resolution_output_stride` must be in [2, output_stride) with a stacked decoder. Received: '
         f'{high_resolution_output_stride}'),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(f'DeepLab2AxialResNet: {message}')


"""Named models: `build_model(name, **overrides)`.

Each entry names its task, its encoder class and that class's default arguments (keras-hub style: the model takes the
encoder as a layer); caller overrides are arguments of that encoder class, plus `num_classes` and the model's own.

Our Axial-DeepLab variants (`AxialResNet`):
  axial_resnet_{26_s,s,m,l,xl}       conv stem, global attention, output stride 32, 1000-way classifier (Table 1)
  full_axial_resnet_{26_s,s,m,l,xl}  axial stem (no max-pool), span 15 everywhere (the stand-alone model of Table 1)
  axial_deeplab_{s,m,l,xl}           Inception stem + max-pool, span 65, output stride 16, Panoptic-DeepLab decoder
                                     (19 classes)
  axial_deeplab_tiny                 width 0.125, one block per stage: trains on a 2-core CPU in minutes

deeplab2's encoder family under deeplab2's `backbone.name` values (`DeepLab2AxialResNet`, Panoptic-DeepLab with 19
classes, deeplab2's defaults of `axial_resnet_instances.py`; span 65 beyond deeplab2's query_shape 129):
  resnet50, resnet50_beta             ResNet-50 with a 7x7 or an Inception stem
  wide_resnet41 (= swidernet)         Wide-ResNet-41 / SWideRNet-(1, 1, 1); squeeze-and-excitation and switchable
                                      atrous convolution (SWideRNet-SAC) come from the config
  axial_swidernet                     SWideRNet with axial blocks from stride 16 (the Axial-SWideRNet-(1, 1, x))
  max_deeplab_s_backbone              ResNet-50-Beta with axial blocks from stride 16 (MaX-DeepLab-S's backbone)
  max_deeplab_l_backbone              Axial-SWideRNet with a stacked decoder (MaX-DeepLab-L's backbone)
  axial_resnet50                      MaX-DeepLab-S's backbone with GeLU, output stride 32 (deeplab2's kMaX pixel
                                      encoder of that name, "MaX-S w/ GeLU")
"""

import dataclasses
import inspect
from typing import Dict, Tuple, Type

import keras

from deeplab_axial import common
from deeplab_axial.model.deeplab import AxialDeepLab, AxialResNetClassifier
from deeplab_axial.model.encoder.axial_resnet import AxialResNet
from deeplab_axial.model.encoder.base import Encoder
from deeplab_axial.model.encoder.deeplab2_axial_resnet import DeepLab2AxialResNet

# Encoder arguments that only axial attention reads.
AXIAL_ARGS = ('span', 'query_shape', 'num_heads', 'block_size', 'max_span', 'attention_bottleneck_expansion',
              'key_expansion', 'value_expansion', 'stem_span')


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """A registered model: task, default class count, encoder class and its default arguments."""
    task: str
    num_classes: int
    encoder_class: Type[Encoder]
    encoder_args: dict

    @property
    def encoder_arg_names(self) -> Tuple[str, ...]:
        """The encoder class's constructor arguments (the valid encoder overrides)."""
        return tuple(name for name in inspect.signature(self.encoder_class.__init__).parameters
                     if name not in ('self', 'kwargs'))

    @property
    def is_deeplab2_family(self) -> bool:
        """deeplab2's own encoder family (built from its configs as deeplab2's builder does)."""
        return self.encoder_class is DeepLab2AxialResNet

    def has_attention(self, **overrides) -> bool:
        """Whether the encoder, with these overrides, has axial-attention blocks."""
        if self.encoder_class is AxialResNet:
            return True
        return dict(self.encoder_args, **overrides)['use_axial_beyond_stride'] > 0


_WIDTHS = {'26_s': (0.5, [1, 2, 4, 1]), 's': (0.5, [3, 4, 6, 3]), 'm': (0.75, [3, 4, 6, 3]),
           'l': (1.0, [3, 4, 6, 3]), 'xl': (2.0, [3, 4, 6, 3])}


def _axial_deeplab_variants() -> Dict[str, ModelEntry]:
    variants = {}
    classifier, panoptic = dict(task=common.TASK_CLASSIFICATION, num_classes=1000), dict(task=common.TASK_PANOPTIC,
                                                                                         num_classes=19)
    for size, (width, blocks) in _WIDTHS.items():
        # The stem scales with the width multiplier and conv/Inception stems are max-pooled (ResNet, the official
        # PyTorch Axial-ResNet): the paper's M-Adds match best that way (README, "Parameters and M-Adds").
        base = dict(width_multiplier=width, stem_width_multiplier=width, blocks_per_stage=blocks)
        variants[f'axial_resnet_{size}'] = ModelEntry(
            encoder_class=AxialResNet, encoder_args=dict(base, stem='conv', span=None, output_stride=32), **classifier)
        variants[f'full_axial_resnet_{size}'] = ModelEntry(
            encoder_class=AxialResNet, **classifier,
            encoder_args=dict(base, stem='axial', stem_pool=False, span=15, stem_span=15, output_stride=32))
        if size != '26_s':
            variants[f'axial_deeplab_{size}'] = ModelEntry(
                encoder_class=AxialResNet, encoder_args=dict(base, stem='inception', span=65, output_stride=16),
                **panoptic)
    variants['axial_deeplab_tiny'] = ModelEntry(
        encoder_class=AxialResNet, **panoptic,
        encoder_args=dict(width_multiplier=0.125, stem_width_multiplier=0.125, blocks_per_stage=[1, 1, 1, 1],
                          stem='inception', span=65, output_stride=16))
    return variants


def _deeplab2_variants() -> Dict[str, ModelEntry]:
    """deeplab2's `axial_resnet_instances.get_model` names (and its kMaX `axial_resnet50`) with their defaults."""
    resnet = dict(backbone_type='resnet', blocks_per_stage=[3, 4, 6, 3], use_axial_beyond_stride=0,
                  drop_path_keep_prob=1.0)
    swidernet = dict(backbone_type='wider_resnet', blocks_per_stage=[3, 6, 3, 3], use_axial_beyond_stride=0,
                     drop_path_keep_prob=0.8, drop_path_beyond_stride=4)
    wide_axial = dict(use_axial_beyond_stride=16, attention_bottleneck_expansion=4, key_expansion=2,
                      value_expansion=4)
    max_s = dict(backbone_type='resnet_beta', blocks_per_stage=[3, 4, 6, 3], use_axial_beyond_stride=16,
                 drop_path_keep_prob=0.8)
    args = {
        'resnet50': resnet,
        'resnet50_beta': dict(resnet, backbone_type='resnet_beta'),
        'wide_resnet41': swidernet,
        'swidernet': swidernet,
        'axial_swidernet': dict(swidernet, **wide_axial),
        'max_deeplab_s_backbone': max_s,
        'max_deeplab_l_backbone': dict(swidernet, **wide_axial, backbone_decoder_num_stacks=1),
        'axial_resnet50': dict(max_s, output_stride=32, activation='gelu', drop_path_keep_prob=1.0,
                               drop_path_schedule='linear'),
    }
    return {name: ModelEntry(task=common.TASK_PANOPTIC, num_classes=19, encoder_class=DeepLab2AxialResNet,
                             encoder_args=value) for name, value in args.items()}


MODELS: Dict[str, ModelEntry] = {**_axial_deeplab_variants(), **_deeplab2_variants()}


def model_names() -> list:
    """All registered names, sorted."""
    return sorted(MODELS)


def entry(name: str) -> ModelEntry:
    """The registered entry of `name`.

    Raises:
      ValueError: unknown name (the message lists the registered ones).
    """
    if name not in MODELS:
        raise ValueError(f'Unknown model name {name!r}. Registered names: {", ".join(model_names())}')
    return MODELS[name]


def model_task(name: str) -> str:
    """'panoptic' or 'classification' for a registered name."""
    return entry(name).task


def build_model(name: str, **overrides) -> keras.Model:
    """Builds the named model (unbuilt: call it or `model.build((None, H, W, 3))`).

    Args:
      name: a registered name (see `model_names()`).
      **overrides: `num_classes` and any argument of the entry's encoder class; panoptic models also take
        `decoder_config` (`PanopticDeepLabDecoder` widths), and their decoder's batch-norm settings follow
        `bn_momentum`, `bn_epsilon` and `use_sync_batchnorm`; classifiers also take `dropout_rate` (before the
        linear layer); both take `input_normalization` ('symmetric' or 'imagenet', see `deeplab.normalize_image`).

    Raises:
      ValueError: unknown name or override.
    """
    spec = entry(name)
    extra = {'num_classes', 'input_normalization'} | (
        {'decoder_config'} if spec.task == common.TASK_PANOPTIC else {'dropout_rate'})
    unknown = sorted(set(overrides) - set(spec.encoder_arg_names) - extra)
    if unknown:
        raise ValueError(f'build_model({name!r}): unknown overrides {unknown}. Valid: {", ".join(sorted(extra))}, '
                         f'{", ".join(spec.encoder_arg_names)} ({spec.encoder_class.__name__})')
    num_classes = overrides.pop('num_classes', spec.num_classes)
    decoder_config = overrides.pop('decoder_config', None)
    dropout_rate = overrides.pop('dropout_rate', 0.0)
    normalization = overrides.pop('input_normalization', 'symmetric')
    encoder_args = dict(spec.encoder_args, **overrides)
    encoder = spec.encoder_class(name='encoder', **encoder_args)
    if spec.task == common.TASK_CLASSIFICATION:
        return AxialResNetClassifier(num_classes, encoder, dropout_rate=dropout_rate,
                                     input_normalization=normalization, name=name)
    decoder_bn = {key: encoder_args[key] for key in ('bn_momentum', 'bn_epsilon', 'use_sync_batchnorm')
                  if key in encoder_args}
    return AxialDeepLab(num_classes, encoder, decoder_config=decoder_config, input_normalization=normalization,
                        name=name, **decoder_bn)

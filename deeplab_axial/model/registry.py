"""Named models: `build_model(name, **overrides)`.

Each entry is defaults -> variant table -> caller overrides (timm / deeplab2 style). Overrides are the
`AxialResNet` arguments (span, width_multiplier, stem_width_multiplier, blocks_per_stage, output_stride,
use_sync_batchnorm, drop_path_keep_prob, drop_path_schedule, ...) plus `num_classes`.

  axial_resnet_{26_s,s,m,l,xl}       conv stem, global attention, output stride 32, 1000-way classifier (Table 1)
  full_axial_resnet_{26_s,s,m,l,xl}  axial stem (no max-pool), span 15 everywhere (the stand-alone model of Table 1)
  axial_deeplab_{s,m,l,xl}           Inception stem + max-pool, span 65, output stride 16, Panoptic-DeepLab decoder
                                     (19 classes)
  axial_deeplab_tiny                 width 0.125, one block per stage: trains on a 2-core CPU in minutes
"""

import inspect
from typing import Dict

import keras

from deeplab_axial.model.deeplab import AxialDeepLab, AxialResNetClassifier
from deeplab_axial.model.encoder.axial_resnet import AxialResNet

_WIDTHS = {'26_s': (0.5, [1, 2, 4, 1]), 's': (0.5, [3, 4, 6, 3]), 'm': (0.75, [3, 4, 6, 3]),
           'l': (1.0, [3, 4, 6, 3]), 'xl': (2.0, [3, 4, 6, 3])}
_ENCODER_ARGS = tuple(name for name in inspect.signature(AxialResNet.__init__).parameters
                      if name not in ('self', 'kwargs'))


def _variants() -> Dict[str, dict]:
    variants = {}
    for size, (width, blocks) in _WIDTHS.items():
        # The stem scales with the width multiplier and conv/Inception stems are max-pooled (ResNet, the official
        # PyTorch Axial-ResNet): the paper's M-Adds match best that way (README, "Parameters and M-Adds").
        base = dict(width_multiplier=width, stem_width_multiplier=width, blocks_per_stage=blocks)
        variants[f'axial_resnet_{size}'] = dict(
            task='classification', num_classes=1000, encoder=dict(base, stem='conv', span=None, output_stride=32))
        variants[f'full_axial_resnet_{size}'] = dict(
            task='classification', num_classes=1000,
            encoder=dict(base, stem='axial', stem_pool=False, span=15, stem_span=15, output_stride=32))
        if size != '26_s':
            variants[f'axial_deeplab_{size}'] = dict(
                task='panoptic', num_classes=19, encoder=dict(base, stem='inception', span=65, output_stride=16))
    variants['axial_deeplab_tiny'] = dict(
        task='panoptic', num_classes=19,
        encoder=dict(width_multiplier=0.125, stem_width_multiplier=0.125, blocks_per_stage=[1, 1, 1, 1],
                     stem='inception', span=65, output_stride=16))
    return variants


MODELS = _variants()


def model_names() -> list:
    """All registered names, sorted."""
    return sorted(MODELS)


def model_task(name: str) -> str:
    """'panoptic' or 'classification' for a registered name."""
    return _lookup(name)['task']


def _lookup(name: str) -> dict:
    if name not in MODELS:
        raise ValueError(f'Unknown model name {name!r}. Registered names: {", ".join(model_names())}')
    return MODELS[name]


def build_model(name: str, **overrides) -> keras.Model:
    """Builds the named model (unbuilt: call it or `model.build((None, H, W, 3))`).

    Args:
      name: a registered name (see `model_names()`).
      **overrides: `num_classes` and any `AxialResNet` argument; panoptic models also take `decoder_config`
        (`PanopticDeepLabDecoder` widths), and their decoder's batch-norm settings follow `bn_momentum`,
        `bn_epsilon` and `use_sync_batchnorm`; classifiers also take `dropout_rate` (before the linear layer); both
        take `input_normalization` ('symmetric' or 'imagenet', see `deeplab.normalize_image`).

    Raises:
      ValueError: unknown name or override.
    """
    variant = _lookup(name)
    extra = {'num_classes', 'input_normalization'} | (
        {'decoder_config'} if variant['task'] == 'panoptic' else {'dropout_rate'})
    unknown = sorted(set(overrides) - set(_ENCODER_ARGS) - extra)
    if unknown:
        raise ValueError(f'build_model({name!r}): unknown overrides {unknown}. Valid: {", ".join(sorted(extra))}, '
                         f'{", ".join(_ENCODER_ARGS)}')
    num_classes = overrides.pop('num_classes', variant['num_classes'])
    decoder_config = overrides.pop('decoder_config', None)
    dropout_rate = overrides.pop('dropout_rate', 0.0)
    normalization = overrides.pop('input_normalization', 'symmetric')
    encoder = dict(variant['encoder'], **overrides)
    if variant['task'] == 'classification':
        return AxialResNetClassifier(num_classes, encoder, dropout_rate=dropout_rate,
                                     input_normalization=normalization, name=name)
    decoder_bn = {key: encoder[key] for key in ('bn_momentum', 'bn_epsilon', 'use_sync_batchnorm') if key in encoder}
    return AxialDeepLab(num_classes, encoder, decoder_config=decoder_config, input_normalization=normalization,
                        name=name, **decoder_bn)

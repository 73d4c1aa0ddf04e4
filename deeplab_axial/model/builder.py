"""Builds models and post-processors from an `ExperimentOptions` config (deeplab2's `model/builder.py`).

Mapping of config fields to registry overrides:
- `backbone.name` is a registry name (`deeplab_axial.model.registry`). For our Axial-DeepLab variants, width, stem
  width, layer multiplier and output stride override the variant only when the field is set in the config: deeplab2
  always passed `backbone_width_multiplier` (default 1.0), which silently turned its Axial-DeepLab-S into L. deeplab2's
  own names (its encoder family: resnet50, swidernet, axial_swidernet, max_deeplab_*_backbone, ...) read those fields
  and squeeze-and-excitation / switchable atrous convolution as deeplab2's builder does, defaults included.
- `deeplab2_layout` builds an Axial-ResNet as deeplab2 checkpoints hold it (`deeplab2_checkpoint.DEEPLAB2_LAYOUT`,
  with the config's stem width, default 1); deeplab2's encoder family always has deeplab2's layout.
- `pytorch_layout` builds the official PyTorch Axial-ResNets' layout and input normalisation
  (`pytorch_checkpoint.PYTORCH_LAYOUT`; its batch-norm epsilon replaces the solver's); Axial-ResNet names only.
- `backbone_layer_multiplier` scales the blocks per stage, truncated as deeplab2 does (each stage needs one block);
  `axial_span: 0` is global attention. A convolutional encoder takes no attention field (`axial_span`, `num_heads`).
- The decoder widths come from `decoder`, `panoptic_deeplab.low_level`, `panoptic_deeplab.instance` and the heads.
- Batch norm follows `trainer_options.solver_options` (sync BN, momentum, epsilon).
"""

import re
from typing import Optional

import keras

from deeplab_axial import common
from deeplab_axial.data.dataset import DatasetDescriptor
from deeplab_axial.model import deeplab2_checkpoint, pytorch_checkpoint, registry
from deeplab_axial.model.encoder.axial_resnet import AxialResNet
from deeplab_axial.model.post_processor.panoptic_deeplab import PostProcessor
from deeplab_axial.protos import config_pb2

_LOW_LEVEL_KEYS = (common.RES3, common.RES2)


class ModelConfigError(ValueError):
    """A model field of the config cannot be built; the message names the field."""


# The config field behind each model argument the config sets, to name it in the layers' errors.
_ARGUMENT_FIELDS = {
    'num_heads': 'model_options.backbone.num_heads', 'span': 'model_options.backbone.axial_span',
    'output_stride': 'model_options.backbone.output_stride',
    'width_multiplier': 'model_options.backbone.backbone_width_multiplier',
    'stem_width_multiplier': 'model_options.backbone.stem_width_multiplier',
    'blocks_per_stage': 'model_options.backbone.backbone_layer_multiplier',
    'drop_path_keep_prob': 'model_options.backbone.drop_path_keep_prob',
    'drop_path_schedule': 'model_options.backbone.drop_path_schedule',
    'use_squeeze_and_excite': 'model_options.backbone.use_squeeze_and_excite',
    'use_sac_beyond_stride': 'model_options.backbone.use_sac_beyond_stride',
    'dropout_rate': 'model_options.classification.dropout_rate',
    'bn_momentum': 'trainer_options.solver_options.batchnorm_momentum',
    'bn_epsilon': 'trainer_options.solver_options.batchnorm_epsilon',
    'use_sync_batchnorm': 'trainer_options.solver_options.use_sync_batchnorm',
}


def _naming_the_field(error: ValueError) -> ModelConfigError:
    """A layer's error while building from a config, prefixed with the config fields of the arguments it names."""
    message = str(error)
    fields = [field for argument, field in _ARGUMENT_FIELDS.items()
              if re.search(rf'`{argument}`|\b{argument}=', message)]
    return ModelConfigError(f'{", ".join(fields) or "model_options"}: {message}')


def _encoder_overrides(config: config_pb2.ExperimentOptions, entry: registry.ModelEntry) -> dict:
    backbone = config.model_options.backbone
    solver = config.trainer_options.solver_options
    overrides = dict(drop_path_keep_prob=backbone.drop_path_keep_prob, drop_path_schedule=backbone.drop_path_schedule,
                     use_sync_batchnorm=solver.use_sync_batchnorm, bn_momentum=solver.batchnorm_momentum,
                     bn_epsilon=solver.batchnorm_epsilon)
    overrides.update(_size_overrides(backbone, entry))
    overrides.update(_block_overrides(backbone, entry))
    return overrides


def _size_overrides(backbone, entry: registry.ModelEntry) -> dict:
    """Output stride, widths and depth. deeplab2's own names read every field as deeplab2's builder does (proto
    defaults included), so that its configs build its networks; our paper variants keep theirs unless a field is set."""
    family = entry.is_deeplab2_family
    overrides = {}
    if family or backbone.HasField('output_stride'):
        overrides['output_stride'] = backbone.output_stride
    if family or backbone.HasField('backbone_width_multiplier'):
        overrides['width_multiplier'] = backbone.backbone_width_multiplier
    if backbone.deeplab2_layout and backbone.pytorch_layout:
        raise ModelConfigError('model_options.backbone: deeplab2_layout and pytorch_layout are two different '
                               'layouts; set at most one')
    if backbone.pytorch_layout and entry.encoder_class is not AxialResNet:
        raise ModelConfigError(f'model_options.backbone.pytorch_layout: {backbone.name} is not an Axial-ResNet; the '
                               'official PyTorch layout exists only for axial_resnet_* names')
    if backbone.deeplab2_layout and not family:
        overrides.update(deeplab2_checkpoint.DEEPLAB2_LAYOUT)
    if backbone.pytorch_layout:
        overrides.update(pytorch_checkpoint.PYTORCH_LAYOUT)
    if family or backbone.HasField('stem_width_multiplier') or backbone.deeplab2_layout:
        overrides['stem_width_multiplier'] = backbone.stem_width_multiplier
    if family or backbone.HasField('backbone_layer_multiplier'):
        blocks = entry.encoder_args['blocks_per_stage']
        # deeplab2 truncates (utils.scale_int_list), so a config builds the same depth in both.
        overrides['blocks_per_stage'] = [int(b * backbone.backbone_layer_multiplier) for b in blocks]
        if min(overrides['blocks_per_stage']) < 1:
            raise ModelConfigError(
                f'model_options.backbone.backbone_layer_multiplier: {backbone.backbone_layer_multiplier:g} leaves a '
                f'stage of {backbone.name} ({blocks} blocks) without blocks: {overrides["blocks_per_stage"]} (the '
                'counts are truncated, as in deeplab2)')
    return overrides


def _block_overrides(backbone, entry: registry.ModelEntry) -> dict:
    """Attention, squeeze-and-excitation and switchable atrous convolution, each only to an encoder that has it."""
    name, overrides = backbone.name, {}
    if entry.has_attention():
        overrides['num_heads'] = backbone.num_heads
        if backbone.HasField('axial_span'):
            overrides['span'] = backbone.axial_span or None
    else:
        for field in ('axial_span', 'num_heads'):
            if backbone.HasField(field):
                raise ModelConfigError(f'model_options.backbone.{field}: {name} is a convolutional encoder without '
                                       'axial attention; leave the field unset')
    if entry.is_deeplab2_family:
        overrides.update(use_squeeze_and_excite=backbone.use_squeeze_and_excite,
                         use_sac_beyond_stride=backbone.use_sac_beyond_stride)
    else:
        for field, off in (('use_squeeze_and_excite', False), ('use_sac_beyond_stride', -1)):
            if backbone.HasField(field) and getattr(backbone, field) not in (off, 0):
                raise ModelConfigError(
                    f'model_options.backbone.{field}: {name} ({entry.encoder_class.__name__}) has no '
                    'squeeze-and-excitation or switchable atrous convolution; deeplab2\'s encoder family '
                    f'(e.g. swidernet) has. Received: {getattr(backbone, field)}')
    return overrides


def _projections(low_levels, field: str) -> list:
    keys = tuple(level.feature_key for level in low_levels)
    if keys != _LOW_LEVEL_KEYS:
        raise ModelConfigError(f'model_options.panoptic_deeplab.{field}: feature_key must be {_LOW_LEVEL_KEYS} in '
                               f'this order. Received: {keys}')
    return [level.channels_project for level in low_levels]


def _decoder_config(config: config_pb2.ExperimentOptions) -> dict:
    options = config.model_options
    panoptic = options.panoptic_deeplab
    instance = panoptic.instance
    instance_decoder = instance.instance_decoder_override if instance.HasField('instance_decoder_override') \
        else options.decoder
    decoder = dict(semantic_aspp_channels=options.decoder.aspp_channels,
                   semantic_decoder_channels=options.decoder.decoder_channels,
                   instance_aspp_channels=instance_decoder.aspp_channels,
                   instance_decoder_channels=instance_decoder.decoder_channels)
    if panoptic.low_level:
        decoder['semantic_low_level_projections'] = _projections(panoptic.low_level, 'low_level')
    if instance.low_level_override:
        decoder['instance_low_level_projections'] = _projections(instance.low_level_override,
                                                                 'instance.low_level_override')
    if panoptic.semantic_head.HasField('head_channels'):
        decoder['semantic_head_channels'] = panoptic.semantic_head.head_channels
    if instance.center_head.HasField('head_channels'):
        decoder['center_head_channels'] = instance.center_head.head_channels
    if instance.regression_head.HasField('head_channels'):
        decoder['offset_head_channels'] = instance.regression_head.head_channels
    return decoder


def build_model(config: config_pb2.ExperimentOptions, descriptor: DatasetDescriptor) -> keras.Model:
    """The config's model, unbuilt, with `num_classes` checked against the dataset.

    Raises:
      ModelConfigError: unknown backbone name, a class count that disagrees with the dataset, a decoder layout
        this model does not have, or a value a layer rejects (named by its config field).
    """
    options = config.model_options
    name = options.backbone.name
    if name not in registry.MODELS:
        raise ModelConfigError(f'model_options.backbone.name: unknown model {name!r}. Registered names: '
                               f'{", ".join(registry.model_names())}')
    entry = registry.entry(name)
    task = entry.task
    meta = options.WhichOneof('meta_architecture')
    expected_meta = 'panoptic_deeplab' if task == common.TASK_PANOPTIC else 'classification'
    if meta != expected_meta:
        raise ModelConfigError(f'model_options: backbone {name!r} is a {task} model and needs the '
                               f'{expected_meta!r} meta architecture. Received: {meta!r}')
    if task == common.TASK_PANOPTIC:
        num_classes = options.panoptic_deeplab.semantic_head.output_channels or descriptor.num_classes
        field = 'model_options.panoptic_deeplab.semantic_head.output_channels'
    else:
        num_classes = options.classification.num_classes or descriptor.num_classes
        field = 'model_options.classification.num_classes'
    if num_classes != descriptor.num_classes:
        raise ModelConfigError(f'{field} is {num_classes} but dataset {descriptor.name!r} has '
                               f'{descriptor.num_classes} classes')
    overrides = _encoder_overrides(config, entry)
    if task == common.TASK_PANOPTIC:
        overrides['decoder_config'] = _decoder_config(config)
    else:
        overrides['dropout_rate'] = options.classification.dropout_rate
    try:
        return registry.build_model(name, num_classes=num_classes, **overrides)
    except ValueError as e:
        raise _naming_the_field(e) from None


def build_post_processor(config: config_pb2.ExperimentOptions, descriptor: DatasetDescriptor,
                         keep_k_centers: Optional[int] = None) -> PostProcessor:
    """Panoptic-DeepLab post-processing with the evaluator's threshold, NMS kernel, top-k and stuff area."""
    evaluator = config.evaluator_options
    return PostProcessor.from_dataset(
        descriptor, center_threshold=evaluator.center_score_threshold, nms_kernel=evaluator.nms_kernel,
        keep_k_centers=keep_k_centers or evaluator.keep_k_centers, stuff_area_limit=evaluator.stuff_area_limit)

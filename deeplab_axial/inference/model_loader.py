"""Builds a trained model for inference from an experiment config and a checkpoint (export and checkpoint runner).

The trainer's controller saves `tf.train.Checkpoint(global_step=..., optimizer=..., **model.checkpoint_items)`:
the model's parts sit at the top level under their common.CKPT_* names. Inference restores just those parts
(`expect_partial` for the step, optimizer and input position) and checks that every model variable was found. A
deeplab2 checkpoint of the whole model is read through `deeplab2_checkpoint` (config with backbone.deeplab2_layout).
The model is built at the eval crop size (`eval_dataset_options.crop_size`): axial attention needs a static input
size, and evaluation pads every image to that size.
"""

import dataclasses
import os
from typing import Dict, Mapping, Optional, Tuple

import keras
import tensorflow as tf

from deeplab_axial import common
from deeplab_axial import config_utils
from deeplab_axial.data.dataset import DatasetDescriptor
from deeplab_axial.model import builder
from deeplab_axial.model import deeplab2_checkpoint
from deeplab_axial.model import registry
from deeplab_axial.model.post_processor.panoptic_deeplab import PostProcessor
from deeplab_axial.protos import config_pb2


class CheckpointError(ValueError):
    """A checkpoint that is missing or does not hold the config's model; the message names the path."""


@dataclasses.dataclass
class InferenceModel:
    """A restored model with everything inference needs to know about it.

    Attributes:
      model: the Keras model, built at `input_size`, weights restored.
      post_processor: Panoptic-DeepLab post-processing from evaluator_options; None for classification.
      descriptor: the dataset the model predicts.
      task: 'panoptic' or 'classification'.
      model_name: registry name (model_options.backbone.name).
      input_size: (height, width) the model was built for: eval_dataset_options.crop_size.
      resize_options: eval_dataset_options' resize-to-range (`min_resize_value`, `max_resize_value`,
        `resize_factor`; 0 = off), keyword arguments of `inference_path.fit_to_input_size`.
      checkpoint_path: the checkpoint prefix that was restored.
      scales: evaluator_options.eval_scales ((1.0,) when empty): the input scales inference averages over.
      flip: evaluator_options.add_flipped_images: inference also averages over mirrored inputs.
    """
    model: keras.Model
    post_processor: Optional[PostProcessor]
    descriptor: DatasetDescriptor
    task: str
    model_name: str
    input_size: Tuple[int, int]
    resize_options: Dict[str, int]
    checkpoint_path: str
    scales: Tuple[float, ...] = (1.0,)
    flip: bool = False


def load_config(config_file: str, config_params: Optional[Mapping[str, str]] = None
                ) -> config_pb2.ExperimentOptions:
    """Reads an experiment config for inference.

    Placeholders that stay unfilled are allowed (the data paths, `${DATA_DIR}`, are not needed for inference);
    a placeholder in a field the model needs fails when that field is used.

    Raises:
      config_utils.ConfigError naming the file or field.
    """
    return config_utils.load_config(config_file, params=config_params, allow_unfilled=True)


def resolve_checkpoint(checkpoint: str) -> str:
    """A checkpoint prefix: `checkpoint` itself, or the newest checkpoint of a directory.

    Raises:
      CheckpointError: nothing readable at that path.
    """
    if os.path.isdir(checkpoint):
        latest = tf.train.latest_checkpoint(checkpoint)
        if latest is None:
            raise CheckpointError(f'Checkpoint directory {checkpoint!r} holds no checkpoint (no `checkpoint` '
                                  'file naming a prefix with a .index file)')
        return latest
    if not tf.io.gfile.exists(checkpoint + '.index'):
        raise CheckpointError(f'Checkpoint {checkpoint!r} does not exist: expected a prefix with a .index file '
                              '(e.g. model_dir/ckpt-1000) or a directory of checkpoints')
    return checkpoint


def restore_model(model: keras.Model, checkpoint: str) -> str:
    """Restores the model's `checkpoint_items` from a trainer checkpoint; returns the prefix read.

    The model must be built. Entries of the checkpoint that the model lacks (global step, optimizer slots, the
    input position) are ignored; a model variable the checkpoint lacks is an error.

    Raises:
      CheckpointError naming the checkpoint and the problem.
    """
    path = resolve_checkpoint(checkpoint)
    if deeplab2_checkpoint.is_deeplab2_checkpoint(path):
        _restore_from_deeplab2(model, path)
        return path
    status = tf.train.Checkpoint(**model.checkpoint_items).read(path)
    try:
        status.expect_partial().assert_existing_objects_matched()
    except AssertionError as e:
        raise CheckpointError(f'Checkpoint {path!r} does not hold this model ({model.name}, items '
                              f'{sorted(model.checkpoint_items)}): {e}') from None
    return path


def _restore_from_deeplab2(model: keras.Model, path: str) -> None:
    """Every item of the model from a deeplab2 checkpoint (`deeplab2_checkpoint`), or a CheckpointError."""
    missing = sorted(set(model.checkpoint_items) - set(deeplab2_checkpoint.readable_items(path)))
    if missing:
        raise CheckpointError(f'Checkpoint {path!r} is a deeplab2 checkpoint without {missing} of {model.name} (an '
                              'ImageNet checkpoint holds only the encoder: use it as model_options.initial_checkpoint '
                              'to fine-tune)')
    try:
        deeplab2_checkpoint.load_deeplab2_checkpoint(model.checkpoint_items, path)
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def input_size(config: config_pb2.ExperimentOptions) -> Tuple[int, int]:
    """(height, width) from eval_dataset_options.crop_size.

    Raises:
      config_utils.ConfigError: the field does not hold two positive values.
    """
    return config_utils.crop_size(config.eval_dataset_options, 'eval_dataset_options')


def resize_options(config: config_pb2.ExperimentOptions) -> Dict[str, int]:
    """eval_dataset_options' resize-to-range settings as `fit_to_input_size` keyword arguments.

    Raises:
      config_utils.ConfigError: a [height, width] pair in min/max_resize_value (inference takes one side length).
    """
    options = config.eval_dataset_options
    values = {}
    for field in ('min_resize_value', 'max_resize_value'):
        sizes = list(getattr(options, field))
        if len(sizes) > 1:
            raise config_utils.ConfigError(f'eval_dataset_options.{field}: inference takes one side length. '
                                           f'Received: {sizes}')
        values[field] = sizes[0] if sizes else 0
    values['resize_factor'] = options.resize_factor
    return values


def load_model(config: config_pb2.ExperimentOptions, checkpoint: str) -> InferenceModel:
    """Builds the config's model (drop path off) at the eval crop size and restores it from `checkpoint`.

    Raises:
      config_utils.ConfigError / builder.ModelConfigError naming a bad field; CheckpointError.
    """
    descriptors = config_utils.validate(config)
    descriptor = descriptors.get('eval') or descriptors['train']
    config = config_pb2.ExperimentOptions.FromString(config.SerializeToString())
    config.model_options.backbone.drop_path_keep_prob = 1.0
    size = input_size(config)
    model = builder.build_model(config, descriptor)
    model.build((None,) + size + (3,))
    path = restore_model(model, checkpoint)
    name = config.model_options.backbone.name
    task = registry.model_task(name)
    post_processor = builder.build_post_processor(config, descriptor) if task == common.TASK_PANOPTIC else None
    return InferenceModel(model=model, post_processor=post_processor, descriptor=descriptor, task=task,
                          model_name=name, input_size=size, resize_options=resize_options(config),
                          checkpoint_path=path, scales=config_utils.eval_scales(config.evaluator_options),
                          flip=config.evaluator_options.add_flipped_images)

"""Maps a config's `DatasetOptions` (train_dataset_options / eval_dataset_options) onto input_pipeline.DataOptions.

One function, so that every trainer mode, the benchmarks and the tests read the config the same way.
"""

from typing import Optional

from deeplab_axial import config_utils
from deeplab_axial.data import dataset as dataset_lib
from deeplab_axial.data import input_pipeline
from deeplab_axial.protos import dataset_pb2


def _single(options: dataset_pb2.DatasetOptions, field: str) -> int:
    """deeplab2 declares the resize values repeated; the pipeline takes one value (none = 0 = off)."""
    values = list(getattr(options, field))
    if len(values) > 1:
        raise ValueError(f'DatasetOptions.{field} of {options.dataset!r} must hold at most one value. '
                         f'Received: {values}')
    return values[0] if values else 0


def to_data_options(options: dataset_pb2.DatasetOptions, descriptor: dataset_lib.DatasetDescriptor, *,
                    is_training: bool, seed: Optional[int] = None) -> input_pipeline.DataOptions:
    """The input-pipeline options of one dataset block of the config.

    Args:
      options: train_dataset_options or eval_dataset_options.
      descriptor: the dataset it names (config_utils.validate / get_dataset_descriptor).
      is_training: training pipeline (shuffle, augment, repeat) or one ordered evaluation pass.
      seed: shuffling/augmentation seed; None = fresh randomness.

    Returns:
      DataOptions with the GLOBAL batch size of the config; evaluation keeps the last partial batch.

    Raises:
      config_utils.ConfigError: crop_size does not hold two positive values.
      ValueError: a resize field holds several values.
    """
    crop = config_utils.crop_size(options, 'train_dataset_options' if is_training else 'eval_dataset_options')
    aug = options.augmentations
    return input_pipeline.DataOptions(
        dataset=descriptor,
        file_pattern=list(options.file_pattern),
        batch_size=options.batch_size,
        crop_size=crop,
        min_resize_value=_single(options, 'min_resize_value'),
        max_resize_value=_single(options, 'max_resize_value'),
        resize_factor=options.resize_factor,
        min_scale_factor=aug.min_scale_factor if is_training else 1.0,
        max_scale_factor=aug.max_scale_factor if is_training else 1.0,
        scale_factor_step_size=aug.scale_factor_step_size,
        autoaugment_policy_name=(aug.autoaugment_policy_name or None) if is_training else None,
        sigma=options.sigma,
        increase_small_instance_weights=options.increase_small_instance_weights,
        small_instance_threshold=options.small_instance_threshold,
        small_instance_weight=options.small_instance_weight,
        is_training=is_training,
        seed=seed,
        # Evaluation keeps the file order; a seeded training run also keeps it, so that it is reproducible.
        deterministic=not is_training or seed is not None,
        shuffle_buffer_size=options.shuffle_buffer_size,
        drop_remainder=is_training,
        repeat=is_training,
    )

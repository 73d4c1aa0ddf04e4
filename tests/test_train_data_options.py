"""trainer/data_options.to_data_options: config DatasetOptions -> input_pipeline.DataOptions, field by field."""

import pytest
from google.protobuf import text_format

from deeplab_axial.data import dataset as dataset_lib
from deeplab_axial.protos import dataset_pb2
from trainer import data_options

_OPTIONS = '''
dataset: "cityscapes_panoptic"
file_pattern: "/data/cs/train-*.tfrecord"
file_pattern: "/data/extra/*.tfrecord"
batch_size: 16
crop_size: 1025
crop_size: 2049
min_resize_value: 1025
max_resize_value: 2049
resize_factor: 32
augmentations {
  min_scale_factor: 0.5
  max_scale_factor: 2.0
  scale_factor_step_size: 0.1
  autoaugment_policy_name: "simple_classification_policy_magnitude_scale_0.2"
}
sigma: 5
increase_small_instance_weights: true
small_instance_threshold: 4096
small_instance_weight: 3.0
shuffle_buffer_size: 77
'''


def _options(text: str = _OPTIONS) -> dataset_pb2.DatasetOptions:
    return text_format.Parse(text, dataset_pb2.DatasetOptions())


def test_training_mapping_field_by_field():
    descriptor = dataset_lib.get('cityscapes_panoptic')
    o = data_options.to_data_options(_options(), descriptor, is_training=True, seed=7)
    assert o.dataset is descriptor
    assert o.file_pattern == ['/data/cs/train-*.tfrecord', '/data/extra/*.tfrecord']
    assert o.batch_size == 16 and o.crop_size == (1025, 2049)
    assert (o.min_resize_value, o.max_resize_value, o.resize_factor) == (1025, 2049, 32)
    assert o.min_scale_factor == 0.5 and o.max_scale_factor == 2.0
    assert o.scale_factor_step_size == pytest.approx(0.1)
    assert o.autoaugment_policy_name == 'simple_classification_policy_magnitude_scale_0.2'
    assert o.sigma == 5 and o.increase_small_instance_weights
    assert o.small_instance_threshold == 4096 and o.small_instance_weight == 3.0
    assert o.shuffle_buffer_size == 77
    assert o.is_training and o.repeat and o.drop_remainder
    assert o.seed == 7 and o.deterministic  # Seeded: reproducible order.


def test_evaluation_mapping_turns_augmentation_off_and_keeps_every_example():
    descriptor = dataset_lib.get('cityscapes_panoptic')
    o = data_options.to_data_options(_options(), descriptor, is_training=False)
    assert (o.min_scale_factor, o.max_scale_factor) == (1.0, 1.0)
    assert o.autoaugment_policy_name is None
    assert not o.is_training and not o.repeat and not o.drop_remainder and o.deterministic
    # Resizing is preprocessing, not augmentation: evaluation keeps it.
    assert (o.min_resize_value, o.max_resize_value, o.resize_factor) == (1025, 2049, 32)


def test_unseeded_training_is_not_forced_deterministic():
    o = data_options.to_data_options(_options(), dataset_lib.get('cityscapes_panoptic'), is_training=True)
    assert o.seed is None and not o.deterministic


def test_defaults_of_an_almost_empty_block():
    o = data_options.to_data_options(_options('dataset: "synthetic_panoptic" crop_size: 65 crop_size: 97'),
                                     dataset_lib.get('synthetic_panoptic'), is_training=True)
    assert (o.min_resize_value, o.max_resize_value, o.resize_factor) == (0, 0, 0)
    assert o.autoaugment_policy_name is None
    assert o.batch_size == 32 and o.sigma == 8.0  # The proto defaults (deeplab2's).


def test_bad_fields_are_named():
    descriptor = dataset_lib.get('synthetic_panoptic')
    with pytest.raises(ValueError, match=r'train_dataset_options.crop_size must hold .* Received: \[65\]'):
        data_options.to_data_options(_options('dataset: "synthetic_panoptic" crop_size: 65'), descriptor,
                                     is_training=True)
    with pytest.raises(ValueError, match='min_resize_value'):
        data_options.to_data_options(_options('dataset: "synthetic_panoptic" crop_size: 65 crop_size: 65 '
                                              'min_resize_value: 1 min_resize_value: 2'), descriptor,
                                     is_training=True)

"""ImageNet-style classification input: TPU-format TFRecords (1-based labels) and TFDS imagenet2012 (0-based)."""

import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deeplab_axial import common
from deeplab_axial.data import input_pipeline
from deeplab_axial.data import synthetic

_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def _write_tpu_records(directory, split, num_files, per_file, size=(40, 60)):
    """TPU-style ImageNet shards written with plain tf.train.Example: PNG bytes, labels 1..4 (1-based)."""
    os.makedirs(directory, exist_ok=True)
    labels = []
    for i in range(num_files):
        path = os.path.join(directory, f'{split}-{i:05d}-of-{num_files:05d}')
        with tf.io.TFRecordWriter(path) as writer:
            for j in range(per_file):
                label = (i * per_file + j) % 4 + 1
                buf = io.BytesIO()
                Image.fromarray(np.full(size + (3,), _COLOURS[label - 1], np.uint8)).save(buf, format='PNG')
                feature = {
                    'image/encoded': tf.train.Feature(bytes_list=tf.train.BytesList(value=[buf.getvalue()])),
                    'image/format': tf.train.Feature(bytes_list=tf.train.BytesList(value=[b'PNG'])),
                    'image/class/label': tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                    'image/class/synset': tf.train.Feature(bytes_list=tf.train.BytesList(value=[b'n0000'])),
                }
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
                labels.append(label)
    return labels


def _descriptor(num_classes=4):
    return dict(name='tiny_imagenet', splits_to_sizes={}, num_classes=num_classes, ignore_label=-1,
                panoptic_label_divisor=0, class_has_instances_list=[], colormap=[], class_names=[],
                task='classification')


def test_tpu_records_eval_labels_are_zero_based_and_centre_crop(tmp_path):
    labels = _write_tpu_records(str(tmp_path), 'validation', 2, 3)
    options = input_pipeline.DataOptions(dataset=_descriptor(), file_pattern=str(tmp_path / 'validation-*'),
                                         batch_size=4, crop_size=(16, 16), is_training=False)
    batches = list(input_pipeline.build_dataset(options))
    got = np.concatenate([b[common.GT_CLASS_LABEL_KEY].numpy() for b in batches])
    np.testing.assert_array_equal(got, np.array(labels) - 1)
    images = np.concatenate([b[common.IMAGE].numpy() for b in batches])
    assert images.shape == (6, 16, 16, 3)
    for image, label in zip(images, got):  # solid images stay solid through resize + centre crop
        np.testing.assert_allclose(image, np.broadcast_to(_COLOURS[label], image.shape), atol=1e-3)


def test_tpu_records_training_is_random_resized_and_reproducible(tmp_path):
    _write_tpu_records(str(tmp_path), 'train', 2, 4)
    options = input_pipeline.DataOptions(dataset=_descriptor(), file_pattern=str(tmp_path / 'train-*'),
                                         batch_size=8, crop_size=(24, 24), seed=3, deterministic=True)
    a = next(iter(input_pipeline.build_dataset(options)))
    b = next(iter(input_pipeline.build_dataset(options)))
    assert a[common.IMAGE].shape == (8, 24, 24, 3)
    np.testing.assert_array_equal(a[common.GT_CLASS_LABEL_KEY], b[common.GT_CLASS_LABEL_KEY])
    assert set(a[common.GT_CLASS_LABEL_KEY].numpy()) <= {0, 1, 2, 3}


def test_zero_based_records_with_offset_zero(tmp_path):
    _write_tpu_records(str(tmp_path), 'validation', 1, 2)
    options = input_pipeline.DataOptions(dataset=_descriptor(5), file_pattern=str(tmp_path / 'validation-*'),
                                         batch_size=2, crop_size=(8, 8), is_training=False, class_label_offset=0)
    np.testing.assert_array_equal(next(iter(input_pipeline.build_dataset(options)))[common.GT_CLASS_LABEL_KEY],
                                  [1, 2])


def test_synthetic_classification_set_is_balanced_tpu_style(tmp_path):
    sizes = synthetic.write_classification_dataset(str(tmp_path), num_train=12, num_val=6, size=32, num_shards=2)
    assert sizes == {'train': 12, 'validation': 6}
    raw = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(
        sorted(tf.io.gfile.glob(str(tmp_path / 'train-*'))))]
    stored = [e.features.feature['image/class/label'].int64_list.value[0] for e in raw]
    assert sorted(stored) == sorted(list(range(1, 7)) * 2)  # 1-based, as TPU-format ImageNet
    options = input_pipeline.DataOptions(dataset='synthetic_classification',
                                         file_pattern=str(tmp_path / 'validation-*'), batch_size=6,
                                         crop_size=(32, 32), is_training=False)
    batch = next(iter(input_pipeline.build_dataset(options)))
    assert sorted(batch[common.GT_CLASS_LABEL_KEY].numpy()) == list(range(6))


def test_tfds_imagenet2012_mock():
    tfds = pytest.importorskip('tensorflow_datasets')
    with tfds.testing.mock_data(num_examples=4):
        options = input_pipeline.DataOptions(dataset='imagenet', file_pattern='tfds:imagenet2012', batch_size=4,
                                             crop_size=(16, 16), is_training=False, tfds_split='validation')
        batch = next(iter(input_pipeline.build_dataset(options)))
        raw = next(iter(tfds.load('imagenet2012', split='validation', batch_size=4)))
    assert batch[common.IMAGE].shape == (4, 16, 16, 3)
    np.testing.assert_array_equal(batch[common.GT_CLASS_LABEL_KEY], raw['label'])  # TFDS labels are 0-based

"""COCO panoptic through TFDS `coco/2017_panoptic`, fed by TFDS's own mock-data facility."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial import common
from deeplab_axial.data import input_pipeline

import data_fixtures

tfds = pytest.importorskip('tensorflow_datasets')

# TFDS `label` = position of the category in the annotation file's (id-sorted) list: person 0, car 2, id 200 -> 132.
_PERSON, _CAR, _WALL = 0, 2, 132


def _examples():
    """Two images in TFDS's decoded format with hand-computed expected panoptic labels."""
    h, w = 10, 14
    seg = np.zeros((h, w), np.int64)
    seg[:4] = 5000
    seg[4:, :4] = 11
    seg[4:, 4:8] = 12
    seg[4:, 8:11] = 70000  # a crowd of cars
    seg[4:, 11:] = 13      # a car instance; pixels left at 0 are void
    seg[9, 13] = 0
    objects = {'id': [5000, 11, 12, 70000, 13], 'label': [_WALL, _PERSON, _PERSON, _CAR, _CAR],
               'is_crowd': [False, False, False, True, False]}
    pan = np.zeros((h, w), np.int32)
    pan[:4] = 133 * 256
    pan[4:, :4] = 1 * 256 + 1
    pan[4:, 4:8] = 1 * 256 + 2
    pan[4:, 8:11] = 3 * 256
    pan[4:, 11:] = 3 * 256 + 1
    pan[9, 13] = 0
    seg2 = np.full((h, w), 77, np.int64)
    seg2[2:5, 2:5] = 78
    objects2 = {'id': [78, 77], 'label': [_CAR, _WALL], 'is_crowd': [False, False]}
    pan2 = np.where(seg2 == 78, 3 * 256 + 1, 133 * 256).astype(np.int32)
    rng = np.random.default_rng(0)
    out = []
    for i, (s, o, p) in enumerate([(seg, objects, pan), (seg2, objects2, pan2)]):
        n = len(o['id'])
        example = {
            'image': rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
            'image/filename': f'00000000000{i}.jpg', 'image/id': i,
            'panoptic_image': data_fixtures.packed_png(s), 'panoptic_image/filename': f'00000000000{i}.png',
            'panoptic_objects': {'id': np.array(o['id'], np.int64), 'area': np.ones(n, np.int64),
                                 'bbox': np.zeros((n, 4), np.float32), 'label': np.array(o['label'], np.int64),
                                 'is_crowd': np.array(o['is_crowd'], bool)}}
        out.append((example, p))
    return out


def _as_dataset(builder, split, decoders=None, read_config=None, **kwargs):
    del split, decoders, read_config, kwargs
    # The signature comes from TFDS's own feature spec, so the examples are exactly what TFDS would yield.
    spec = builder.info.features.get_tensor_spec()
    return tf.data.Dataset.from_generator(lambda: (e for e, _ in _examples()), output_signature=spec)


def test_tfds_coco_panoptic_matches_hand_computed_labels():
    expected = [p for _, p in _examples()]
    with tfds.testing.mock_data(as_dataset_fn=_as_dataset):
        options = input_pipeline.DataOptions(dataset='coco_panoptic', file_pattern='tfds:coco/2017_panoptic',
                                             tfds_split='validation', batch_size=1, crop_size=(17, 17),
                                             is_training=False)
        samples = list(input_pipeline.build_dataset(options))
        train = input_pipeline.DataOptions(dataset='coco_panoptic', file_pattern='tfds:coco/2017_panoptic',
                                           batch_size=2, crop_size=(9, 9), seed=0, repeat=False)
        batch = next(iter(input_pipeline.build_dataset(train)))
    assert len(samples) == 2
    for sample, pan in zip(samples, expected):
        np.testing.assert_array_equal(sample[common.GT_PANOPTIC_RAW][0], pan)
        np.testing.assert_array_equal(sample[common.GT_IS_CROWD_RAW][0], pan == 3 * 256)
    assert samples[0][common.IMAGE_NAME][0].numpy() == b'000000000000'
    assert batch[common.IMAGE].shape == (2, 9, 9, 3) and batch[common.GT_PANOPTIC_KEY].shape == (2, 9, 9)

"""Cityscapes converter on a tiny tree made by cityscapesscripts' own csCreatePanopticImgs (--use-train-id)."""

import contextlib
import io
import os

import numpy as np
import pytest
import tensorflow as tf
from cityscapesscripts.preparation import createPanopticImgs
from PIL import Image

from deeplab_axial import common
from deeplab_axial.data import build_cityscapes_data
from deeplab_axial.data import dataset
from deeplab_axial.data import input_pipeline
from deeplab_axial.data import record_check

import data_fixtures

# Cityscapes label ids: sky 23 (train 10), road 7 (train 0), person 24 (train 11), car 26 (train 13),
# static 4 (ignored in evaluation -> void). Instance pixels hold label_id * 1000 + k; crowd ("group") pixels the
# bare label id.
_H, _W = 8, 12


def _instance_ids_and_expected():
    frames = {}
    ids = np.full((_H, _W), 23, np.int32)
    ids[3:, 0:6] = 7
    ids[3:, 6:8] = 26001
    ids[3:, 8:10] = 26005
    ids[3:6, 10:] = 26
    ids[6:, 10:] = 4
    ids[0:2, 0:2] = 24000
    pan = np.full((_H, _W), 10 * 1000, np.int32)
    pan[3:, 0:6] = 0
    pan[3:, 6:8] = 13 * 1000 + 1
    pan[3:, 8:10] = 13 * 1000 + 2
    pan[3:6, 10:] = 13 * 1000  # crowd: thing class, instance 0
    pan[6:, 10:] = 255 * 1000  # void
    pan[0:2, 0:2] = 11 * 1000 + 1
    frames[('aachen', 'aachen_000000_000019')] = (ids, pan)
    ids = np.full((_H, _W), 7, np.int32)
    ids[2:6, 2:5] = 24002
    pan = np.zeros((_H, _W), np.int32)
    pan[2:6, 2:5] = 11 * 1000 + 1
    frames[('bochum', 'bochum_000000_000313')] = (ids, pan)
    return frames


@pytest.fixture
def cityscapes_root(tmp_path):
    root = str(tmp_path / 'cityscapes')
    rng = np.random.default_rng(1)
    frames = _instance_ids_and_expected()
    expected = {}
    for (city, frame), (ids, pan) in frames.items():
        gt_dir = os.path.join(root, 'gtFine', 'val', city)
        os.makedirs(gt_dir, exist_ok=True)

        Image.fromarray(ids.astype(np.uint16)).save(os.path.join(gt_dir, f'{frame}_gtFine_instanceIds.png'))
        image = rng.integers(0, 256, (_H, _W, 3), dtype=np.uint8)
        data = data_fixtures.write_image(os.path.join(root, 'leftImg8bit', 'val', city, f'{frame}_leftImg8bit.png'),
                                         image, 'PNG')
        expected[frame] = (data, image, pan)
    with contextlib.redirect_stdout(io.StringIO()):
        createPanopticImgs.convert2panoptic(os.path.join(root, 'gtFine'), useTrainId=True, setNames=['val'])
    return root, expected


def test_convert_and_read_back_every_pixel(cityscapes_root, tmp_path):
    root, expected = cityscapes_root
    out = str(tmp_path / 'tfrecord')
    paths = build_cityscapes_data.convert_split(root, out, 'val', num_shards=10)
    assert [os.path.basename(p) for p in paths] == ['val-00000-of-00002.tfrecord', 'val-00001-of-00002.tfrecord']
    seen = set()
    for path in paths:
        for raw in tf.data.TFRecordDataset(path):
            feature = tf.train.Example.FromString(raw.numpy()).features.feature
            name = feature[common.KEY_IMAGE_FILENAME].bytes_list.value[0].decode()
            data, image, pan = expected[name]
            assert feature[common.KEY_ENCODED_IMAGE].bytes_list.value[0] == data
            decoded = input_pipeline.decode_panoptic_example(raw, 1000)
            np.testing.assert_array_equal(decoded['panoptic'], pan)
            np.testing.assert_array_equal(decoded[common.IMAGE], image)
            seen.add(name)
    assert seen == set(expected)
    # --validate finds the converter's records sound: crowd (instance 0 of a thing) and void (255 * 1000) included.
    assert record_check.check_records(os.path.join(out, 'val-*'), dataset.get('cityscapes_panoptic')) == []


def test_crowd_as_ignore_and_eval_pipeline(cityscapes_root, tmp_path):
    root, expected = cityscapes_root
    out = str(tmp_path / 'tfrecord')
    build_cityscapes_data.convert_split(root, out, 'val', num_shards=1, treat_crowd_as_ignore=True)
    options = input_pipeline.DataOptions(dataset='cityscapes_panoptic', file_pattern=os.path.join(out, 'val-*'),
                                         batch_size=2, crop_size=(9, 13), is_training=False)
    batch = next(iter(input_pipeline.build_dataset(options)))
    pan = batch[common.GT_PANOPTIC_RAW][0].numpy()
    want = expected['aachen_000000_000019'][2].copy()
    want[3:6, 10:] = 255 * 1000
    np.testing.assert_array_equal(pan, want)
    assert not batch[common.GT_IS_CROWD_RAW].numpy().any()
    # Padding of the evaluation image/label to the crop size: mean pixel and void.
    np.testing.assert_array_equal(batch[common.IMAGE][:, 8, :, :], 127.5)
    np.testing.assert_array_equal(batch[common.GT_PANOPTIC_KEY][:, :, 12], 255 * 1000)
    np.testing.assert_array_equal(batch[common.GT_SEMANTIC_KEY][0, :8, :12], want // 1000)


def test_missing_left_image_is_named(cityscapes_root, tmp_path):
    root, _ = cityscapes_root
    missing = os.path.join(root, 'leftImg8bit', 'val', 'bochum', 'bochum_000000_000313_leftImg8bit.png')
    os.remove(missing)
    with pytest.raises(FileNotFoundError, match='bochum_000000_000313_leftImg8bit.png'):
        build_cityscapes_data.convert_split(root, str(tmp_path / 'out'), 'val', num_shards=1)


def test_label_consistency_rules_on_hand_made_cityscapes_ids():
    """Classes 0..18 or void 255 (divisor 1000); only things (11..18) carry instances."""
    cityscapes = dataset.get('cityscapes_panoptic')
    assert record_check.label_problem(np.array([0, 10000, 13000, 13001, 18999, 255000]), cityscapes) is None
    assert record_check.label_problem(np.array([0, 19000, 254000]), cityscapes) == (
        'label ids [19000, 254000] have classes outside 0..18 and are not the ignore label 255 (panoptic id = '
        'class * 1000 + instance)')
    assert record_check.label_problem(np.array([-5]), cityscapes).startswith('label ids [-5] have classes outside')
    assert record_check.label_problem(np.array([13002, 10003, 255001]), cityscapes).startswith(
        'label ids [10003, 255001] give an instance to a stuff or void class')


def test_truncated_left_image_is_named(cityscapes_root, tmp_path):
    root, _ = cityscapes_root
    path = os.path.join(root, 'leftImg8bit', 'val', 'bochum', 'bochum_000000_000313_leftImg8bit.png')
    with open(path, 'rb') as f:
        data = f.read()
    with open(path, 'wb') as f:
        f.write(data[:len(data) - 20])
    with pytest.raises(ValueError, match=r'Cannot decode image .*bochum_000000_000313_leftImg8bit\.png'):
        build_cityscapes_data.convert_split(root, str(tmp_path / 'out'), 'val', num_shards=1)

"""COCO panoptic converter: tiny dataset in the real 2017 layout -> TFRecords -> every pixel and byte back."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial import common
from deeplab_axial.data import build_coco_data
from deeplab_axial.data import dataset
from deeplab_axial.data import input_pipeline
from deeplab_axial.data import shard_writer

import data_fixtures


def _read_records(pattern):
    records = []
    for path in sorted(tf.io.gfile.glob(pattern)):
        for raw in tf.data.TFRecordDataset(path):
            example = tf.train.Example.FromString(raw.numpy())
            records.append((path, raw, example.features.feature))
    return records


@pytest.fixture
def coco_root(tmp_path):
    root = str(tmp_path / 'coco')
    return root, data_fixtures.coco_layout(root, dataset.coco_categories())


def test_id_mapping_matches_hand_checked_ids_and_descriptor():
    mapping = build_coco_data.coco_id_mapping(dataset.coco_categories())
    for coco_id, contiguous in data_fixtures.CONTIGUOUS.items():
        assert mapping[coco_id] == contiguous
    coco = dataset.get('coco_panoptic')
    assert all(coco.to_dataset_id(c) == i for i, c in mapping.items())


def test_convert_and_read_back_every_pixel(coco_root, tmp_path):
    root, expected = coco_root
    out = str(tmp_path / 'tfrecord')
    paths = build_coco_data.convert_split(root, out, 'train', num_shards=2, dataset_name='coco_panoptic')
    build_coco_data.convert_split(root, out, 'val', num_shards=5)
    assert [os.path.basename(p) for p in paths] == ['train-00000-of-00002.tfrecord', 'train-00001-of-00002.tfrecord']
    assert sorted(os.listdir(out)) == sorted(os.path.basename(p) for p in paths) + ['val-00000-of-00001.tfrecord']
    records = _read_records(os.path.join(out, '*.tfrecord'))
    assert len(records) == 3
    for _, raw, feature in records:
        name = feature[common.KEY_IMAGE_FILENAME].bytes_list.value[0].decode()
        exp = expected[name]
        # Source image bytes are stored unchanged (same size as the source, decodes identically).
        assert feature[common.KEY_ENCODED_IMAGE].bytes_list.value[0] == exp['image_bytes']
        assert feature[common.KEY_IMAGE_FORMAT].bytes_list.value[0].decode() == exp['format']
        assert feature[common.KEY_IMAGE_HEIGHT].int64_list.value[0] == 12
        assert feature[common.KEY_IMAGE_WIDTH].int64_list.value[0] == 16
        decoded = input_pipeline.decode_panoptic_example(raw, 256)
        np.testing.assert_array_equal(decoded['panoptic'].numpy(), exp['panoptic'])
        if exp['format'] == 'png':
            np.testing.assert_array_equal(decoded[common.IMAGE].numpy(), exp['image'])


def test_eval_pipeline_returns_full_resolution_raw_labels(coco_root, tmp_path):
    root, expected = coco_root
    out = str(tmp_path / 'tfrecord')
    build_coco_data.convert_split(root, out, 'train', num_shards=1)
    options = input_pipeline.DataOptions(dataset='coco_panoptic', file_pattern=os.path.join(out, 'train-*'),
                                         batch_size=1, crop_size=(17, 33), is_training=False)
    samples = list(input_pipeline.build_dataset(options))
    assert [s[common.IMAGE_NAME].numpy()[0].decode() for s in samples] == ['000000000001', '000000000002']
    for s in samples:
        exp = expected[s[common.IMAGE_NAME].numpy()[0].decode()]['panoptic']
        np.testing.assert_array_equal(s[common.GT_PANOPTIC_RAW][0], exp)
        np.testing.assert_array_equal(s[common.GT_SEMANTIC_RAW][0], exp // 256)
        np.testing.assert_array_equal(s[common.GT_SIZE_RAW][0], [12, 16])
        assert s[common.IMAGE].shape == (1, 17, 33, 3)
    crowd = samples[0][common.GT_IS_CROWD_RAW][0].numpy()
    assert crowd[6:, 8:12].all() and crowd.sum() == 6 * 4  # the car crowd only


def _break_json(root, split, edit):
    path = os.path.join(root, 'annotations', f'panoptic_{split}2017.json')
    with open(path) as f:
        data = json.load(f)
    edit(data)
    with open(path, 'w') as f:
        json.dump(data, f)


def test_missing_image_error_names_the_file(coco_root, tmp_path):
    root, _ = coco_root
    os.remove(os.path.join(root, 'train2017', '000000000002.png'))
    with pytest.raises(FileNotFoundError, match='000000000002.png'):
        build_coco_data.convert_split(root, str(tmp_path / 'out'), 'train', num_shards=1)
    assert not os.listdir(tmp_path / 'out')  # nothing left that looks like a shard


def test_png_disagreeing_with_json_names_the_png(coco_root, tmp_path):
    root, _ = coco_root
    _break_json(root, 'train', lambda d: d['annotations'][1]['segments_info'].pop())
    with pytest.raises(ValueError, match=r'000000000002\.png.*\[100000\].*not in the JSON'):
        build_coco_data.convert_split(root, str(tmp_path / 'out'), 'train', num_shards=1)
    _break_json(root, 'val', lambda d: d['annotations'][0]['segments_info'].append(
        {'id': 99, 'category_id': 1, 'iscrowd': 0}))
    with pytest.raises(ValueError, match=r'000000000003\.png.*\[99\].*not in the PNG'):
        build_coco_data.convert_split(root, str(tmp_path / 'out'), 'val', num_shards=1)


def test_unknown_category_names_the_png_and_id(coco_root, tmp_path):
    root, _ = coco_root
    _break_json(root, 'val', lambda d: d['annotations'][0]['segments_info'][0].update(category_id=4242))
    with pytest.raises(ValueError, match=r'000000000003\.png.*unknown category_id 4242'):
        build_coco_data.convert_split(root, str(tmp_path / 'out'), 'val', num_shards=1)


def test_categories_must_match_named_dataset(coco_root, tmp_path):
    root, _ = coco_root
    with pytest.raises(ValueError, match=r'panoptic_val2017\.json.*synthetic_panoptic'):
        build_coco_data.convert_split(root, str(tmp_path / 'out'), 'val', dataset_name='synthetic_panoptic')


def test_finished_shards_are_not_rewritten_and_failed_ones_leave_nothing(coco_root, tmp_path):
    root, _ = coco_root
    out = str(tmp_path / 'out')
    first, second = build_coco_data.convert_split(root, out, 'train', num_shards=2)
    stat = os.stat(first)
    os.remove(second)
    os.utime(first, ns=(1, 1))  # a rewrite would reset the timestamp
    build_coco_data.convert_split(root, out, 'train', num_shards=2)
    assert os.stat(first).st_mtime_ns == 1 and os.stat(first).st_ino == stat.st_ino
    assert os.path.exists(second)
    with pytest.raises(ValueError, match='another shard count'):
        build_coco_data.convert_split(root, out, 'train', num_shards=1)

    def failing(item):
        if item == 3:
            raise ValueError('bad item 3')
        return tf.train.Example()
    with pytest.raises(ValueError, match='bad item 3'):
        shard_writer.write_sharded_tfrecords([1, 2, 3, 4], failing, str(tmp_path / 'w'), 'train', 2, num_workers=2)
    assert os.listdir(tmp_path / 'w') == ['train-00000-of-00002.tfrecord']  # no temp file, no partial shard


def test_label_and_image_of_different_sizes_name_both_files(tmp_path):
    image_path = str(tmp_path / 'img.png')
    png_path = str(tmp_path / 'label.png')
    data_fixtures.write_image(image_path, np.zeros((4, 6, 3), np.uint8), 'PNG')
    data_fixtures.write_image(png_path, data_fixtures.packed_png(np.full((3, 6), 7)), 'PNG')
    segments = [{'id': 7, 'category_id': data_fixtures.COCO_WALL, 'iscrowd': 0}]
    with pytest.raises(ValueError, match=r'label\.png: size \(3, 6\) differs from image .*img\.png size \(4, 6\)'):
        build_coco_data.panoptic_example(image_path, png_path, 'img', segments, data_fixtures.CONTIGUOUS, set(),
                                         1000, 0)

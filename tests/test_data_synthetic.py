"""Built-in synthetic dataset: real COCO panoptic layout (checked with panopticapi), determinism, CLI to TFRecords."""

import contextlib
import filecmp
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from deeplab_axial import common
from deeplab_axial.data import dataset
from deeplab_axial.data import input_pipeline
from deeplab_axial.data import synthetic


def _segment_ids(png_path):
    rgb = np.asarray(Image.open(png_path).convert('RGB')).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


@pytest.fixture(scope='module')
def synthetic_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('synthetic'))
    synthetic.write_panoptic_dataset(root, num_train=24, num_val=4, height=48, width=64, seed=0)
    return root


def test_same_seed_same_files_other_seed_other_files(synthetic_root, tmp_path):
    again, other = str(tmp_path / 'again'), str(tmp_path / 'other')
    synthetic.write_panoptic_dataset(again, num_train=24, num_val=4, height=48, width=64, seed=0)
    synthetic.write_panoptic_dataset(other, num_train=24, num_val=4, height=48, width=64, seed=1)
    files = _files(synthetic_root)
    assert files == _files(again) == _files(other)
    assert all(filecmp.cmp(os.path.join(synthetic_root, f), os.path.join(again, f), shallow=False) for f in files)
    assert not filecmp.cmp(os.path.join(synthetic_root, files[-1]), os.path.join(other, files[-1]), shallow=False)


def test_layout_and_segments_are_consistent(synthetic_root):
    with open(os.path.join(synthetic_root, 'annotations', 'panoptic_train2017.json')) as f:
        data = json.load(f)
    assert {c['id'] for c in data['categories']} == {c['id'] for c in dataset.SYNTHETIC_CATEGORIES}
    things = {c['id'] for c in dataset.SYNTHETIC_CATEGORIES if c['isthing']}
    crowd = void = 0
    for image, ann in zip(data['images'], data['annotations']):
        assert os.path.exists(os.path.join(synthetic_root, 'train2017', image['file_name']))
        ids = _segment_ids(os.path.join(synthetic_root, 'annotations', 'panoptic_train2017', ann['file_name']))
        assert ids.shape == (48, 64) == (image['height'], image['width'])
        for segment in ann['segments_info']:
            assert segment['area'] == int((ids == segment['id']).sum()) > 0
        assert set(np.unique(ids)) - {0} == {s['id'] for s in ann['segments_info']}
        instances = [s for s in ann['segments_info'] if s['category_id'] in things and not s['iscrowd']]
        assert len(instances) <= 4
        crowd += any(s['iscrowd'] for s in ann['segments_info'])
        void += int((ids == 0).any())
    assert crowd > 0 and void > 0


def test_official_panopticapi_reads_it_as_coco_panoptic(synthetic_root):
    from panopticapi import evaluation
    annotations = os.path.join(synthetic_root, 'annotations')
    folder = os.path.join(annotations, 'panoptic_val2017')
    with contextlib.redirect_stdout(io.StringIO()):
        results = evaluation.pq_compute(os.path.join(annotations, 'panoptic_val2017.json'),
                                        os.path.join(annotations, 'panoptic_val2017.json'), folder, folder)
    assert results['All']['pq'] == pytest.approx(1.0)


def test_cli_writes_and_converts_through_the_coco_converter(tmp_path):
    raw, records = str(tmp_path / 'raw'), str(tmp_path / 'tfrecord')
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get('PYTHONPATH', ''))
    subprocess.run([sys.executable, '-m', 'deeplab_axial.data.synthetic', f'--output_dir={raw}',
                    f'--tfrecord_dir={records}', '--num_train=3', '--num_val=2', '--height=33', '--width=45',
                    '--seed=4'], check=True, env=env, capture_output=True)
    with open(os.path.join(raw, 'annotations', 'panoptic_val2017.json')) as f:
        data = json.load(f)
    # Expected labels from the JSON + PNG: sparse ids sorted -> 1..6, running instance ids per thing class.
    contiguous = {c['id']: i + 1 for i, c in enumerate(sorted(data['categories'], key=lambda c: c['id']))}
    things = {c['id'] for c in data['categories'] if c['isthing']}
    expected = {}
    for ann in data['annotations']:
        ids = _segment_ids(os.path.join(raw, 'annotations', 'panoptic_val2017', ann['file_name']))
        pan = np.zeros(ids.shape, np.int32)
        count = {}
        for s in ann['segments_info']:
            instance = 0
            if s['category_id'] in things and not s['iscrowd']:
                count[s['category_id']] = instance = count.get(s['category_id'], 0) + 1
            pan[ids == s['id']] = contiguous[s['category_id']] * 256 + instance
        expected[ann['file_name'][:-4]] = pan
    options = input_pipeline.DataOptions(dataset='synthetic_panoptic', file_pattern=os.path.join(records, 'val-*'),
                                         batch_size=1, crop_size=None, is_training=False)
    got = {s[common.IMAGE_NAME][0].numpy().decode(): s[common.GT_PANOPTIC_RAW][0].numpy()
           for s in input_pipeline.build_dataset(options)}
    assert set(got) == set(expected)
    for name, pan in expected.items():
        np.testing.assert_array_equal(got[name], pan)

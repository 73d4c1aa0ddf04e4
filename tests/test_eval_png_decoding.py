"""Panoptic PNG reading: the pyspng fast path and the Pillow fallback give the same ids and the same errors, and the
CLI's numbers depend neither on the decoder nor on how images are spread over worker processes."""

import multiprocessing

import numpy as np
import pytest
from PIL import Image

from deeplab_axial.data import dataset
from evaluation import coco_panoptic_format
from evaluation import evaluate as cli
from evaluation.coco_panoptic_format import read_panoptic_png
from evaluation.synthetic_panoptic import random_panoptic_pair, write_panoptic_dataset


@pytest.fixture(params=['pyspng', 'pillow'])
def decoder(request, monkeypatch):
    if request.param == 'pyspng':
        pytest.importorskip('pyspng')
    else:
        monkeypatch.setattr(coco_panoptic_format, 'pyspng', None)
    return request.param


def _write_rgb(path, ids):
    ids = np.asarray(ids, np.uint32)
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(rgb, mode='RGB').save(path)


def test_ids_round_trip_over_the_whole_24_bit_range(decoder, tmp_path):
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 2 ** 24, size=(37, 53)).astype(np.uint32)
    ids[0, 0], ids[-1, -1] = 0, 2 ** 24 - 1
    ids[10:20] = 1234567  # long runs exercise the PNG filters and deflate matches
    path = str(tmp_path / 'ids.png')
    _write_rgb(path, ids)
    got = read_panoptic_png(path)
    assert got.dtype == np.uint32 and got.shape == (37, 53)
    np.testing.assert_array_equal(got, ids)


def test_interlaced_png_reads_the_same(decoder, tmp_path):
    ids = np.arange(24 * 40, dtype=np.uint32).reshape(24, 40) * 4099
    path = str(tmp_path / 'interlaced.png')
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(rgb, mode='RGB').save(path, interlace=1)
    np.testing.assert_array_equal(read_panoptic_png(path), ids)


@pytest.mark.parametrize('mode', ['P', 'RGBA', 'L', 'I;16'])
def test_pngs_that_are_not_8_bit_rgb_are_refused(decoder, tmp_path, mode):
    path = str(tmp_path / 'bad.png')
    image = Image.new('I;16', (8, 6), 258) if mode == 'I;16' else Image.new('RGB', (8, 6), (1, 2, 3)).convert(mode)
    image.save(path)
    expected = Image.open(path).mode
    with pytest.raises(ValueError, match=f"Image x: PNG .* has mode '{expected}'; a panoptic PNG must be RGB"):
        read_panoptic_png(path, 'x')


def test_truncated_png_is_a_named_error(decoder, tmp_path):
    path = tmp_path / 'cut.png'
    _write_rgb(str(path), np.random.default_rng(0).integers(0, 2 ** 24, size=(40, 40)))
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match=r'Image x: cannot decode PNG .*cut\.png'):
        read_panoptic_png(str(path), 'x')


@pytest.fixture(scope='module')
def panoptic_set(tmp_path_factory):
    descriptor = dataset.get('synthetic_panoptic')
    rng = np.random.default_rng(5)
    pairs = [random_panoptic_pair(rng, descriptor, 32, 48, 10) for _ in range(6)]
    return write_panoptic_dataset(str(tmp_path_factory.mktemp('set')), descriptor, pairs)


def _evaluate(paths, num_workers):
    return cli.evaluate(paths['gt_json'], paths['gt_folder'], paths['pred_json'], paths['pred_folder'],
                        ['pq', 'ap', 'miou'], num_workers)


def test_results_are_identical_for_any_decoder_and_worker_count(panoptic_set, monkeypatch):
    reference = _evaluate(panoptic_set, 1)
    assert reference['pq']['All']['n'] > 0
    assert _evaluate(panoptic_set, 3) == reference
    with monkeypatch.context() as m:
        m.setattr(coco_panoptic_format, 'pyspng', None)  # inherited by the forked workers
        assert _evaluate(panoptic_set, 2) == reference
    with monkeypatch.context() as m:
        m.setattr(multiprocessing, 'get_all_start_methods', lambda: ['spawn'])  # no fork: in this process
        assert _evaluate(panoptic_set, 2) == reference

"""Panoptic PNG reading: the pyspng fast path and the Pillow fallback, each with or without zlib-ng inflating first,
give the same ids and the same errors, and the CLI's numbers depend neither on the decoder nor on how images are
spread over worker processes."""

import io
import multiprocessing
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from deeplab_axial.data import coco_panoptic_format
from deeplab_axial.data import dataset
from deeplab_axial.data import panoptic_png
from deeplab_axial.data.panoptic_png import read_panoptic_png
from evaluation import evaluate as cli
from evaluation.synthetic_panoptic import random_panoptic_pair, write_panoptic_dataset


@pytest.fixture(params=['pyspng', 'pillow', 'zlib-ng+pyspng', 'zlib-ng+pillow'])
def decoder(request, monkeypatch):
    if 'pyspng' in request.param:
        pytest.importorskip('pyspng')
    else:
        monkeypatch.setattr(panoptic_png, 'pyspng', None)
    if 'zlib-ng' in request.param:
        pytest.importorskip('zlib_ng')
    else:
        monkeypatch.setattr(panoptic_png, 'zlib_ng', None)
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
    with pytest.raises(ValueError, match=f"Image x: PNG .*: a panoptic PNG must be 8-bit RGB .*; this is a PNG of mode "
                                         f"'{expected}'"):
        read_panoptic_png(path, 'x')


def test_truncated_png_is_a_named_error(decoder, tmp_path):
    path = tmp_path / 'cut.png'
    _write_rgb(str(path), np.random.default_rng(0).integers(0, 2 ** 24, size=(40, 40)))
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match=r'Image x: PNG .*cut\.png: not a readable PNG: '):
        read_panoptic_png(str(path), 'x')


def _chunk(kind, payload):
    return struct.pack('>I', len(payload)) + kind + payload + struct.pack('>I', zlib.crc32(kind + payload))


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def _filtered_scanlines(rgb, filters):
    """PNG filtering written from the specification (bytes per pixel 3), one filter type per row."""
    height, width, _ = rgb.shape
    x = rgb.reshape(height, width * 3).astype(np.int64)
    out = []
    for y, kind in enumerate(filters):
        up = x[y - 1] if y else np.zeros(width * 3, np.int64)
        row = []
        for i in range(width * 3):
            a, b, c = (x[y, i - 3], up[i], up[i - 3]) if i >= 3 else (0, up[i], 0)
            predictor = [0, a, b, (a + b) // 2, _paeth(a, b, c)][kind]
            row.append((x[y, i] - predictor) % 256)
        out.append(bytes([kind] + row))
    return b''.join(out)


def _png(rgb, filters, idat_splits=(), extra_chunks=(), level=6):
    """An 8-bit RGB PNG with the given row filters, its zlib stream cut into IDAT chunks at `idat_splits` and
    `extra_chunks` ((kind, payload) pairs) written between IHDR and the first IDAT."""
    height, width, _ = rgb.shape
    stream = zlib.compress(_filtered_scanlines(rgb, filters), level)
    cuts = [0, *idat_splits, len(stream)]
    return (b'\x89PNG\r\n\x1a\n' + _chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0))
            + b''.join(_chunk(kind, payload) for kind, payload in extra_chunks)
            + b''.join(_chunk(b'IDAT', stream[a:b]) for a, b in zip(cuts[:-1], cuts[1:])) + _chunk(b'IEND', b''))


def _panoptic_rgb(rng, height, width):
    """Flat regions (long deflate matches, all filters give different bytes at their edges) and random pixels."""
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[:] = rng.integers(0, 256, 3)
    rgb[height // 3:, width // 4:] = rng.integers(0, 256, 3)
    rgb[::5, ::7] = rng.integers(0, 256, (len(range(0, height, 5)), len(range(0, width, 7)), 3))
    return rgb


def _read_with_and_without_zlib_ng(path, monkeypatch):
    """read_panoptic_png's result (or ValueError message) with zlib-ng, then with the original bytes only."""
    results = []
    for module in (panoptic_png.zlib_ng, None):
        with monkeypatch.context() as m:
            m.setattr(panoptic_png, 'zlib_ng', module)
            try:
                results.append(read_panoptic_png(path, 'x'))
            except ValueError as e:
                results.append(str(e))
    return results


@pytest.mark.parametrize('filters', [[0, 1, 2, 3, 4] * 3, [4] * 15, [2, 3, 1, 0, 4, 4, 3, 3, 2, 1, 1, 0, 2, 4, 3]])
def test_every_filter_type_and_idat_layout_decodes_like_pillow(decoder, tmp_path, filters):
    rgb = _panoptic_rgb(np.random.default_rng(len(set(filters))), 15, 23)
    extras = [(b'tEXt', b'Comment\x00x'), (b'PLTE', bytes(range(9)))]
    for splits in ((), (1, 2, 40), (7,)):
        path = tmp_path / 'f.png'
        path.write_bytes(_png(rgb, filters, splits, extras))
        with Image.open(path) as image:
            assert image.mode == 'RGB'
            np.testing.assert_array_equal(np.asarray(image), rgb)  # the test's encoder against Pillow's decoder
        expected = rgb[..., 0] + 256 * rgb[..., 1].astype(np.uint32) + 65536 * rgb[..., 2].astype(np.uint32)
        np.testing.assert_array_equal(read_panoptic_png(str(path)), expected)


def test_zlib_ng_path_hands_over_stored_image_data():
    pytest.importorskip('zlib_ng')
    rgb = _panoptic_rgb(np.random.default_rng(1), 9, 31)
    filters = [0, 1, 2, 3, 4, 4, 2, 2, 1]
    original = _png(rgb, filters, (5,), [(b'gAMA', struct.pack('>I', 45455))])
    stored = panoptic_png._with_stored_image_data(original)
    assert stored[:33] == original[:33] and stored.endswith(_chunk(b'IEND', b''))
    idat_length, = struct.unpack('>I', stored[33:37])
    assert stored[37:41] == b'IDAT' and len(stored) == 33 + 12 + idat_length + 12
    stream = stored[41:41 + idat_length]
    assert stream[2] & 0b110 == 0  # the first deflate block is stored (BTYPE 00)
    assert zlib.decompress(stream) == _filtered_scanlines(rgb, filters)
    with Image.open(io.BytesIO(stored)) as image:
        np.testing.assert_array_equal(np.asarray(image), rgb)


def _corruptions(png):
    """Damaged variants of a PNG whose only IDAT chunk starts at byte 33: name -> bytes."""
    idat_length, = struct.unpack('>I', png[33:37])
    idat_end = 33 + 12 + idat_length
    stream = zlib.decompress(png[41:idat_end - 4])
    idat = lambda payload: png[:33] + _chunk(b'IDAT', payload) + png[idat_end:]  # noqa: E731
    return {
        'cut in IDAT': png[:33 + idat_length // 2],
        'cut in IDAT CRC': png[:idat_end - 2],
        'no IEND': png[:idat_end],
        'cut in IEND': png[:-3],
        'bad IDAT CRC': png[:idat_end - 1] + bytes([png[idat_end - 1] ^ 1]) + png[idat_end:],
        'bad IHDR CRC': png[:32] + bytes([png[32] ^ 1]) + png[33:],
        'bad adler32': idat(png[41:idat_end - 5] + bytes([png[idat_end - 5] ^ 1])),
        'short zlib stream': idat(zlib.compress(stream[:-4])),
        'long zlib stream': idat(zlib.compress(stream + stream[-4:])),
        'bytes after the zlib stream': idat(zlib.compress(stream) + b'\x00'),
        'invalid filter type': idat(zlib.compress(stream[:-70] + b'\x05' + stream[-69:])),
        'IDAT after another chunk': png[:idat_end] + _chunk(b'tEXt', b'a\x00b') + png[33:],
        'unknown critical chunk': png[:33] + _chunk(b'ABCD', b'') + png[33:],
        'second IHDR': png[:33] + png[8:33] + png[33:],
        'interlaced': png[:8] + _chunk(b'IHDR', png[16:28] + b'\x01') + png[33:],
    }


@pytest.mark.parametrize('use_pyspng', [True, False])
def test_damaged_files_fall_back_to_the_original_bytes(tmp_path, monkeypatch, use_pyspng):
    pytest.importorskip('zlib_ng')
    if use_pyspng:
        pytest.importorskip('pyspng')
    else:
        monkeypatch.setattr(panoptic_png, 'pyspng', None)
    rgb = _panoptic_rgb(np.random.default_rng(2), 12, 23)
    png = _png(rgb, [1, 2, 4] * 4)
    for name, damaged in _corruptions(png).items():
        if name != 'invalid filter type':  # left to the decoder, which reads the filter bytes as they were
            assert panoptic_png._with_stored_image_data(damaged) is None, name
        path = tmp_path / 'damaged.png'
        path.write_bytes(damaged)
        with_ng, without = _read_with_and_without_zlib_ng(str(path), monkeypatch)
        if isinstance(without, str):
            assert with_ng == without, name
        else:
            np.testing.assert_array_equal(with_ng, without, err_msg=name)


def test_benchmark_like_file_reads_the_same_with_and_without_zlib_ng(tmp_path, monkeypatch):
    pytest.importorskip('zlib_ng')
    descriptor = dataset.get('coco_panoptic')
    ids, _ = coco_panoptic_format.panoptic_to_segments(
        random_panoptic_pair(np.random.default_rng(4), descriptor, 64, 96, 12)[0], descriptor)
    path = str(tmp_path / 'written.png')
    _write_rgb(path, ids)  # Pillow's own adaptive filtering picks the filters
    with_ng, without = _read_with_and_without_zlib_ng(path, monkeypatch)
    np.testing.assert_array_equal(with_ng, ids)
    np.testing.assert_array_equal(without, ids)


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
        m.setattr(panoptic_png, 'pyspng', None)  # inherited by the forked workers
        assert _evaluate(panoptic_set, 2) == reference
    with monkeypatch.context() as m:
        m.setattr(multiprocessing, 'get_all_start_methods', lambda: ['spawn'])  # no fork: in this process
        assert _evaluate(panoptic_set, 2) == reference

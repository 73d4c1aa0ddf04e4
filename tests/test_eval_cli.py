"""The evaluation CLI: output layout, atomic output, and an error naming the image for every kind of bad input."""

import contextlib
import io
import json
import os
import re
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
from PIL import Image

from deeplab_axial.data import dataset
from evaluation import evaluate as cli
from deeplab_axial.data.panoptic_png import id_to_rgb
from evaluation.synthetic_panoptic import random_panoptic_pair, write_panoptic_dataset

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def panoptic_set(tmp_path):
    descriptor = dataset.get('synthetic_panoptic')
    rng = np.random.default_rng(11)
    pairs = [random_panoptic_pair(rng, descriptor, 32, 48, 10) for _ in range(3)]
    return write_panoptic_dataset(str(tmp_path / 'set'), descriptor, pairs)


def _argv(paths, out=None, metrics='pq,ap,miou'):
    argv = ['--gt_json', paths['gt_json'], '--gt_folder', paths['gt_folder'], '--pred_json', paths['pred_json'],
            '--pred_folder', paths['pred_folder'], '--metrics', metrics, '--num_workers', '2']
    return argv + (['--output_json', out] if out else [])


def _run(argv):
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(argv)
    return code, stdout.getvalue(), stderr.getvalue()


def _edit_json(path, edit):
    with open(path) as f:
        data = json.load(f)
    edit(data)
    with open(path, 'w') as f:
        json.dump(data, f)


def _png(paths, role, index=0):
    with open(paths[f'{role}_json']) as f:
        name = json.load(f)['annotations'][index]['file_name']
    return os.path.join(paths[f'{role}_folder'], name)


def test_cli_writes_documented_json(panoptic_set, tmp_path):
    out = str(tmp_path / 'out' / 'metrics.json')
    code, stdout, stderr = _run(_argv(panoptic_set, out))
    assert code == 0
    assert 'PQ' in stdout and 'mIoU' in stdout and '3/3 images' in stderr
    with open(out) as f:
        results = json.load(f)
    assert set(results) == {'pq', 'ap', 'miou'}
    assert set(results['pq']) == {'All', 'Things', 'Stuff', 'per_class'}
    assert set(results['pq']['All']) == {'pq', 'sq', 'rq', 'n'}
    some_class = next(iter(results['pq']['per_class'].values()))
    assert set(some_class) == {'pq', 'sq', 'rq', 'tp', 'fp', 'fn'}
    assert {'AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl',
            'cityscapes_AP', 'cityscapes_AP50'} == set(results['ap'])
    assert 0 <= results['miou']['mIoU'] <= 1
    expected = cli.evaluate(panoptic_set['gt_json'], panoptic_set['gt_folder'], panoptic_set['pred_json'],
                            panoptic_set['pred_folder'], ['pq', 'ap', 'miou'])
    assert results['pq']['All'] == expected['pq']['All']
    assert results['miou']['mIoU'] == expected['miou']['mIoU']
    assert os.listdir(os.path.dirname(out)) == ['metrics.json']  # no temporary file left


def test_cli_runs_as_module(panoptic_set, tmp_path):
    out = str(tmp_path / 'pq.json')
    completed = subprocess.run([sys.executable, '-m', 'evaluation.evaluate'] + _argv(panoptic_set, out, 'pq'),
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    with open(out) as f:
        assert set(json.load(f)) == {'pq'}


def _corrupt_missing_png(paths):
    os.remove(_png(paths, 'pred', 1))


def _corrupt_size(paths):
    path = _png(paths, 'pred', 1)
    Image.fromarray(np.asarray(Image.open(path))[:-2]).save(path)


def _corrupt_id_not_in_json(paths):
    path = _png(paths, 'pred', 1)
    rgb = np.asarray(Image.open(path)).copy()
    rgb[0, 0] = id_to_rgb(np.array(12345))
    Image.fromarray(rgb).save(path)


def _corrupt_json_id_not_in_png(paths):
    _edit_json(paths['pred_json'], lambda d: d['annotations'][1]['segments_info'].append(
        {'id': 54321, 'category_id': d['annotations'][1]['segments_info'][0]['category_id']}))


def _corrupt_category(paths):
    _edit_json(paths['pred_json'], lambda d: d['annotations'][1]['segments_info'][0].update(category_id=999))


def _corrupt_duplicate_image(paths):
    _edit_json(paths['pred_json'], lambda d: d['annotations'].append(dict(d['annotations'][1])))


def _corrupt_duplicate_gt_image(paths):
    _edit_json(paths['gt_json'], lambda d: d['annotations'].append(dict(d['annotations'][1])))


def _corrupt_rgba(paths):
    path = _png(paths, 'pred', 1)
    Image.open(path).convert('RGBA').save(path)


def _corrupt_grey(paths):
    path = _png(paths, 'pred', 1)
    Image.open(path).convert('L').save(path)


def _corrupt_no_prediction(paths):
    _edit_json(paths['pred_json'], lambda d: d['annotations'].pop(1))


def _corrupt_gt_id_not_in_json(paths):
    path = _png(paths, 'gt', 1)
    rgb = np.asarray(Image.open(path)).copy()
    rgb[1, 1] = id_to_rgb(np.array(777))
    Image.fromarray(rgb).save(path)


def _corrupt_segment_not_object(paths):
    _edit_json(paths['pred_json'], lambda d: d['annotations'][1]['segments_info'].insert(0, 'sky'))


def _corrupt_segment_id_type(paths):
    _edit_json(paths['pred_json'], lambda d: d['annotations'][1]['segments_info'][0].update(id='7'))


def _corrupt_gt_area_type(paths):
    _edit_json(paths['gt_json'], lambda d: d['annotations'][1]['segments_info'][0].update(area=[3]))


def _corrupt_segments_info_type(paths):
    _edit_json(paths['gt_json'], lambda d: d['annotations'][1].update(segments_info={'id': 1}))


def _corrupt_16_bit_gt(paths):
    """The same ids in a 16-bit-per-channel PNG: Pillow would read each channel's high byte, giving other ids."""
    path = _png(paths, 'gt', 1)
    rgb = np.asarray(Image.open(path)).astype('>u2') * 257
    height, width, _ = rgb.shape
    raw = b''.join(b'\x00' + row.tobytes() for row in rgb)
    chunk = lambda kind, data: (struct.pack('>I', len(data)) + kind + data  # noqa: E731
                                + struct.pack('>I', zlib.crc32(kind + data)))
    with open(path, 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 16, 2, 0, 0, 0))
                + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))
    assert Image.open(path).mode == 'RGB'  # what made it pass unnoticed


@pytest.mark.parametrize('corrupt, message', [
    (_corrupt_missing_png, r'Image 1 .*prediction: PNG file .* does not exist'),
    (_corrupt_size, r'Image 1 .*prediction PNG is 48x30 .* ground truth is 48x32'),
    (_corrupt_id_not_in_json, r'Image 1 .*segment ids \[12345\] are in the prediction PNG but not in its JSON'),
    (_corrupt_json_id_not_in_png, r'Image 1 .*predicted segment ids \[54321\] are in the JSON but not in the PNG'),
    (_corrupt_category, r'Image 1 .*unknown category_id 999'),
    (_corrupt_duplicate_image, r'prediction JSON .*image id 1 appears twice'),
    (_corrupt_duplicate_gt_image, r'ground truth JSON .*image id 1 appears twice'),
    (_corrupt_rgba, r"Image 1 .*must be 8-bit RGB .*; this is a PNG of mode 'RGBA'"),
    (_corrupt_grey, r"Image 1 .*must be 8-bit RGB .*; this is a PNG of mode 'L'"),
    (_corrupt_no_prediction, r'Image 1: no prediction'),
    (_corrupt_gt_id_not_in_json, r'Image 1 .*segment ids \[777\] are in the ground truth PNG but not in its JSON'),
    (_corrupt_segment_not_object, r"Image 1 \(prediction\): a segments_info entry is not an object: sky"),
    (_corrupt_segment_id_type, r"Image 1 \(prediction\): segment '7' has id '7'; expected an integer"),
    (_corrupt_gt_area_type, r'Image 1 \(ground truth\): segment \d+ has area \[3\]; expected a number'),
    (_corrupt_segments_info_type, r"Image 1 \(ground truth\): segments_info is not a list: \{'id': 1\}"),
    (_corrupt_16_bit_gt,
     r'Image 1 .*ground truth: PNG .*: a panoptic PNG must be 8-bit RGB .*; this one has 16 bits per channel'),
])
def test_bad_input_stops_with_named_error_and_no_output(panoptic_set, tmp_path, corrupt, message):
    corrupt(panoptic_set)
    out = str(tmp_path / 'metrics.json')
    code, _, stderr = _run(_argv(panoptic_set, out))
    assert code == 1
    assert any(re.search(message, line) for line in stderr.splitlines()), stderr
    assert not os.path.exists(out)


def test_last_crowd_segment_of_a_category_is_the_crowd_region(tmp_path):
    """Two crowd segments of one category: the official tools only absorb predictions on the last one listed."""
    from panopticapi.evaluation import pq_compute
    gt_ids = np.full((5, 8), 12, np.uint32)  # last row: sky (panopticapi needs a stuff class to average)
    gt_ids[:4, :4], gt_ids[:4, 4:] = 10, 11
    pred_ids = np.full((5, 8), 7, np.uint32)
    pred_ids[:4] = 0
    pred_ids[:4, :3] = 5    # on the first crowd segment
    pred_ids[:4, 5:] = 6    # on the second (last) one
    root = tmp_path / 'crowd'
    for role, ids in (('gt', gt_ids), ('pred', pred_ids)):
        (root / role).mkdir(parents=True)
        Image.fromarray(id_to_rgb(ids)).save(root / role / 'a.png')
    categories = [{'id': 1, 'name': 'person', 'isthing': 1}, {'id': 2, 'name': 'sky', 'isthing': 0}]
    gt = {'annotations': [{'image_id': 'a', 'file_name': 'a.png', 'segments_info': [
        {'id': 10, 'category_id': 1, 'iscrowd': 1, 'area': 16}, {'id': 11, 'category_id': 1, 'iscrowd': 1,
                                                                   'area': 16},
        {'id': 12, 'category_id': 2, 'iscrowd': 0, 'area': 8}]}], 'categories': categories}
    pred = {'annotations': [{'image_id': 'a', 'file_name': 'a.png', 'segments_info': [
        {'id': 5, 'category_id': 1}, {'id': 6, 'category_id': 1}, {'id': 7, 'category_id': 2}]}]}
    for name, data in (('gt.json', gt), ('pred.json', pred)):
        (root / name).write_text(json.dumps(data))
    paths = {'gt_json': str(root / 'gt.json'), 'gt_folder': str(root / 'gt'), 'pred_json': str(root / 'pred.json'),
             'pred_folder': str(root / 'pred')}
    ours = cli.evaluate(paths['gt_json'], paths['gt_folder'], paths['pred_json'], paths['pred_folder'], ['pq'])
    with contextlib.redirect_stdout(io.StringIO()):
        official = pq_compute(paths['gt_json'], paths['pred_json'], paths['gt_folder'], paths['pred_folder'])
    assert ours['pq']['per_class']['1']['fp'] == 1  # segment 5 counts, segment 6 is absorbed
    assert ours['pq']['All'] == pytest.approx(official['All'], abs=1e-12)


def test_a_worker_killed_mid_run_ends_it_naming_the_worker_and_its_images(tmp_path):
    """multiprocessing.Pool waited forever for the task of a worker killed for memory; now the run stops at once."""
    descriptor = dataset.get('synthetic_panoptic')
    rng = np.random.default_rng(12)
    paths = write_panoptic_dataset(str(tmp_path / 'set'), descriptor,
                                   [random_panoptic_pair(rng, descriptor, 16, 24, 4) for _ in range(10)])
    out = tmp_path / 'metrics.json'
    script = textwrap.dedent('''
        import os, signal, sys
        from evaluation import evaluate as cli
        original = cli._overlap
        def overlap(pair, *args):
            if pair[0] == 5:  # the worker holding image 5 dies as one killed for memory does
                os.kill(os.getpid(), signal.SIGKILL)
            return original(pair, *args)
        cli._overlap = overlap
        sys.exit(cli.main(sys.argv[1:]))
    ''')
    proc = subprocess.run([sys.executable, '-c', script] + _argv(paths, str(out)), cwd=REPO_ROOT,
                          env=dict(os.environ, PYTHONPATH=REPO_ROOT), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    # Images go out 4 at a time (evaluate._CHUNK): worker 1 took images 4..7 while worker 0 had 0..3.
    errors = [line for line in proc.stderr.splitlines() if 'error:' in line]
    assert len(errors) == 1 and 'Traceback' not in proc.stderr, proc.stderr
    assert re.search(r'error: Evaluation worker 1 \(pid \d+\) was killed by signal SIGKILL .*fewer --num_workers.*; '
                     r'the images it held: 4 \(image_00004.png\), 5 \(image_00005.png\), 6 \(image_00006.png\), '
                     r'7 \(image_00007.png\)$', errors[0]), errors[0]
    assert not out.exists()


def test_the_results_file_takes_the_umask_mode_and_a_write_fault_is_one_line(panoptic_set, tmp_path):
    out = tmp_path / 'out' / 'metrics.json'
    previous = os.umask(0o027)
    try:
        code, _, _ = _run(_argv(panoptic_set, str(out), 'pq'))
    finally:
        os.umask(previous)
    assert code == 0 and os.stat(out).st_mode & 0o777 == 0o640  # mkstemp made it 0o600
    blocked = tmp_path / 'file'
    blocked.write_text('')
    code, _, stderr = _run(_argv(panoptic_set, str(blocked / 'metrics.json'), 'pq'))
    assert code == 1 and stderr.splitlines()[-1] == f'error: {blocked}: File exists'  # not a folder


def test_a_full_disk_is_one_error_line_naming_the_file(panoptic_set, full_filesystem):
    out = full_filesystem / 'metrics.json'
    code, _, stderr = _run(_argv(panoptic_set, str(out), 'pq'))
    assert code == 1 and 'Traceback' not in stderr
    assert stderr.splitlines()[-1] == f'error: {out}: No space left on device'
    assert os.listdir(full_filesystem) == ['filler']

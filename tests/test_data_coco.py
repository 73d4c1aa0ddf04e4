"""COCO panoptic converter: tiny dataset in the real 2017 layout -> TFRecords -> every pixel and byte back."""

import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import zlib

from absl import flags
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deeplab_axial import cli
from deeplab_axial import common
from deeplab_axial.data import build_coco_data
from deeplab_axial.data import dataset
from deeplab_axial.data import input_pipeline
from deeplab_axial.data import panoptic_png
from deeplab_axial.data import record_check
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


def test_treat_crowd_as_ignore_makes_crowd_pixels_void_and_is_the_command_lines_default(coco_root, tmp_path):
    """deeplab2's --treat_crowd_as_ignore (default true): the car crowd of image 1 (rows 6.., columns 8..11) becomes
    void (0); every other pixel is as without it."""
    root, expected = coco_root
    build_coco_data.convert_split(root, str(tmp_path / 'void'), 'train', num_shards=1, treat_crowd_as_ignore=True)
    exp = expected['000000000001']['panoptic'].copy()
    assert (exp[6:, 8:12] // 256 == data_fixtures.CONTIGUOUS[data_fixtures.COCO_CAR]).all()
    exp[6:, 8:12] = 0
    records = {f[common.KEY_IMAGE_FILENAME].bytes_list.value[0].decode(): raw
               for _, raw, f in _read_records(str(tmp_path / 'void' / '*.tfrecord'))}
    decoded = input_pipeline.decode_panoptic_example(records['000000000001'], 256)
    np.testing.assert_array_equal(decoded['panoptic'].numpy(), exp)
    values = flags.FlagValues()  # the command line's default, read without running it
    build_coco_data._define_flags(values)
    assert values['treat_crowd_as_ignore'].default is True


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


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code_or_module, *args, env=None):
    """Runs `python -c code` (or `-m module`) from the repository root; returns the CompletedProcess."""
    command = ['-m', code_or_module] if not code_or_module.count('\n') else ['-c', code_or_module]
    environment = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL='2', **(env or {}))
    return subprocess.run([sys.executable, *command, *args], cwd=REPO_ROOT, env=environment, capture_output=True,
                          text=True, timeout=300)


def _cut(path, keep):
    with open(path, 'rb') as f:
        data = f.read()
    with open(path, 'wb') as f:
        f.write(data[:keep if keep > 0 else len(data) + keep])


def test_truncated_jpeg_is_caught_naming_the_file(coco_root, tmp_path):
    """The header alone read fine, so a cut JPEG converted and training died later naming nothing."""
    root, _ = coco_root
    path = os.path.join(root, 'train2017', '000000000001.jpg')
    _cut(path, -100)
    with Image.open(path) as image:
        assert image.size == (16, 12)  # what let it through before
    out = tmp_path / 'out'
    with pytest.raises(ValueError, match=r'Cannot decode image .*000000000001\.jpg: jpeg::Uncompress failed'):
        build_coco_data.convert_split(root, str(out), 'train', num_shards=1)
    assert os.listdir(out) == []
    proc = _python('deeplab_axial.data.build_coco_data', f'--coco_root={root}', f'--output_dir={out}',
                   '--splits=train')
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr
    assert re.fullmatch(r'error: Cannot decode image \S*000000000001\.jpg: jpeg::Uncompress failed\. .*',
                        proc.stderr.splitlines()[-1]), proc.stderr


@pytest.mark.parametrize('damage, message', [
    (lambda path: _cut(path, 60), r'not a readable PNG: .*'),
    (lambda path: _cut(path, 8), r'not a readable PNG: cannot identify image file'),
    (lambda path: Image.new('I;16', (16, 12)).save(path),
     r"a panoptic PNG must be 8-bit RGB .*; this is a PNG of mode 'I;16'"),
    (lambda path: Image.new('RGB', (16, 12)).convert('P').save(path),
     r"a panoptic PNG must be 8-bit RGB .*; this is a PNG of mode 'P'"),
])
def test_a_damaged_annotation_png_is_named(coco_root, tmp_path, damage, message):
    root, _ = coco_root
    path = os.path.join(root, 'annotations', 'panoptic_train2017', '000000000002.png')
    damage(path)
    with pytest.raises(ValueError, match=r'Panoptic PNG \S*panoptic_train2017/000000000002\.png: ' + message):
        build_coco_data.convert_split(root, str(tmp_path / 'out'), 'train', num_shards=1)


def test_a_16_bit_annotation_png_is_refused():
    """Pillow opens a 16-bit RGB PNG as mode RGB with only the high bytes: ids would silently change."""
    rgb = np.full((2, 3, 3), 258, '>u2')
    chunk = lambda kind, data: struct.pack('>I', len(data)) + kind + data + struct.pack(  # noqa: E731
        '>I', zlib.crc32(kind + data))
    png = (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 3, 2, 16, 2, 0, 0, 0))
           + chunk(b'IDAT', zlib.compress(b''.join(b'\x00' + row.tobytes() for row in rgb))) + chunk(b'IEND', b''))
    assert Image.open(io.BytesIO(png)).mode == 'RGB'
    with pytest.raises(ValueError, match='must be 8-bit RGB .* has 16 bits per channel'):
        panoptic_png.decode_panoptic_png(png)


def _with_label(example, panoptic):
    changed = tf.train.Example.FromString(example.SerializeToString())
    changed.features.feature[common.KEY_ENCODED_LABEL].bytes_list.value[0] = panoptic_png.encode_panoptic_png(panoptic)
    return changed


def test_validate_names_every_bad_record_of_a_dataset_converted_elsewhere(coco_root, tmp_path):
    root, expected = coco_root
    out = tmp_path / 'tfrecord'
    build_coco_data.convert_split(root, str(out), 'train', num_shards=1)
    build_coco_data.convert_split(root, str(out), 'val', num_shards=1)
    coco = dataset.get('coco_panoptic')
    assert record_check.check_records(str(out / '*.tfrecord'), coco) == []  # the converter's output is sound
    # A dataset as another tool might have written it: each record below has one fault.
    (_, raw, _), = [r for r in _read_records(str(out / 'val-*')) if r[2]]
    good = tf.train.Example.FromString(raw.numpy())
    cut_jpeg = tf.train.Example.FromString(raw.numpy())
    image = cut_jpeg.features.feature[common.KEY_ENCODED_IMAGE].bytes_list.value
    image[0] = image[0][:-100]
    wrong_size = tf.train.Example.FromString(raw.numpy())
    wrong_size.features.feature[common.KEY_IMAGE_HEIGHT].int64_list.value[0] = 13
    pan = expected['000000000003']['panoptic']
    unknown_class = _with_label(good, np.where(pan > 0, 134 * 256 + 1, 0))  # classes are 0..133
    stuff_instance = _with_label(good, np.where(pan > 0, 133 * 256 + 4, 0))  # 133 (wall) is stuff
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    with tf.io.TFRecordWriter(str(elsewhere / 'train-00000-of-00002.tfrecord')) as writer:
        for example in (good, cut_jpeg, wrong_size, unknown_class, stuff_instance, good):
            writer.write(example.SerializeToString())
    shutil.copy(out / 'train-00000-of-00001.tfrecord', elsewhere / 'train-00001-of-00002.tfrecord')
    _cut(str(elsewhere / 'train-00001-of-00002.tfrecord'), -30)  # a copy cut short in its second record
    first, second = (str(elsewhere / f'train-0000{i}-of-00002.tfrecord') for i in range(2))
    problems = record_check.check_records(str(elsewhere / 'train-*'), coco)
    expected_problems = [
        rf'{first} record 1: jpeg::Uncompress failed\. Invalid JPEG data or crop window\.',
        rf'{first} record 2 \(000000000003\): the image decodes to 12x16 \(height x width\); the record states 13x16',
        rf'{first} record 3 \(000000000003\): label ids \[34305\] have classes outside 0\.\.133 and are not the '
        r'ignore label 0 .*',
        rf'{first} record 4 \(000000000003\): label ids \[34052\] give an instance to a stuff or void class .*',
        rf'{second}: cut short after record 0 .*truncated record at .*',
    ]
    assert len(problems) == len(expected_problems), problems
    for problem, pattern in zip(problems, expected_problems):
        assert re.fullmatch(pattern, problem), (problem, pattern)
    # The command line: the same lines, a progress bar, exit status 1.
    proc = _python('deeplab_axial.data.build_coco_data', '--validate', f'--output_dir={elsewhere}', '--splits=train')
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[-6:] == problems + ['train: 5 problems'], proc.stderr
    assert '2/2 files 7 records 5 problems' in proc.stderr


def test_a_killed_conversion_leaves_nothing_a_data_pattern_matches_and_a_rerun_cleans_up(coco_root, tmp_path):
    root, _ = coco_root
    out = tmp_path / 'out'
    # Shard 0 is written, then the process dies (kill -9) while it writes shard 1.
    script = textwrap.dedent(f'''
        import os, signal
        from deeplab_axial.data import build_coco_data, data_utils
        read = data_utils.read_image_for_record
        def read_or_die(path):
            if path.endswith('000000000002.png'):
                os.kill(os.getpid(), signal.SIGKILL)
            return read(path)
        data_utils.read_image_for_record = read_or_die
        build_coco_data.convert_split({root!r}, {str(out)!r}, 'train', num_shards=2, num_workers=1)
    ''')
    proc = _python(script)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    matched = tf.io.gfile.glob(str(out / 'train*'))
    assert matched == [str(out / 'train-00000-of-00002.tfrecord')]
    assert len(_read_records(matched[0])) == 1  # complete, readable
    stale = [name for name in os.listdir(out) if name.startswith('.')]
    assert len(stale) == 1 and re.fullmatch(
        rf'\.train-00001-of-00002\.tfrecord\.tmp-{re.escape(socket.gethostname())}-\d+', stale[0]), stale
    # A temporary file of a process that still runs (this one) is not touched; the dead run's is removed.
    running = out / f'.train-00001-of-00002.tfrecord.tmp-{socket.gethostname()}-{os.getppid()}'
    running.write_bytes(b'')
    build_coco_data.convert_split(root, str(out), 'train', num_shards=2)
    assert sorted(os.listdir(out)) == [running.name, 'train-00000-of-00002.tfrecord', 'train-00001-of-00002.tfrecord']


def test_conversion_is_byte_reproducible_across_processes(coco_root, tmp_path):
    """The feature map's serialization order followed the process's hash seed; the same input gave other bytes."""
    root, _ = coco_root
    digests = []
    for seed in ('1', '2'):
        out = tmp_path / f'out{seed}'
        script = (f'from deeplab_axial.data import build_coco_data\n'
                  f'build_coco_data.convert_split({root!r}, {str(out)!r}, "train", num_shards=1)\n')
        proc = _python(script, env={'PYTHONHASHSEED': seed})
        assert proc.returncode == 0, proc.stderr
        with open(out / 'train-00000-of-00001.tfrecord', 'rb') as f:
            digests.append(hashlib.sha256(f.read()).hexdigest())
    assert digests[0] == digests[1]


def test_a_full_disk_is_one_error_line_naming_the_shard(coco_root, full_filesystem, capsys):
    root, _ = coco_root
    out = full_filesystem / 'tfrecord'
    assert cli.run_reporting_errors(
        lambda: build_coco_data.convert_split(root, str(out), 'train', num_shards=1)) == 2
    err = capsys.readouterr().err.splitlines()
    assert re.fullmatch(rf'error: {out}/\.train-00000-of-00001\.tfrecord\.tmp-\S+: No space left on device',
                        err[-1]), err
    assert os.listdir(out) == []


@pytest.mark.parametrize('edit', [
    lambda d: d['annotations'][1]['segments_info'].insert(0, 'wall'),
    lambda d: d['annotations'][1]['segments_info'][0].update(id='3000001'),
    lambda d: d['annotations'][1].update(segments_info={'id': 1}),
    lambda d: d['annotations'][1].pop('file_name'),
])
def test_annotation_entries_of_the_wrong_type_name_the_json(coco_root, tmp_path, edit):
    root, _ = coco_root
    _break_json(root, 'train', edit)
    with pytest.raises(ValueError, match=r'panoptic_train2017\.json: an annotation is not an object with "image_id", '
                                         r'a string "file_name" and a "segments_info" list of objects with integer'):
        build_coco_data.convert_split(root, str(tmp_path / 'out'), 'train', num_shards=1)
    _break_json(root, 'val', lambda d: d['images'][0].pop('id'))
    with pytest.raises(ValueError, match=r'panoptic_val2017\.json: an "images" entry is not an object with "id"'):
        build_coco_data.convert_split(root, str(tmp_path / 'out'), 'val', num_shards=1)

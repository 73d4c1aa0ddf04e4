"""Tests of deeplab_axial.predict against toy SavedModels that implement the export contract.

The toy panoptic model is a fixed colour rule (written twice: in TensorFlow for the SavedModel, in numpy here as the
reference), so every written file can be checked pixel by pixel and scored with panopticapi against ground truth made
by the numpy rule.
"""

import csv
import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from panopticapi import evaluation as panopticapi_evaluation

from deeplab_axial import common, predict
from deeplab_axial.data import dataset
from deeplab_axial.inference import saved_model_runner
from evaluation import evaluate as evaluation_evaluate

# synthetic_panoptic: 0 void, things 1 disc (id 1) / 2 square (id 3), stuff 4 sky (id 92) / 5 grass (id 118).
PANOPTIC_DESCRIPTOR = dataset.get('synthetic_panoptic')
CLASSIFICATION_DESCRIPTOR = dataset.DatasetDescriptor(
    name='toy_classes', splits_to_sizes={}, num_classes=6, ignore_label=-1, panoptic_label_divisor=0,
    class_has_instances_list=(), colormap=(), class_names=('red', 'green', 'blue', 'cyan', 'magenta', 'yellow'),
    task='classification')
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reference_panoptic(image: np.ndarray) -> np.ndarray:
    """The toy rule in numpy: red/blue thresholds pick the class, green // 64 the instance (0 = crowd)."""
    r, g, b = (image[..., i].astype(np.int32) for i in range(3))
    semantic = np.full(r.shape, 5)
    semantic[(r < 128) & (b < 128) & (g >= 200)] = 0
    semantic[(r < 128) & (b >= 128)] = 4
    semantic[(r >= 128) & (b >= 128)] = 2
    semantic[(r >= 128) & (b < 128)] = 1
    instance = np.where((semantic == 1) | (semantic == 2), g // 64, 0)
    return (semantic * 256 + instance).astype(np.int32)


def reference_top5(image: np.ndarray):
    mean = image.reshape(-1, 3).astype(np.float64).mean(0)
    logits = np.concatenate([mean, 255.0 - mean]) / 50.0
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind='stable')[:5]
    return order, probs[order]


class _ToyPanopticModel(tf.Module):

    def _predict(self, images, from_batch):
        x = tf.cast(images, tf.int32)
        r, g, b = x[..., 0], x[..., 1], x[..., 2]
        semantic = tf.fill(tf.shape(r), 5)
        semantic = tf.where((r < 128) & (b < 128) & (g >= 200), 0, semantic)
        semantic = tf.where((r < 128) & (b >= 128), 4, semantic)
        semantic = tf.where((r >= 128) & (b >= 128), 2, semantic)
        semantic = tf.where((r >= 128) & (b < 128), 1, semantic)
        instance = tf.where((semantic == 1) | (semantic == 2), g // 64, 0)
        batch = tf.shape(images)[0]
        scores = tf.where(instance > 0, 0.25 * tf.cast(instance, tf.float32), 0.0)
        return {common.PRED_PANOPTIC_KEY: semantic * 256 + instance, common.PRED_SEMANTIC_KEY: semantic,
                common.PRED_INSTANCE_KEY: instance, common.PRED_INSTANCE_SCORES_KEY: scores,
                'served_by_batch': tf.fill([batch], from_batch)}

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    def serving_default(self, image):
        return self._predict(image[None], 0)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    def serve_batch(self, images):
        return self._predict(images, 1)


class _ToyClassificationModel(tf.Module):

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    def serving_default(self, image):
        mean = tf.reduce_mean(tf.cast(image[None], tf.float32), axis=[1, 2])
        logits = tf.concat([mean, 255.0 - mean], axis=-1) / 50.0
        top5 = tf.math.top_k(tf.nn.softmax(logits), k=5)
        return {common.PRED_LOGITS_KEY: logits, common.PRED_TOP5_CLASSES_KEY: top5.indices,
                common.PRED_TOP5_PROBS_KEY: top5.values}


def _export(module, directory, signatures, task, descriptor):
    tf.saved_model.save(module, directory, signatures=signatures)
    os.makedirs(os.path.join(directory, 'assets'), exist_ok=True)
    with open(os.path.join(directory, 'assets', saved_model_runner.ASSET_FILE), 'w') as f:
        json.dump({'task': task, 'model': 'toy', 'dataset': dataclasses.asdict(descriptor)}, f)
    return directory


@pytest.fixture(scope='module')
def panoptic_export(tmp_path_factory):
    module = _ToyPanopticModel()
    return _export(module, str(tmp_path_factory.mktemp('toy_panoptic')),
                   {'serving_default': module.serving_default, 'serve_batch': module.serve_batch},
                   common.TASK_PANOPTIC, PANOPTIC_DESCRIPTOR)


@pytest.fixture(scope='module')
def classification_export(tmp_path_factory):
    module = _ToyClassificationModel()
    return _export(module, str(tmp_path_factory.mktemp('toy_classification')),
                   {'serving_default': module.serving_default}, common.TASK_CLASSIFICATION,
                   CLASSIFICATION_DESCRIPTOR)


def _scene(rng, height, width):
    """Blocks of flat colour covering every branch of the toy rule, plus mild noise."""
    image = np.zeros((height, width, 3), np.uint8)
    colours = [(200, 30, 20), (200, 100, 20), (200, 180, 200), (60, 70, 220), (40, 90, 40), (30, 230, 30),
               (220, 150, 160), (210, 240, 10)]
    block_h, block_w = height // 2, width // 4
    for k, colour in enumerate(colours):
        row, col = divmod(k, 4)
        image[row * block_h:(row + 1) * block_h, col * block_w:(col + 1) * block_w] = colour
    noise = rng.integers(-3, 4, size=image.shape)
    return np.clip(image.astype(np.int32) + noise, 0, 255).astype(np.uint8)


@pytest.fixture
def image_dir(tmp_path, rng):
    """Four readable images in two sizes (PNG and JPEG) in a folder."""
    folder = tmp_path / 'images'
    folder.mkdir()
    for name, (h, w) in {'a.png': (24, 32), 'b.png': (24, 32), 'c.jpg': (24, 32), 'd.png': (20, 40)}.items():
        Image.fromarray(_scene(rng, h, w)).save(folder / name)
    return folder


def _read_back(output_dir):
    """The run's JSON, and per image id the decoded segment-id map."""
    with open(os.path.join(output_dir, predict.PANOPTIC_JSON)) as f:
        result = json.load(f)
    ids = {}
    for ann in result['annotations']:
        rgb = np.asarray(Image.open(os.path.join(output_dir, predict.PANOPTIC_DIR, ann['file_name'])), np.int64)
        ids[ann['image_id']] = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    return result, ids


def test_runner_uses_serve_batch_for_same_size_images(panoptic_export, rng):
    runner = saved_model_runner.SavedModelRunner(panoptic_export)
    assert runner.task == common.TASK_PANOPTIC and runner.descriptor == PANOPTIC_DESCRIPTOR
    images = [_scene(rng, 16, 16), _scene(rng, 16, 16)]
    batched = runner(images)
    assert batched['served_by_batch'].tolist() == [1, 1]
    np.testing.assert_array_equal(batched[common.PRED_PANOPTIC_KEY], np.stack([reference_panoptic(i) for i in images]))
    single = runner(images[:1])
    assert single['served_by_batch'].tolist() == [0]
    with pytest.raises(ValueError, match='share a size'):
        runner([images[0], _scene(rng, 8, 16)])


def test_panoptic_files_match_the_rule_and_categories(panoptic_export, image_dir, tmp_path):
    out = tmp_path / 'out'
    assert predict.main(['--saved_model', panoptic_export, '--input', str(image_dir), '--output_dir', str(out),
                         '--batch_size', '2']) == 0
    result, ids = _read_back(out)
    assert [im['id'] for im in result['images']] == ['a', 'b', 'c', 'd']
    assert {c['id']: (c['name'], c['isthing']) for c in result['categories']} == {
        1: ('disc', 1), 3: ('square', 1), 7: ('triangle', 1), 92: ('sky', 0), 118: ('grass', 0), 160: ('wall', 0)}
    official_id = {1: 1, 2: 3, 4: 92, 5: 118}
    for ann, info in zip(result['annotations'], result['images']):
        image = np.asarray(Image.open(image_dir / info['file_name']).convert('RGB'))
        expected = reference_panoptic(image)
        segment_ids = ids[ann['image_id']]
        assert segment_ids.shape == (info['height'], info['width']) == image.shape[:2]
        np.testing.assert_array_equal(segment_ids == 0, expected == 0)  # void
        segments = {s['id']: s for s in ann['segments_info']}
        assert set(np.unique(segment_ids[segment_ids > 0]).tolist()) == set(segments)
        for segment_id, segment in segments.items():
            labels = np.unique(expected[segment_ids == segment_id])
            assert labels.size == 1  # one segment per reference label ...
            semantic, instance = divmod(int(labels[0]), 256)
            assert segment['category_id'] == official_id[semantic]
            assert segment['iscrowd'] == int(semantic in (1, 2) and instance == 0)
            assert segment['area'] == int((segment_ids == segment_id).sum())
            if semantic in (1, 2):  # thing segments carry the model's instance score
                assert segment['score'] == pytest.approx(0.25 * instance)
        assert len(segments) == len(np.unique(expected[expected > 0]))  # ... and one reference label per segment
        overlay = Image.open(out / predict.OVERLAY_DIR / (ann['image_id'] + '.png'))
        assert overlay.size == (info['width'], info['height']) and overlay.mode == 'RGB'
    assert not [n for _, _, names in os.walk(out) for n in names if n.endswith('.tmp')]


def _write_ground_truth(image_dir, names, gt_dir, categories):
    """COCO panoptic ground truth from the numpy rule, written here (raw panoptic labels as segment ids)."""
    gt_dir.mkdir()
    official_id = {1: 1, 2: 3, 4: 92, 5: 118}
    annotations = []
    for name in names:
        labels = reference_panoptic(np.asarray(Image.open(image_dir / f'{name}.png').convert('RGB')))
        rgb = np.stack([labels % 256, labels // 256 % 256, labels // 65536], -1).astype(np.uint8)
        Image.fromarray(rgb).save(gt_dir / f'{name}.png')
        segments = [{'id': v, 'category_id': official_id[v // 256], 'iscrowd': int(v // 256 in (1, 2) and v % 256 == 0),
                     'area': int((labels == v).sum())} for v in np.unique(labels[labels > 0]).tolist()]
        annotations.append({'image_id': name, 'file_name': f'{name}.png', 'segments_info': segments})
    gt_json = gt_dir.parent / 'gt.json'
    gt_json.write_text(json.dumps({'annotations': annotations, 'categories': categories}))
    return str(gt_json), annotations


def test_prediction_scores_perfectly_against_ground_truth_from_the_same_rule(panoptic_export, image_dir, tmp_path):
    out = tmp_path / 'out'
    assert predict.main(['--saved_model', panoptic_export, '--input', str(image_dir / '*.png'),
                         '--output_dir', str(out)]) == 0
    prediction, _ = _read_back(out)
    gt_dir = tmp_path / 'gt'
    gt_json, gt_annotations = _write_ground_truth(image_dir, ('a', 'b', 'd'), gt_dir, prediction['categories'])
    # The project's evaluator reads predict's files directly ...
    results = evaluation_evaluate.evaluate(gt_json, str(gt_dir), str(out / predict.PANOPTIC_JSON),
                                           str(out / predict.PANOPTIC_DIR), metrics=('pq', 'miou'), num_workers=1)
    assert results['pq']['All']['pq'] == pytest.approx(1.0) and results['pq']['All']['n'] == 4
    assert results['miou']['mIoU'] == pytest.approx(1.0)
    # ... and so does the official panopticapi.
    categories = {c['id']: c for c in prediction['categories']}
    predictions = {a['image_id']: a for a in prediction['annotations']}
    pairs = [(gt, predictions[gt['image_id']]) for gt in gt_annotations]
    stat = panopticapi_evaluation.pq_compute_single_core(0, pairs, str(gt_dir), str(out / predict.PANOPTIC_DIR),
                                                        categories)
    official, _ = stat.pq_average(categories, isthing=None)
    assert official['pq'] == pytest.approx(1.0) and official['n'] == 4
    assert all(stat[c].fp == 0 and stat[c].fn == 0 for c in (1, 3, 92, 118))


def test_image_ids_follow_coco_names_or_the_ground_truth_json(panoptic_export, tmp_path, rng, capsys):
    folder = tmp_path / 'in'
    folder.mkdir()
    for name in ('000000000042.png', 'frankfurt_000000_000294_leftImg8bit.png', 'other.png'):
        Image.fromarray(_scene(rng, 8, 8)).save(folder / name)
    gt_json = tmp_path / 'gt.json'
    gt_json.write_text(json.dumps({'images': [
        {'id': 'frankfurt_000000_000294', 'file_name': 'frankfurt_000000_000294_leftImg8bit.png'}]}))
    out = tmp_path / 'out'
    assert predict.main(['--saved_model', panoptic_export, '--input', str(folder), '--output_dir', str(out),
                         '--gt_json', str(gt_json)]) == 0
    result, _ = _read_back(out)
    assert [a['image_id'] for a in result['annotations']] == [42, 'frankfurt_000000_000294', 'other']
    assert [im['id'] for im in result['images']] == [42, 'frankfurt_000000_000294', 'other']
    gt_json.write_text('{"annotations": []}')
    assert predict.main(['--saved_model', panoptic_export, '--input', str(folder), '--output_dir', str(out),
                         '--gt_json', str(gt_json), '--overwrite']) == 2
    assert '--gt_json' in capsys.readouterr().err


def test_corrupt_and_non_image_files_are_named_and_the_rest_written(panoptic_export, image_dir, tmp_path, capsys):
    (image_dir / 'garbage.png').write_bytes(b'not a png at all')
    (image_dir / 'notes.txt').write_text('hello')
    whole = (image_dir / 'a.png').read_bytes()
    (image_dir / 'truncated.png').write_bytes(whole[:len(whole) // 2])
    out = tmp_path / 'out'
    assert predict.main(['--saved_model', panoptic_export, '--input', str(image_dir), '--output_dir', str(out)]) == 1
    err = capsys.readouterr().err
    for bad in ('garbage.png', 'notes.txt', 'truncated.png'):
        assert os.path.join(str(image_dir), bad) in err
    result, _ = _read_back(out)
    assert [im['id'] for im in result['images']] == ['a', 'b', 'c', 'd']
    assert sorted(os.listdir(out / predict.OVERLAY_DIR)) == ['a.png', 'b.png', 'c.png', 'd.png']


def test_existing_output_is_not_clobbered_without_overwrite(panoptic_export, image_dir, tmp_path, capsys):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'keep.txt').write_text('mine')
    args = ['--saved_model', panoptic_export, '--input', str(image_dir / 'a.png'), '--output_dir', str(out)]
    assert predict.main(args) == 2
    assert '--overwrite' in capsys.readouterr().err
    assert os.listdir(out) == ['keep.txt']
    assert predict.main(args + ['--overwrite']) == 0
    assert (out / 'keep.txt').read_text() == 'mine' and (out / predict.PANOPTIC_JSON).exists()


@pytest.mark.parametrize('flags, message', [
    (['--scales', '0.5,1'], '--config_file/--checkpoint'),
    (['--flip'], '--config_file/--checkpoint'),
    (['--scales', 'big'], '--scales'),
    (['--batch_size', '0'], '--batch_size'),
    (['--checkpoint', 'x'], 'not both'),
])
def test_bad_flags_name_the_flag(panoptic_export, image_dir, tmp_path, capsys, flags, message):
    args = ['--saved_model', panoptic_export, '--input', str(image_dir), '--output_dir', str(tmp_path / 'o')]
    assert predict.main(args + flags) == 2
    assert message in capsys.readouterr().err


def test_missing_input_and_a_bad_config_are_clear_errors(image_dir, tmp_path, capsys):
    assert predict.main(['--saved_model', str(tmp_path), '--input', str(tmp_path / 'none*.png'),
                         '--output_dir', str(tmp_path / 'o')]) == 2
    assert 'names no file' in capsys.readouterr().err
    config = tmp_path / 'c.textproto'
    config.write_text('')
    (tmp_path / 'ckpt.index').write_text('')
    assert predict.main(['--config_file', str(config), '--checkpoint', str(tmp_path / 'ckpt'), '--input',
                         str(image_dir), '--output_dir', str(tmp_path / 'o')]) == 2
    assert 'model_options: meta-architecture' in capsys.readouterr().err


def test_classification_top5_csv(classification_export, image_dir, tmp_path):
    out = tmp_path / 'out'
    assert predict.main(['--saved_model', classification_export, '--input', str(image_dir),
                         '--output_dir', str(out)]) == 0
    with open(out / predict.TOP5_CSV) as f:
        rows = list(csv.reader(f))
    assert rows[0][:4] == ['file', 'class_1', 'name_1', 'prob_1'] and len(rows) == 5
    for row in rows[1:]:
        # Inference decodes with TensorFlow's decoder, as the input pipeline does (see files.read_image).
        classes, probs = reference_top5(tf.io.decode_image((image_dir / row[0]).read_bytes(), channels=3).numpy())
        assert [int(c) for c in row[1::3]] == classes.tolist()
        assert row[2::3] == [CLASSIFICATION_DESCRIPTOR.class_names[c] for c in classes]
        np.testing.assert_allclose([float(p) for p in row[3::3]], probs, atol=1e-5)
    assert not (out / predict.PANOPTIC_DIR).exists()


def test_module_entry_point_never_imports_trainer_or_model_code(panoptic_export, image_dir, tmp_path):
    out = tmp_path / 'out'
    script = (
        'import json, runpy, sys\n'
        f'sys.argv = ["predict", "--saved_model", {panoptic_export!r}, "--input", {str(image_dir)!r}, '
        f'"--output_dir", {str(out)!r}]\n'
        'try:\n'
        '    runpy.run_module("deeplab_axial.predict", run_name="__main__")\n'
        'except SystemExit as e:\n'
        '    code = e.code\n'
        'bad = [m for m in sys.modules if m.split(".")[0] == "trainer" or m.startswith("deeplab_axial.model")]\n'
        'print(json.dumps({"code": code, "bad": bad}))\n')
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=REPO_ROOT)
    proc = subprocess.run([sys.executable, '-c', script], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {'code': 0, 'bad': []}
    assert (out / predict.PANOPTIC_JSON).exists()
    assert 'images/s' in proc.stderr


def test_a_folder_among_the_inputs_is_reported_not_skipped(panoptic_export, image_dir, tmp_path, capsys):
    """A glob matching a folder used to drop it without a word."""
    (image_dir / 'more').mkdir()
    out = tmp_path / 'out'
    assert predict.main(['--saved_model', panoptic_export, '--input', str(image_dir / '*'),
                         '--output_dir', str(out)]) == 1
    captured = capsys.readouterr()
    assert 'Wrote predictions for 4 of 5 inputs' in captured.out
    assert f'  {image_dir / "more"}: a folder: --input does not search folders inside it' in captured.err
    result, _ = _read_back(out)
    assert [im['id'] for im in result['images']] == ['a', 'b', 'c', 'd']


def test_every_written_file_takes_the_umask_mode(panoptic_export, image_dir, tmp_path):
    out = tmp_path / 'out'
    previous = os.umask(0o027)
    try:
        assert predict.main(['--saved_model', panoptic_export, '--input', str(image_dir),
                             '--output_dir', str(out)]) == 0
    finally:
        os.umask(previous)
    written = [os.path.join(d, n) for d, _, names in os.walk(out) for n in names]
    assert len(written) == 9  # 4 panoptic PNGs, 4 overlays, panoptic.json
    assert {oct(os.stat(path).st_mode & 0o777) for path in written} == {oct(0o640)}  # mkstemp: 0o600


def test_a_full_disk_is_one_error_line_naming_the_file(panoptic_export, image_dir, full_filesystem, capsys):
    out = full_filesystem / 'out'
    assert predict.main(['--saved_model', panoptic_export, '--input', str(image_dir),
                         '--output_dir', str(out)]) == 2
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    assert re.fullmatch(rf'error: {out}/(panoptic|overlay)/a\.png: No space left on device', err.splitlines()[-1]), err
    assert not [n for _, _, names in os.walk(out) for n in names]  # no partial or temporary file

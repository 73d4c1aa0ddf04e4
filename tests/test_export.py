"""SavedModel export (inference/saved_model_export.py, trainer/export_model.py) and checkpoint inference
(checkpoint_runner.build_runner).

A tiny Axial-DeepLab with seeded random weights (batch-norm statistics taken from the synthetic images, so that its
maps vary) is saved the way trainer/controller.py saves (model parts at the top level of a tf.train.Checkpoint
next to the global step and optimizer), exported, and compared with the evaluator's path
(`deeplab_axial.inference.inference_path` on the eval input pipeline's padded sample) and with the checkpoint
runner.
"""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from PIL import Image
from tensorflow.core.protobuf import saved_model_pb2

from deeplab_axial import common, config_utils, predict
from deeplab_axial.data import input_pipeline, preprocessing
from deeplab_axial.data import synthetic
from deeplab_axial.data import build_coco_data
from deeplab_axial.inference import (checkpoint_runner, inference_path, model_loader, saved_model_export,
                                     saved_model_runner)
from deeplab_axial.model import builder
from deeplab_axial.protos import config_pb2
from evaluation import evaluate as evaluation_evaluate

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PANOPTIC_CONFIG = os.path.join(REPO_ROOT, 'configs', 'synthetic', 'axial_deeplab_tiny.textproto')
CLASSIFICATION_CONFIG = os.path.join(REPO_ROOT, 'configs', 'synthetic', 'axial_resnet_tiny.textproto')
CROP = (65, 65)
pytestmark = pytest.mark.slow
PANOPTIC_KEYS = {common.PRED_PANOPTIC_KEY, common.PRED_SEMANTIC_KEY, common.PRED_INSTANCE_KEY,
                 common.PRED_INSTANCE_SCORES_KEY, common.PRED_INSTANCE_CENTER_KEY, common.PRED_SEMANTIC_PROBS_KEY,
                 common.PRED_CENTER_HEATMAP_KEY, common.PRED_OFFSET_MAP_KEY}


def _write_config(config, path: str) -> str:
    with open(path, 'w') as f:
        f.write(text_format.MessageToString(config))
    return path


def _randomize(model: keras.Model, calibration_images: tf.Tensor, seed: int) -> None:
    """Seeded random weights; BN moving statistics set to the statistics of `calibration_images`."""
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        shape = tuple(v.shape)
        if v.path.endswith('gamma'):
            v.assign(np.ones(shape, np.float32))
        elif v.path.endswith(('beta', 'bias')):
            v.assign(rng.normal(0, 0.1, shape).astype(np.float32))
        elif len(shape) >= 2:
            v.assign(rng.normal(0, np.sqrt(1.0 / np.prod(shape[:-1])), shape).astype(np.float32))
    batch_norms = [layer for layer in model._flatten_layers() if hasattr(layer, 'momentum')]
    for layer in batch_norms:
        layer.momentum = 0.0  # One training-mode call copies the batch statistics into the moving ones.
    model(calibration_images, training=True)
    for layer in batch_norms:
        layer.momentum = 0.99


def _save_like_the_controller(model: keras.Model, directory: str) -> str:
    """tf.train.Checkpoint(global_step, optimizer, **checkpoint_items) through a CheckpointManager."""
    optimizer = keras.optimizers.SGD(momentum=0.9)
    optimizer.build(model.trainable_variables)
    step = tf.Variable(7, dtype=tf.int64)
    items = dict(model.checkpoint_items, **{common.CKPT_GLOBAL_STEP: step, common.CKPT_OPTIMIZER: optimizer})
    return tf.train.CheckpointManager(tf.train.Checkpoint(**items), directory, max_to_keep=1,
                                      step_counter=step).save()


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp('export')


@pytest.fixture(scope='module')
def data(workdir):
    """Synthetic COCO-layout dataset (2 val images of 33 x 49) and its TFRecords."""
    coco, records = str(workdir / 'coco'), str(workdir / 'records')
    synthetic.write_panoptic_dataset(coco, num_train=4, num_val=2, height=33, width=49, seed=0)
    for split in ('train', 'val'):
        build_coco_data.convert_split(coco, records, split, num_shards=1, dataset_name='synthetic_panoptic')
    return {'coco': coco, 'records': records}


@pytest.fixture(scope='module')
def eval_samples(data):
    options = input_pipeline.DataOptions(dataset='synthetic_panoptic', file_pattern=data['records'] + '/val*',
                                         batch_size=1, crop_size=CROP, is_training=False)
    return list(input_pipeline.build_dataset(options))


@pytest.fixture(scope='module')
def panoptic(workdir, data, eval_samples):
    """Config file, checkpoint directory and the restored-equivalent in-memory model."""
    config = model_loader.load_config(PANOPTIC_CONFIG, {'DATA_DIR': data['records']})
    config.evaluator_options.center_score_threshold = 0.5
    config.eval_dataset_options.crop_size[:] = CROP  # the tests' images are 33 x 49, not the demo's 96 x 128
    config_file = _write_config(config, str(workdir / 'panoptic.textproto'))
    descriptor = config_utils.validate(config)['eval']
    keras.utils.set_random_seed(0)
    model = builder.build_model(config, descriptor)
    model.build((None,) + CROP + (3,))
    _randomize(model, tf.concat([s[common.IMAGE] for s in eval_samples], 0), seed=0)
    checkpoint_dir = str(workdir / 'panoptic_ckpt')
    _save_like_the_controller(model, checkpoint_dir)
    return {'config': config, 'config_file': config_file, 'checkpoint': checkpoint_dir, 'model': model,
            'post_processor': builder.build_post_processor(config, descriptor), 'descriptor': descriptor}


def _dead_pid() -> int:
    """The pid of a process that has ended."""
    process = subprocess.Popen([sys.executable, '-c', ''])
    process.wait()
    return process.pid


@pytest.fixture(scope='module')
def panoptic_export(workdir, panoptic):
    output = str(workdir / 'panoptic_export')
    # Temporary folders of an export to the same path: one killed (removed by the export), one still running (kept).
    for pid in (_dead_pid(), os.getppid()):
        os.makedirs(workdir / f'.panoptic_export.export-{socket.gethostname()}-{pid}' / 'saved_model')
    saved_model_export.export(panoptic['config'], panoptic['checkpoint'], output)
    return output


@pytest.fixture(scope='module')
def loaded_export(panoptic_export):
    return tf.saved_model.load(panoptic_export)


def _raw_image(sample) -> np.ndarray:
    """The original image of an eval sample: the unpadded region (the pipeline does not resize it here)."""
    height, width = sample[common.GT_SIZE_RAW][0].numpy()
    return sample[common.IMAGE][0, :height, :width].numpy().astype(np.uint8)


def _eval_path(panoptic, image: np.ndarray) -> dict:
    """The evaluator's path on one uint8 image, in process, from the in-memory model.

    Like the trainer's evaluator it runs as a graph (tf.function): eager and graph arithmetic differ in the last bits,
    enough to flip a pixel that random weights leave on a near-tie.
    """
    @tf.function
    def run(image):
        padded, resized = inference_path.fit_to_input_size(image, CROP)
        predictions = inference_path.panoptic_predictions(panoptic['model'], panoptic['post_processor'],
                                                          padded[None])
        return inference_path.restore_to_image_size({k: v[0] for k, v in predictions.items()}, resized,
                                                    tf.shape(image)[:2])

    return {k: v.numpy() for k, v in run(tf.constant(image)).items()}


def test_fit_to_input_size_traces_for_dynamic_image_sizes():
    # The signatures trace fit_to_input_size with unknown height and width (graph-mode dtype rules).
    fit = tf.function(lambda image: inference_path.fit_to_input_size(image, (9, 11)),
                      input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    padded, resized = fit(tf.fill([18, 11, 3], tf.constant(200, tf.uint8)))
    np.testing.assert_array_equal(resized.numpy(), [9, 5])  # scale 0.5, floor(11 * 0.5) = 5
    np.testing.assert_allclose(padded.numpy()[:, :5], 200.0)
    np.testing.assert_array_equal(padded.numpy()[:, 5:], 127.5)


def test_export_writes_signatures_and_asset(panoptic_export, loaded_export, panoptic):
    assert set(loaded_export.signatures) == {'serving_default', 'serve_batch'}
    with open(os.path.join(panoptic_export, 'assets', 'deeplab_axial.json')) as f:
        meta = json.load(f)
    assert meta['task'] == 'panoptic' and meta['model'] == 'axial_deeplab_tiny'
    assert meta['dataset']['name'] == 'synthetic_panoptic' and meta['dataset']['panoptic_label_divisor'] == 256
    assert saved_model_runner.read_export_metadata(panoptic_export)['dataset'] == panoptic['descriptor']
    left = [name for name in os.listdir(os.path.dirname(panoptic_export)) if name.startswith('.')]
    assert left == [f'.panoptic_export.export-{socket.gethostname()}-{os.getppid()}']  # the killed one's went
    # XLA-free by default: no function of the graph asks for compilation.
    saved = saved_model_pb2.SavedModel.FromString(open(os.path.join(panoptic_export, 'saved_model.pb'), 'rb').read())
    functions = saved.meta_graphs[0].graph_def.library.function
    assert functions and not [f.signature.name for f in functions if f.attr['_XlaMustCompile'].b]


def test_export_equals_evaluation_on_the_eval_pipeline_sample(loaded_export, panoptic, eval_samples):
    for sample in eval_samples:
        # The evaluator: padded sample from the input pipeline -> predictions -> restored to the raw size.
        predictions = inference_path.panoptic_predictions(panoptic['model'], panoptic['post_processor'],
                                                          sample[common.IMAGE])
        expected = inference_path.restore_to_image_size({k: v[0] for k, v in predictions.items()},
                                                        sample[common.GT_SIZE_RESIZED][0],
                                                        sample[common.GT_SIZE_RAW][0])
        image = _raw_image(sample)
        served = loaded_export.signatures['serving_default'](input_tensor=tf.constant(image))
        assert set(served) == PANOPTIC_KEYS
        panoptic_map = served[common.PRED_PANOPTIC_KEY].numpy()
        assert panoptic_map.shape == (1,) + image.shape[:2] and panoptic_map.dtype == np.int32
        np.testing.assert_array_equal(panoptic_map[0], expected[common.PRED_PANOPTIC_KEY].numpy())
        # A real test needs a non-trivial map: several stuff segments and thing instances.
        ids = np.unique(panoptic_map)
        assert len(ids) >= 4 and np.any(ids % 256 > 0)
        assert served[common.PRED_SEMANTIC_PROBS_KEY].shape == (1,) + image.shape[:2] + (7,)
        assert served[common.PRED_OFFSET_MAP_KEY].shape == (1,) + image.shape[:2] + (2,)
        # Graph (SavedModel) and eager arithmetic differ in the last bits.
        np.testing.assert_allclose(served[common.PRED_CENTER_HEATMAP_KEY].numpy()[0],
                                   expected[common.PRED_CENTER_HEATMAP_KEY].numpy(), atol=2e-3)


def test_images_larger_than_the_crop_are_fitted_and_restored(loaded_export, panoptic, eval_samples):
    image = tf.image.resize(_raw_image(eval_samples[0]), [80, 120], method='nearest').numpy().astype(np.uint8)
    served = loaded_export.signatures['serving_default'](input_tensor=tf.constant(image))
    expected = _eval_path(panoptic, image)
    assert served[common.PRED_PANOPTIC_KEY].shape == (1, 80, 120)
    np.testing.assert_array_equal(served[common.PRED_PANOPTIC_KEY][0], expected[common.PRED_PANOPTIC_KEY])


def test_serve_batch_equals_serving_default_per_image(loaded_export, eval_samples):
    images = np.stack([_raw_image(s) for s in eval_samples])
    batched = loaded_export.signatures['serve_batch'](images=tf.constant(images))
    assert set(batched) == PANOPTIC_KEYS
    for i, image in enumerate(images):
        single = loaded_export.signatures['serving_default'](input_tensor=tf.constant(image))
        np.testing.assert_array_equal(batched[common.PRED_PANOPTIC_KEY][i], single[common.PRED_PANOPTIC_KEY][0])
        # The batch size changes how oneDNN blocks the products (and where the attention splits its sequences into
        # halves): last-bit differences, amplified by the random weights to ~1e-5.
        np.testing.assert_allclose(batched[common.PRED_SEMANTIC_PROBS_KEY][i],
                                   single[common.PRED_SEMANTIC_PROBS_KEY][0], atol=5e-5)


_LOAD_WITHOUT_PROJECT = r'''
import sys
import numpy as np
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
image = np.load(sys.argv[2])
# deeplab2's two ways: the module's own call on a uint8 image, and the signature with argument input_tensor.
called = loaded(tf.cast(image, tf.uint8))
out = loaded.signatures['serving_default'](input_tensor=tf.constant(image))
assert sorted(called) == sorted(out), (sorted(called), sorted(out))
# Two traces of one model, optimised apart: floats agree to float noise, ids but for near-ties (at most 0.1%).
for key in out:
    a, b = called[key].numpy(), out[key].numpy()
    assert a.shape == b.shape and a.dtype == b.dtype, key
    if a.dtype.kind == 'f':
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=key)
    else:
        assert (a != b).mean() <= 1e-3, key
np.save(sys.argv[3], out['panoptic_pred'].numpy())
ours = sorted(m for m in sys.modules if m.split('.')[0] in ('deeplab_axial', 'trainer', 'evaluation'))
print('PROJECT_MODULES', ours)
'''


def test_export_is_called_the_deeplab2_way_in_a_process_without_the_project(panoptic_export, loaded_export,
                                                                           eval_samples, tmp_path):
    image = _raw_image(eval_samples[1])
    np.save(tmp_path / 'image.npy', image)
    result = subprocess.run([sys.executable, '-c', _LOAD_WITHOUT_PROJECT, panoptic_export,
                             str(tmp_path / 'image.npy'), str(tmp_path / 'out.npy')],
                            cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=''))
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'PROJECT_MODULES []' in result.stdout
    expected = loaded_export.signatures['serving_default'](input_tensor=tf.constant(image))[common.PRED_PANOPTIC_KEY]
    np.testing.assert_array_equal(np.load(tmp_path / 'out.npy'), expected.numpy())


def test_export_refuses_a_non_empty_output_and_bad_checkpoints(panoptic, tmp_path):
    output = tmp_path / 'taken'
    output.mkdir()
    (output / 'keep.txt').write_text('x')
    with pytest.raises(saved_model_export.ExportError, match='not empty; pass --overwrite'):
        saved_model_export.export(panoptic['config'], panoptic['checkpoint'], str(output))
    assert os.listdir(output) == ['keep.txt']
    with pytest.raises(model_loader.CheckpointError, match='does not exist'):
        saved_model_export.export(panoptic['config'], str(tmp_path / 'missing' / 'ckpt-3'), str(tmp_path / 'out'))
    other = tf.train.Checkpoint(global_step=tf.Variable(1, dtype=tf.int64)).write(str(tmp_path / 'other' / 'ckpt'))
    with pytest.raises(model_loader.CheckpointError, match='does not hold this model'):
        saved_model_export.export(panoptic['config'], other, str(tmp_path / 'out'))
    assert not (tmp_path / 'out').exists()


def test_a_full_disk_is_one_error_naming_the_path(panoptic, small_filesystem):
    """The SavedModel does not fit the 64 KiB disk: TensorFlow's error for it becomes one line naming the file."""
    output = small_filesystem / 'export'
    with pytest.raises(saved_model_export.ExportError,
                       match=rf'^Cannot write the SavedModel {output}: {small_filesystem}/\.export\.export-\S+/'
                             r'saved_model/\S+: No space left on device$'):
        saved_model_export.export(panoptic['config'], panoptic['checkpoint'], str(output))
    assert os.listdir(small_filesystem) == []


def test_restored_weights_are_the_checkpoint_weights(panoptic, eval_samples):
    loaded = model_loader.load_model(panoptic['config'], panoptic['checkpoint'])
    assert loaded.checkpoint_path.endswith('ckpt-1') and loaded.input_size == CROP
    image = eval_samples[0][common.IMAGE]
    for key, value in panoptic['model'](image).items():
        np.testing.assert_array_equal(loaded.model(image)[key].numpy(), value.numpy())


def test_classification_export_cli(workdir, tmp_path):
    config = model_loader.load_config(CLASSIFICATION_CONFIG, {'DATA_DIR': '/unused'})
    descriptor = config_utils.validate(config)['eval']
    keras.utils.set_random_seed(1)
    model = builder.build_model(config, descriptor)
    model.build((None, 32, 32, 3))
    rng = np.random.default_rng(1)
    _randomize(model, tf.constant(rng.uniform(0, 255, (4, 32, 32, 3)), tf.float32), seed=1)
    checkpoint = _save_like_the_controller(model, str(tmp_path / 'ckpt'))
    output = str(tmp_path / 'classifier')
    command = [sys.executable, '-m', 'trainer.export_model', f'--experiment_option_path={CLASSIFICATION_CONFIG}',
               '--config_param=DATA_DIR=/unused', f'--checkpoint_path={checkpoint}', f'--output_path={output}',
               '--merge_with_tf_op']  # deeplab2's flag: accepted, and said to have no effect
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '--merge_with_tf_op has no effect' in result.stderr
    loaded = tf.saved_model.load(output)
    image = rng.integers(0, 256, (45, 60, 3), dtype=np.uint8)
    served = loaded.signatures['serving_default'](input_tensor=tf.constant(image))
    crop = preprocessing.classification_eval(tf.constant(image, tf.float32), (32, 32))
    expected_logits = model(crop[None])[common.PRED_LOGITS_KEY].numpy()
    np.testing.assert_allclose(served[common.PRED_LOGITS_KEY].numpy(), expected_logits, rtol=1e-4, atol=1e-5)
    probs = np.exp(expected_logits[0] - expected_logits[0].max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind='stable')[:5]
    assert served[common.PRED_TOP5_CLASSES_KEY].dtype == tf.int32
    np.testing.assert_array_equal(served[common.PRED_TOP5_CLASSES_KEY].numpy(), [order])
    np.testing.assert_allclose(served[common.PRED_TOP5_PROBS_KEY].numpy(), [probs[order]], rtol=1e-4, atol=1e-6)
    batch = loaded.signatures['serve_batch'](images=tf.constant(np.stack([image, image[:, ::-1]])))
    assert batch[common.PRED_LOGITS_KEY].shape == (2, 6)
    np.testing.assert_allclose(batch[common.PRED_LOGITS_KEY][0], served[common.PRED_LOGITS_KEY][0], rtol=1e-4,
                               atol=1e-5)
    with open(os.path.join(output, 'assets', 'deeplab_axial.json')) as f:
        assert json.load(f)['task'] == 'classification'
    # The folder is now taken: a second export is refused, and --overwrite replaces the whole folder.
    with pytest.raises(saved_model_export.ExportError, match='--overwrite'):
        saved_model_export.export(config, checkpoint, output)
    (tmp_path / 'classifier' / 'stale.txt').write_text('old')
    saved_model_export.export(config, checkpoint, output, overwrite=True)
    assert not (tmp_path / 'classifier' / 'stale.txt').exists()
    assert (tmp_path / 'classifier' / 'saved_model.pb').exists()


# === Checkpoint inference (deeplab_axial.inference.checkpoint_runner) ===

@pytest.fixture(scope='module')
def runner(panoptic):
    return checkpoint_runner.build_runner(panoptic['config_file'], panoptic['checkpoint'])


def test_checkpoint_runner_equals_the_saved_model(runner, loaded_export, eval_samples):
    assert runner.task == 'panoptic' and runner.model_name == 'axial_deeplab_tiny'
    small = _raw_image(eval_samples[0])
    large = tf.image.resize(small, [70, 100], method='nearest').numpy().astype(np.uint8)
    for image in (small, large):
        served = loaded_export.signatures['serving_default'](input_tensor=tf.constant(image))
        ours = runner([image])
        # A pixel whose two nearest centres are equally far to within the two graphs' float noise may go to either:
        # the random model has such pixels (squared-distance gaps of 0.003 px^2 against a noise of about 0.04).
        # Everything else, and every pixel's class, must agree.
        ids, served_ids = ours[common.PRED_PANOPTIC_KEY], served[common.PRED_PANOPTIC_KEY].numpy()
        divisor = runner.descriptor.panoptic_label_divisor
        np.testing.assert_array_equal(ids // divisor, served_ids // divisor)
        assert (ids != served_ids).mean() <= 1e-3
        # The SavedModel's graph is optimised apart from the runner's tf.function: last-bit differences.
        np.testing.assert_allclose(ours[common.PRED_SEMANTIC_PROBS_KEY], served[common.PRED_SEMANTIC_PROBS_KEY],
                                   atol=5e-4)


def test_config_scales_and_flips_reach_the_export_and_the_checkpoint_path(panoptic, loaded_export, workdir,
                                                                         eval_samples):
    """evaluator_options.eval_scales / add_flipped_images are baked into the SavedModel (as deeplab2's export) and
    are the checkpoint runner's defaults: both give the same averaged prediction, not the single-scale one."""
    config = config_pb2.ExperimentOptions()
    config.CopyFrom(panoptic['config'])
    config.evaluator_options.eval_scales[:] = [0.75, 1.0]
    config.evaluator_options.add_flipped_images = True
    output = str(workdir / 'panoptic_export_multi_scale')
    saved_model_export.export(config, panoptic['checkpoint'], output)
    multi = checkpoint_runner.build_runner(_write_config(config, str(workdir / 'multi_scale.textproto')),
                                           panoptic['checkpoint'])
    assert multi.scales == (0.75, 1.0) and multi.flip
    image = _raw_image(eval_samples[0])
    served = tf.saved_model.load(output).signatures['serving_default'](input_tensor=tf.constant(image))
    ours = multi([image])
    np.testing.assert_array_equal(ours[common.PRED_PANOPTIC_KEY], served[common.PRED_PANOPTIC_KEY].numpy())
    np.testing.assert_allclose(ours[common.PRED_SEMANTIC_PROBS_KEY], served[common.PRED_SEMANTIC_PROBS_KEY],
                               atol=5e-4)
    single = loaded_export.signatures['serving_default'](input_tensor=tf.constant(image))
    assert np.abs(single[common.PRED_SEMANTIC_PROBS_KEY].numpy() - ours[common.PRED_SEMANTIC_PROBS_KEY]).max() > 1e-2


def test_multi_scale_flip_through_the_checkpoint_path(panoptic, runner):
    # Width = crop width, so padding (bottom only) commutes with a horizontal flip: the flip-averaged outputs of an
    # image and of its mirror must be mirror images (offsets with dx negated). They agree up to the resizes'
    # rounding, which a mirrored resize does not reproduce bit for bit and the random weights amplify (up to ~1%
    # here), so the check is on mean differences: a missing un-flip or dx negation is off by far more.
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (40, CROP[1], 3), dtype=np.uint8)
    multi = checkpoint_runner.build_runner(panoptic['config_file'], panoptic['checkpoint'], scales=(0.75, 1.0, 1.25),
                                           flip=True)
    out, mirrored = multi([image]), multi([image[:, ::-1]])
    for key in (common.PRED_SEMANTIC_PROBS_KEY, common.PRED_CENTER_HEATMAP_KEY, common.PRED_OFFSET_MAP_KEY):
        assert out[key].shape[:3] == (1, 40, CROP[1])
        negate_dx = [1, -1] if key == common.PRED_OFFSET_MAP_KEY else 1
        agreement = np.abs(mirrored[key][:, :, ::-1] * negate_dx - out[key]).mean()
        without_unflip = np.abs(mirrored[key] - out[key]).mean()
        assert agreement < 0.05 * without_unflip, (key, agreement, without_unflip)
    without_negation = np.abs(mirrored[common.PRED_OFFSET_MAP_KEY][:, :, ::-1] - out[common.PRED_OFFSET_MAP_KEY])
    assert without_negation[..., 1].mean() > 20 * agreement
    # The averaging changes the result: it is not the single-scale prediction.
    single = runner([image])
    assert np.abs(single[common.PRED_SEMANTIC_PROBS_KEY] - out[common.PRED_SEMANTIC_PROBS_KEY]).max() > 1e-3


def test_predict_cli_on_the_export_writes_files_the_evaluator_scores(panoptic_export, panoptic, data, tmp_path):
    gt_json = os.path.join(data['coco'], 'annotations', 'panoptic_val2017.json')
    out = tmp_path / 'predictions'
    assert predict.main(['--saved_model', panoptic_export, '--input', os.path.join(data['coco'], 'val2017'),
                         '--output_dir', str(out), '--gt_json', gt_json]) == 0
    results = evaluation_evaluate.evaluate(
        gt_json, os.path.join(data['coco'], 'annotations', 'panoptic_val2017'), str(out / predict.PANOPTIC_JSON),
        str(out / predict.PANOPTIC_DIR), metrics=('pq', 'miou'), num_workers=1)
    assert 0.0 <= results['pq']['All']['pq'] <= 1.0 and results['pq']['All']['n'] > 0
    assert 0.0 <= results['miou']['mIoU'] <= 1.0
    with open(out / predict.PANOPTIC_JSON) as f:
        assert sorted(a['image_id'] for a in json.load(f)['annotations']) == [5, 6]
    # The checkpoint path of the CLI writes the same panoptic PNGs.
    from_checkpoint = tmp_path / 'from_checkpoint'
    assert predict.main(['--config_file', panoptic['config_file'], '--checkpoint', panoptic['checkpoint'], '--input',
                         os.path.join(data['coco'], 'val2017'), '--output_dir', str(from_checkpoint),
                         '--gt_json', gt_json]) == 0
    for name in os.listdir(out / predict.PANOPTIC_DIR):
        np.testing.assert_array_equal(np.asarray(Image.open(from_checkpoint / predict.PANOPTIC_DIR / name)),
                                      np.asarray(Image.open(out / predict.PANOPTIC_DIR / name)))

"""deeplab_axial.tools.convert_checkpoint: deeplab2 and official PyTorch checkpoints converted once, then read by the
plain paths (model_loader, initial_checkpoint, the SavedModel) with the reference code's outputs.

Fixtures: tests/data/pytorch (the official PyTorch model's state dict and logits, see test_pytorch_checkpoint.py)
and tests/data/deeplab2/{axial_deeplab_s,axial_swidernet,max_deeplab_s_backbone} (deeplab2 Panoptic-DeepLab
checkpoints and their outputs, see test_deeplab2_agreement.py and test_deeplab2_family.py).
"""

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format

from deeplab_axial import common, config_utils
from deeplab_axial.inference import checkpoint_runner, model_loader
from deeplab_axial.model import builder
from deeplab_axial.tools import convert_checkpoint
from trainer import checkpoint_utils

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PYTORCH = os.path.join(_REPO, 'tests', 'data', 'pytorch')
_DEEPLAB2 = os.path.join(_REPO, 'tests', 'data', 'deeplab2', 'axial_deeplab_s')
PYTORCH_CONFIG = os.path.join(_PYTORCH, 'axial26s_small.textproto')
PYTORCH_STATE = os.path.join(_PYTORCH, 'axial26s_small.npz')
# Relative to the reference outputs, as in test_pytorch_checkpoint.py and test_deeplab2_agreement.py.
PYTORCH_TOLERANCE = 1e-4
DEEPLAB2_TOLERANCE = 1e-3


def relative_error(got, expected):
    return float(np.abs(np.asarray(got) - expected).max() / np.abs(expected).max())


def run_cli(*args):
    return convert_checkpoint.main([str(a) for a in args])


@pytest.fixture(scope='module')
def pytorch_outputs():
    return np.load(os.path.join(_PYTORCH, 'axial26s_small_outputs.npz'))


@pytest.fixture(scope='module')
def pytorch_checkpoint_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp('converted') / 'axial26s_small'
    assert run_cli('--source', 'pytorch', '--input', PYTORCH_STATE, '--config_file', PYTORCH_CONFIG,
                   '--output', out) == 0
    return str(out)


def test_pytorch_conversion_reads_through_the_model_loader(pytorch_checkpoint_dir, pytorch_outputs):
    assert sorted(os.listdir(pytorch_checkpoint_dir)) == ['checkpoint', 'ckpt-0.data-00000-of-00001',
                                                          'ckpt-0.index']
    prefix = tf.train.latest_checkpoint(pytorch_checkpoint_dir)  # what trainer.train --mode=eval reads
    assert prefix == os.path.join(pytorch_checkpoint_dir, 'ckpt-0')
    assert tf.train.load_checkpoint(prefix).get_tensor(
        f'{common.CKPT_GLOBAL_STEP}/.ATTRIBUTES/VARIABLE_VALUE') == 0
    loaded = model_loader.load_model(model_loader.load_config(PYTORCH_CONFIG), pytorch_checkpoint_dir)
    logits = loaded.model(tf.constant(pytorch_outputs['images']))[common.PRED_LOGITS_KEY]
    assert relative_error(logits, pytorch_outputs['logits']) < PYTORCH_TOLERANCE


@pytest.mark.slow
def test_pytorch_saved_model_serves_what_the_checkpoint_path_predicts(tmp_path, pytorch_checkpoint_dir,
                                                                      pytorch_outputs):
    out = tmp_path / 'saved_model'
    assert run_cli('--source', 'pytorch', '--input', PYTORCH_STATE, '--config_file', PYTORCH_CONFIG,
                   '--output', out, '--saved_model') == 0
    assert os.listdir(tmp_path) == ['saved_model']  # nothing left beside it
    serving = tf.saved_model.load(str(out)).signatures['serving_default']
    runner = checkpoint_runner.build_runner(PYTORCH_CONFIG, pytorch_checkpoint_dir)
    images = pytorch_outputs['images'].astype(np.uint8)
    for image in images:
        served = serving(image=tf.constant(image))
        expected = runner([image])
        # The SavedModel returns the logits at one scale, the checkpoint runner always log(mean probability).
        np.testing.assert_allclose(tf.nn.softmax(served[common.PRED_LOGITS_KEY]).numpy(),
                                   np.exp(expected[common.PRED_LOGITS_KEY]), atol=1e-6)
        np.testing.assert_array_equal(served[common.PRED_TOP5_CLASSES_KEY].numpy(),
                                      expected[common.PRED_TOP5_CLASSES_KEY])
        np.testing.assert_allclose(served[common.PRED_TOP5_PROBS_KEY].numpy(), expected[common.PRED_TOP5_PROBS_KEY],
                                   atol=1e-6)


def _fixture_config(tmp_path, folder: str, config_name: str, crop_size) -> str:
    """A shipped Cityscapes config with a deeplab2 fixture's model options (reduced widths) and eval crop size,
    written to tmp_path; returns its path."""
    config = config_utils.load_config(
        os.path.join(_REPO, 'configs', 'cityscapes', 'axial_deeplab', f'{config_name}.textproto'), allow_unfilled=True)
    options = config.model_options
    for field in ('backbone', 'decoder', 'panoptic_deeplab'):
        options.ClearField(field)
    with open(os.path.join(folder, 'model_options.textproto')) as f:
        text_format.Parse(f.read(), options)
    if options.backbone.name == 'axial_deeplab_s':
        options.backbone.deeplab2_layout = True
        options.backbone.axial_span = 0  # global attention, as deeplab2
    config.eval_dataset_options.crop_size[:] = list(crop_size)
    path = tmp_path / f'{config_name}_fixture.textproto'
    path.write_text(text_format.MessageToString(config))
    return str(path)


@pytest.mark.slow
def test_deeplab2_conversion_reads_plainly_everywhere(tmp_path):
    """The converted deeplab2 checkpoint is one of ours: model_loader and initial_checkpoint read it without the
    deeplab2 mapping, and the SavedModel serves what the checkpoint path predicts."""
    expected = np.load(os.path.join(_DEEPLAB2, 'outputs.npz'))
    config_file = _fixture_config(tmp_path, _DEEPLAB2, 'axial_deeplab_s_os16', [33, 49])
    checkpoint, saved_model = tmp_path / 'ckpt', tmp_path / 'export'
    prefix = os.path.join(_DEEPLAB2, 'ckpt-1')
    assert run_cli('--source', 'deeplab2', '--input', prefix, '--config_file', config_file, '--output',
                   checkpoint) == 0
    archive = tmp_path / 'archive'  # as a released archive unpacks: one checkpoint in a folder, no state file
    shutil.copytree(_DEEPLAB2, archive / 'unpacked', ignore=shutil.ignore_patterns('*.npz', '*.textproto'))
    assert run_cli('--source', 'deeplab2', '--input', archive, '--config_file', config_file, '--output',
                   saved_model, '--saved_model') == 0
    converted = tf.train.latest_checkpoint(str(checkpoint))
    assert not any(key.startswith('encoder/_stage') for key, _ in tf.train.list_variables(converted))

    config = model_loader.load_config(config_file)
    loaded = model_loader.load_model(config, str(checkpoint))
    outputs = loaded.model(tf.constant(expected['images']), training=False)
    for key in (common.PRED_SEMANTIC_LOGITS_KEY, common.PRED_CENTER_HEATMAP_KEY, common.PRED_OFFSET_MAP_KEY):
        assert relative_error(outputs[key], expected[key]) < DEEPLAB2_TOLERANCE, key

    descriptor = config_utils.validate(config)['eval']
    fresh = builder.build_model(config, descriptor)
    fresh.build((None, 33, 49, 3))
    config.model_options.initial_checkpoint = str(checkpoint)
    config.model_options.restore_semantic_last_layer_from_initial_checkpoint = True
    config.model_options.restore_instance_last_layer_from_initial_checkpoint = True
    checkpoint_utils.make_init_fn(config.model_options, fresh.checkpoint_items)()
    again = fresh(tf.constant(expected['images']), training=False)
    np.testing.assert_array_equal(again[common.PRED_SEMANTIC_LOGITS_KEY].numpy(),
                                  outputs[common.PRED_SEMANTIC_LOGITS_KEY].numpy())

    serving = tf.saved_model.load(str(saved_model)).signatures['serving_default']
    runner = checkpoint_runner.build_runner(config_file, str(checkpoint))
    image = expected['images'][0].astype(np.uint8)
    served, ours = serving(image=tf.constant(image)), runner([image])
    for key in (common.PRED_PANOPTIC_KEY, common.PRED_SEMANTIC_KEY):
        np.testing.assert_array_equal(served[key].numpy(), ours[key], err_msg=key)
    np.testing.assert_allclose(served[common.PRED_SEMANTIC_PROBS_KEY].numpy(), ours[common.PRED_SEMANTIC_PROBS_KEY],
                               atol=1e-5)


@pytest.mark.parametrize('fixture, config_name', [
    ('axial_swidernet', 'axial_swidernet_1_1_1_os16'), ('max_deeplab_s_backbone', 'max_deeplab_s_backbone_os16')])
def test_deeplab2_family_conversion_reads_through_the_model_loader(tmp_path, fixture, config_name):
    """A checkpoint of deeplab2's encoder family (its released zoo's layout), converted with the zoo config's
    fields at the fixture's widths, reads through the model loader with deeplab2's outputs."""
    folder = os.path.join(_REPO, 'tests', 'data', 'deeplab2', fixture)
    expected = np.load(os.path.join(folder, 'outputs.npz'))
    config_file = _fixture_config(tmp_path, folder, config_name, expected['images'].shape[1:3])
    assert run_cli('--source', 'deeplab2', '--input', os.path.join(folder, 'ckpt-1'), '--config_file', config_file,
                   '--output', tmp_path / 'ckpt') == 0
    loaded = model_loader.load_model(model_loader.load_config(config_file), str(tmp_path / 'ckpt'))
    outputs = loaded.model(tf.constant(expected['images']), training=False)
    for key in (common.PRED_SEMANTIC_LOGITS_KEY, common.PRED_CENTER_HEATMAP_KEY, common.PRED_OFFSET_MAP_KEY):
        assert relative_error(outputs[key], expected[key]) < DEEPLAB2_TOLERANCE, key


@pytest.mark.parametrize('args, message', [
    (['--source', 'pytorch', '--input', 'absent.npz', '--config_file', PYTORCH_CONFIG],
     "--input 'absent.npz' does not exist"),
    (['--source', 'pytorch', '--input', PYTORCH_STATE, '--config_file', 'absent.textproto'],
     "--config_file 'absent.textproto' does not exist"),
    (['--source', 'deeplab2', '--input', PYTORCH_STATE, '--config_file', PYTORCH_CONFIG],
     'does not exist: expected a prefix'),
    (['--source', 'deeplab2', '--input', _PYTORCH, '--config_file', PYTORCH_CONFIG],
     "holds 0 checkpoints .* pass a checkpoint prefix"),
    (['--source', 'pytorch', '--input', os.path.join(_DEEPLAB2, 'outputs.npz'), '--config_file', PYTORCH_CONFIG],
     r"PyTorch checkpoint .*outputs.npz: no 'conv1.weight'"),
])
def test_errors_are_one_line_with_exit_status_2_and_leave_nothing(args, message, tmp_path, capsys):
    out = tmp_path / 'out'
    assert run_cli(*args, '--output', out) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1
    assert re.search(message, err), err
    assert os.listdir(tmp_path) == []


def test_an_existing_output_is_refused(tmp_path, capsys):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'kept').write_text('x')
    assert run_cli('--source', 'pytorch', '--input', PYTORCH_STATE, '--config_file', PYTORCH_CONFIG,
                   '--output', out) == 2
    assert 'exists and is not an empty folder' in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ['out'] and os.listdir(out) == ['kept']


def test_a_failed_export_leaves_nothing_behind(tmp_path, monkeypatch):
    from deeplab_axial.inference import saved_model_export

    def fail(*args, **kwargs):
        raise ValueError('export failed')
    monkeypatch.setattr(saved_model_export, 'export', fail)
    assert run_cli('--source', 'pytorch', '--input', PYTORCH_STATE, '--config_file', PYTORCH_CONFIG,
                   '--output', tmp_path / 'out', '--saved_model') == 2
    assert os.listdir(tmp_path) == []


def test_command_line(tmp_path):
    result = subprocess.run([sys.executable, '-m', 'deeplab_axial.tools.convert_checkpoint', '--source', 'pytorch',
                             '--input', str(tmp_path / 'absent.pth'), '--config_file', PYTORCH_CONFIG,
                             '--output', str(tmp_path / 'out')],
                            cwd=_REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: --input '{tmp_path / 'absent.pth'}' does not exist"

"""trainer/train.py: flags, config loading and experiment preparation (the task wiring is train_lib's)."""

import os
import subprocess
import sys

import pytest
import tensorflow as tf

from deeplab_axial import config_utils
from trainer import train

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TINY = os.path.join(_REPO, 'configs', 'synthetic', 'axial_deeplab_tiny.textproto')


def test_parse_config_params():
    assert config_utils.parse_config_params(['A=1', 'B=x=y', 'C=']) == {'A': '1', 'B': 'x=y', 'C': ''}
    with pytest.raises(ValueError, match='--config_param'):
        config_utils.parse_config_params(['NOVALUE'])


def test_prepare_experiment_writes_resolved_config(tmp_path):
    config, experiment_dir, strategy = train.prepare_experiment(
        _TINY, 'train', str(tmp_path), config_params=['DATA_DIR=/data/synth'])
    assert experiment_dir == os.path.join(str(tmp_path), 'synthetic_axial_deeplab_tiny')
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert list(config.train_dataset_options.file_pattern) == ['/data/synth/train*.tfrecord']
    copy = config_utils.load_config(os.path.join(experiment_dir, train.CONFIG_COPY_NAME))
    assert copy == config
    assert not os.path.exists(os.path.join(experiment_dir, train.CONFIG_COPY_NAME + '.tmp'))


def test_prepare_experiment_eval_mode_does_not_write_config(tmp_path):
    _, experiment_dir, _ = train.prepare_experiment(_TINY, 'eval', str(tmp_path),
                                                    config_params=['DATA_DIR=/d'])
    assert os.listdir(experiment_dir) == []


def test_prepare_experiment_errors(tmp_path):
    with pytest.raises(config_utils.ConfigError, match='DATA_DIR'):
        train.prepare_experiment(_TINY, 'train', str(tmp_path))
    with pytest.raises(ValueError, match='--mode'):
        train.prepare_experiment(_TINY, 'fit', str(tmp_path), config_params=['DATA_DIR=/d'])


def test_command_line_requires_flags():
    proc = subprocess.run([sys.executable, '-m', 'trainer.train', '--mode=train'], cwd=_REPO, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
    assert proc.returncode != 0
    assert '--config_file' in proc.stderr and '--model_dir' in proc.stderr

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


@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_prepare_experiment_resolves_config_and_writes_nothing(tmp_path, mode):
    """The folder is made; the config copy is training's to write, under its lock (train_lib.run_experiment)."""
    config, experiment_dir, strategy = train.prepare_experiment(
        _TINY, mode, str(tmp_path), config_params=['DATA_DIR=/data/synth'])
    assert experiment_dir == os.path.join(str(tmp_path), 'synthetic_axial_deeplab_tiny')
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert list(config.train_dataset_options.file_pattern) == ['/data/synth/train*.tfrecord']
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

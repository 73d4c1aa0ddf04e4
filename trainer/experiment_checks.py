"""What an experiment needs besides a valid config, checked before any model is built or anything is written: the
data sources its mode reads, its folder, and the checkpoint it evaluates or starts from.

A TFRecord source must match files (named by config field and pattern); a TFDS source (`tfds:<name>`) must be
prepared, with its split, in its data folder (`tfds_sources.check_prepared`, which says how to prepare it); the
experiment folder and `--model_dir` must be folders where they exist; `--mode=eval` needs a checkpoint in the
experiment folder; a training run that starts fresh needs `model_options.initial_checkpoint` to name a checkpoint.
A model takes about a minute to build and trace, so a wrong path must not wait for it.
"""

import os

import tensorflow as tf

from deeplab_axial import common
from deeplab_axial.data import input_pipeline
from deeplab_axial.data import tfds_sources
from deeplab_axial.protos import config_pb2
from deeplab_axial.protos import dataset_pb2
from trainer import checkpoint_utils
from trainer import data_options


class ExperimentError(ValueError):
    """A data source, folder or checkpoint the experiment cannot use; the message names the config field or flag."""


def check_data_source(options: dataset_pb2.DatasetOptions, field: str, is_training: bool) -> None:
    """The dataset block `field` (train_dataset_options / eval_dataset_options) names data that can be read.

    Raises:
      ExperimentError naming `field`.file_pattern (and the TFDS dataset, split and folder).
    """
    patterns = list(options.file_pattern)
    try:
        name = input_pipeline.tfds_name(patterns)
    except ValueError as e:
        raise ExperimentError(f'{field}.file_pattern: {e}') from None
    if name:
        try:
            tfds_sources.check_prepared(name, data_options.tfds_split(options, is_training),
                                        options.tfds_data_dir or None, f'{field}.tfds_data_dir')
        except ValueError as e:
            raise ExperimentError(f'{field}.file_pattern "tfds:{name}": {e}') from None
        return
    try:
        input_pipeline.list_files(patterns)
    except FileNotFoundError as e:  # 'file_pattern PATTERN matches no files'
        raise ExperimentError(f'{field}.{e}') from None
    except ValueError:  # no pattern
        raise ExperimentError(f'{field}.file_pattern must be set: TFRecord globs, or "tfds:<name>" for '
                              'TFDS') from None


def check_experiment_dir(experiment_dir: str) -> None:
    """The experiment folder and the folder above it (--model_dir) are folders where they exist.

    Raises:
      ExperimentError naming the path.
    """
    for path, what in ((os.path.dirname(experiment_dir), '--model_dir'), (experiment_dir, 'the experiment folder')):
        if tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path):
            raise ExperimentError(f'{what} {path} is a file; expected a folder (the experiment writes to '
                                  'model_dir/experiment_name)')


def check_experiment(config: config_pb2.ExperimentOptions, mode: str, experiment_dir: str) -> None:
    """Every check of this module that `mode` needs (the config itself is `config_checks.validate`'s).

    Raises:
      ExperimentError naming the config field, flag or path.
    """
    check_experiment_dir(experiment_dir)
    training = mode in common.TRAIN_MODES
    if training:
        check_data_source(config.train_dataset_options, 'train_dataset_options', is_training=True)
    if mode != common.MODE_TRAIN:
        check_data_source(config.eval_dataset_options, 'eval_dataset_options', is_training=False)
    has_checkpoint = tf.io.gfile.isdir(experiment_dir) and tf.train.latest_checkpoint(experiment_dir) is not None
    if mode == common.MODE_EVAL and not has_checkpoint:
        raise ExperimentError(f'--mode=eval: no checkpoint in {experiment_dir}; train first, or point --model_dir '
                              'and experiment_name at a trained experiment')
    if training and not has_checkpoint and config.model_options.initial_checkpoint:
        try:
            checkpoint_utils.initial_checkpoint_prefix(config.model_options.initial_checkpoint)
        except checkpoint_utils.InitialCheckpointError as e:
            raise ExperimentError(str(e)) from None

r"""Trains and evaluates deeplab_axial models (deeplab2's `trainer/train.py` command line).

  python -m trainer.train --config_file=configs/synthetic/axial_deeplab_tiny.textproto \
      --mode=train_and_eval --model_dir=/tmp/runs --config_param=DATA_DIR=/tmp/synthetic

Checkpoints and summaries go to model_dir/experiment_name. `${NAME}` placeholders of the config are filled from
--config_param NAME=VALUE, then from environment variables. Strategy: --master (TPU), TF_CONFIG (multi-worker),
--num_gpus, --num_cpu_replicas (see trainer/distribution_utils.py). Training holds a lock on the experiment folder
(a second trainer there is refused) and saves the resolved config beside the checkpoints (trainer/model_dir.py).
"""

import os
from typing import Optional, Sequence, Tuple

import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

from deeplab_axial import common
from deeplab_axial import config_utils
from deeplab_axial.protos import config_pb2
from trainer import config_checks
from trainer import distribution_utils
from trainer import model_dir as model_dir_lib
from trainer import optimizer_builder

_MODES = (common.MODE_TRAIN, common.MODE_EVAL, common.MODE_TRAIN_AND_EVAL, common.MODE_CONTINUOUS_EVAL)

flags.DEFINE_string('config_file', None, 'Path of the ExperimentOptions textproto.')
flags.DEFINE_enum('mode', None, list(_MODES), 'What to run.')
flags.DEFINE_string('model_dir', None, 'Root folder; the experiment writes to model_dir/experiment_name.')
flags.DEFINE_string('master', None, "TPU name or grpc:// address; 'local' for the host's TPU.")
flags.DEFINE_integer('num_gpus', 0, 'GPUs to train on (MirroredStrategy when > 1).')
flags.DEFINE_integer('num_cpu_replicas', 0, 'Replicas on logical CPU devices of this host (MirroredStrategy when > 1): '
                     'the multi-replica path (sync batch norm, split batches) without accelerators.')
flags.DEFINE_integer('seed', None, 'Seeds initialisation, data order and augmentation (overrides '
                     'trainer_options.seed); a seeded run on one device is reproducible bit for bit.')
flags.DEFINE_multi_string('config_param', [], 'NAME=VALUE for a ${NAME} placeholder of the config; repeatable.')

CONFIG_COPY_NAME = model_dir_lib.CONFIG_COPY_NAME


def prepare_experiment(config_file: str, mode: str, model_dir: str, master: Optional[str] = None, num_gpus: int = 0,
                       config_params: Sequence[str] = (), num_cpu_replicas: int = 0
                       ) -> Tuple[config_pb2.ExperimentOptions, str, tf.distribute.Strategy]:
    """Loads and validates the config, creates the strategy and the experiment folder, sets mixed precision.

    Returns:
      (config, experiment_dir, strategy). Training (train_lib.run_experiment) saves the resolved config there.
    """
    if mode not in _MODES:
        raise ValueError(f'--mode must be one of {_MODES}. Received: {mode!r}')
    config = config_utils.load_config(config_file, params=config_utils.parse_config_params(config_params))
    if not config.experiment_name:
        raise config_utils.ConfigError(f'{config_file}: experiment_name must be set')
    strategy = distribution_utils.create_strategy(master, num_gpus, num_cpu_replicas)
    config_checks.validate(config, num_replicas=strategy.num_replicas_in_sync)
    optimizer_builder.set_mixed_precision_policy(config.model_options.mixed_precision_policy)
    experiment_dir = os.path.join(model_dir, config.experiment_name)
    tf.io.gfile.makedirs(experiment_dir)
    logging.info('Experiment %s (%s) in %s with %s x%d', config.experiment_name, mode, experiment_dir,
                 type(strategy).__name__, strategy.num_replicas_in_sync)
    return config, experiment_dir, strategy


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    config, experiment_dir, strategy = prepare_experiment(
        flags.FLAGS.config_file, flags.FLAGS.mode, flags.FLAGS.model_dir, flags.FLAGS.master, flags.FLAGS.num_gpus,
        flags.FLAGS.config_param, flags.FLAGS.num_cpu_replicas)
    if flags.FLAGS.seed is not None:
        config.trainer_options.seed = flags.FLAGS.seed
    # The task wiring (models, losses, data, evaluation) lives in train_lib; imported here so that the flag and
    # config handling above loads without it.
    from trainer import controller  # pylint: disable=g-import-not-at-top
    from trainer import train_lib  # pylint: disable=g-import-not-at-top
    try:
        train_lib.run_experiment(config, flags.FLAGS.mode, experiment_dir, strategy)
    except (controller.NonFiniteLossError, controller.RestoreMismatchError, model_dir_lib.ModelDirLockedError) as e:
        # A diverged run, workers that restored different checkpoints or a folder another trainer holds: outcomes
        # to act on, not crashes; the message alone, and exit status 1.
        logging.error('%s', e)
        raise SystemExit(f'ERROR: {e}') from None


def run() -> None:
    """Console-script entry (`python -m trainer.train` calls the same)."""
    flags.mark_flags_as_required(['config_file', 'mode', 'model_dir'])
    app.run(main)


if __name__ == '__main__':
    run()

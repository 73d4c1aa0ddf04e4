r"""Trains and evaluates deeplab_axial models (deeplab2's `trainer/train.py` command line).

  python -m trainer.train --config_file=configs/synthetic/axial_deeplab_tiny.textproto \
      --mode=train_and_eval --model_dir=/tmp/runs --config_param=DATA_DIR=/tmp/synthetic

Checkpoints and summaries go to model_dir/experiment_name. `${NAME}` placeholders of the config are filled from
--config_param NAME=VALUE, then from environment variables. Strategy: --master (TPU), TF_CONFIG (multi-worker),
--num_gpus, --num_cpu_replicas (see trainer/distribution_utils.py). Training holds a lock on the experiment folder
(a second trainer there is refused) and saves the resolved config beside the checkpoints (trainer/model_dir.py).

A mistake in a flag, the config, a data source or a path is one `error:` line and exit status 2, found before the
model is built and before anything is written; a run that stops on a non-finite loss, on workers that restored
different checkpoints or on a dead worker is one line and status 1 (`deeplab_axial.cli`). TensorFlow is imported
after the flags are parsed, so `--help` answers at once.
"""

import os
from typing import TYPE_CHECKING, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging

from deeplab_axial import cli
from deeplab_axial import common

if TYPE_CHECKING:
    import tensorflow as tf
    from deeplab_axial.protos import config_pb2

flags.DEFINE_string('config_file', None, 'Path of the ExperimentOptions textproto.')
flags.DEFINE_enum('mode', None, list(common.MODES), 'What to run.')
flags.DEFINE_string('model_dir', None, 'Root folder; the experiment writes to model_dir/experiment_name.')
flags.DEFINE_string('master', None, "TPU name or grpc:// address; 'local' for the host's TPU.")
flags.DEFINE_integer('num_gpus', 0, 'GPUs to train on (MirroredStrategy when > 1).')
flags.DEFINE_integer('num_cpu_replicas', 0, 'Replicas on logical CPU devices of this host (MirroredStrategy when > 1): '
                     'the multi-replica path (sync batch norm, split batches) without accelerators.')
flags.DEFINE_integer('seed', None, 'Seeds initialisation, data order and augmentation (overrides '
                     'trainer_options.seed); a seeded run on one device is reproducible bit for bit.')
flags.DEFINE_multi_string('config_param', [], 'NAME=VALUE for a ${NAME} placeholder of the config; repeatable.')


def load_experiment_config(config_file: str, mode: str,
                           config_params: Sequence[str] = ()) -> 'config_pb2.ExperimentOptions':
    """The config of `config_file` with its placeholders filled; imports no TensorFlow, so that a missing file, a
    misspelled field, a wrong-typed value or an unfilled placeholder is reported at once.

    Raises:
      config_utils.ConfigError naming the file (and line) or flag.
    """
    from deeplab_axial import config_utils  # pylint: disable=g-import-not-at-top
    if mode not in common.MODES:
        raise config_utils.ConfigError(f'--mode must be one of {common.MODES}. Received: {mode!r}')
    config = config_utils.load_config(config_file, params=config_utils.parse_config_params(config_params))
    if not config.experiment_name:
        raise config_utils.ConfigError(f'{config_file}: experiment_name must be set')
    return config


def set_up_experiment(config: 'config_pb2.ExperimentOptions', mode: str, model_dir: str, master: Optional[str] = None,
                      num_gpus: int = 0, num_cpu_replicas: int = 0
                      ) -> Tuple['config_pb2.ExperimentOptions', str, 'tf.distribute.Strategy']:
    """Creates the strategy, validates the config for it and sets mixed precision; writes nothing.

    Returns:
      (config, experiment_dir, strategy). `train_lib.run_experiment` checks the data, folder and checkpoint before it
      builds the model, and creates the experiment folder where training needs it.

    Raises:
      config_utils.ConfigError naming the fields; experiment_checks.ExperimentError naming the flag.
    """
    from trainer import config_checks  # pylint: disable=g-import-not-at-top
    from trainer import distribution_utils  # pylint: disable=g-import-not-at-top
    from trainer import experiment_checks  # pylint: disable=g-import-not-at-top
    from trainer import optimizer_builder  # pylint: disable=g-import-not-at-top
    try:
        strategy = distribution_utils.create_strategy(master, num_gpus, num_cpu_replicas)
    except ValueError as e:  # a flag or TF_CONFIG, named
        raise experiment_checks.ExperimentError(str(e)) from None
    config_checks.validate(config, num_replicas=strategy.num_replicas_in_sync)
    optimizer_builder.set_mixed_precision_policy(config.model_options.mixed_precision_policy)
    experiment_dir = os.path.join(model_dir, config.experiment_name)
    logging.info('Experiment %s (%s) in %s with %s x%d', config.experiment_name, mode, experiment_dir,
                 type(strategy).__name__, strategy.num_replicas_in_sync)
    return config, experiment_dir, strategy


def prepare_experiment(config_file: str, mode: str, model_dir: str, master: Optional[str] = None, num_gpus: int = 0,
                       config_params: Sequence[str] = (), num_cpu_replicas: int = 0
                       ) -> Tuple['config_pb2.ExperimentOptions', str, 'tf.distribute.Strategy']:
    """`load_experiment_config`, then `set_up_experiment`: (config, experiment_dir, strategy); writes nothing."""
    return set_up_experiment(load_experiment_config(config_file, mode, config_params), mode, model_dir, master,
                             num_gpus, num_cpu_replicas)


def _user_errors() -> tuple:
    """The exceptions whose one-line message is the whole report, exit status 2: the user fixes a flag, the config,
    the data or a path."""
    from deeplab_axial import config_utils  # pylint: disable=g-import-not-at-top
    from deeplab_axial.model import builder  # pylint: disable=g-import-not-at-top
    from trainer import checkpoint_utils  # pylint: disable=g-import-not-at-top
    from trainer import experiment_checks  # pylint: disable=g-import-not-at-top
    from trainer import model_dir as model_dir_lib  # pylint: disable=g-import-not-at-top
    return (config_utils.ConfigError, builder.ModelConfigError, experiment_checks.ExperimentError,
            checkpoint_utils.InitialCheckpointError, model_dir_lib.ModelDirLockedError)


def _outcome_message(error: Exception, strategy) -> Optional[str]:
    """The one-line message of a run that stopped on a runtime outcome (exit status 1), or None for anything else: a
    non-finite loss, workers that restored different checkpoints, a worker of a multi-worker run that died."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from deeplab_axial import io_errors  # pylint: disable=g-import-not-at-top
    from trainer import controller  # pylint: disable=g-import-not-at-top
    if isinstance(error, (controller.NonFiniteLossError, controller.RestoreMismatchError)):
        return str(error)
    if isinstance(error, tf.errors.UnavailableError) and isinstance(
            strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return (f'a worker of the cluster stopped answering; the run stopped (UnavailableError: '
                f'{io_errors.op_error_text(error)}). Restart every worker: they resume from the newest checkpoint')
    return None


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        cli.print_error(f'unexpected arguments {argv[1:]} (flags are --name=value)')
        return cli.EXIT_USER_ERROR
    from deeplab_axial import config_utils  # pylint: disable=g-import-not-at-top
    f = flags.FLAGS
    try:
        config = load_experiment_config(f.config_file, f.mode, f.config_param)
    except config_utils.ConfigError as e:
        cli.print_error(str(e))
        return cli.EXIT_USER_ERROR
    from trainer import train_lib  # pylint: disable=g-import-not-at-top
    strategy = None

    def set_up_and_run() -> int:
        nonlocal strategy
        _, experiment_dir, strategy = set_up_experiment(config, f.mode, f.model_dir, f.master, f.num_gpus,
                                                        f.num_cpu_replicas)
        train_lib.run_experiment(config, f.mode, experiment_dir, strategy, seed=f.seed)
        return cli.EXIT_OK

    try:
        return cli.run_reporting_errors(set_up_and_run, _user_errors())
    except Exception as e:  # noqa: BLE001 - runtime outcomes are one line; anything else is a bug and raises.
        message = _outcome_message(e, strategy)
        if message is None:
            raise
        logging.error('%s', message)
        cli.print_error(message)
        return cli.EXIT_OUTCOME


def run() -> None:
    """Console-script entry (`python -m trainer.train` calls the same)."""
    flags.mark_flags_as_required(['config_file', 'mode', 'model_dir'])
    app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
    run()

r"""Exports a trained model as a SavedModel (deeplab2's `export_model.py` command line).

  python -m trainer.export_model \
      --experiment_option_path=configs/synthetic/axial_deeplab_tiny.textproto \
      --checkpoint_path=/tmp/runs/synthetic_axial_deeplab_tiny/ckpt-400 --output_path=/tmp/export

The export itself is `deeplab_axial.inference.saved_model_export.export` (what it builds, serves and writes is
described there). Load the SavedModel with `tf.saved_model.load` or run it with `python -m deeplab_axial.predict
--saved_model`. A bad flag, config or checkpoint, a full disk or a missing permission is one error line naming the
path (exit status 2).
"""

import sys
from typing import Optional, Sequence

from absl import app
from absl import flags

from deeplab_axial import config_utils
from deeplab_axial.inference import model_loader
from deeplab_axial.inference import saved_model_export


def main(argv: Sequence[str]) -> Optional[int]:
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    try:
        params = config_utils.parse_config_params(flags.FLAGS.config_param)
        config = model_loader.load_config(flags.FLAGS.experiment_option_path, params)
        saved_model_export.export(config, flags.FLAGS.checkpoint_path, flags.FLAGS.output_path,
                                  overwrite=flags.FLAGS.overwrite, jit_compile=flags.FLAGS.jit_compile)
    # ConfigError, ModelConfigError and CheckpointError are ValueErrors.
    except (saved_model_export.ExportError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f'Wrote SavedModel to {flags.FLAGS.output_path}')
    return 0


def _define_flags() -> None:
    """The command line's flags; defined only when run as a program, so that this module imports without them (the
    trainer defines flags of the same names)."""
    flags.DEFINE_string('experiment_option_path', None, 'ExperimentOptions textproto the model was trained with.')
    flags.DEFINE_string('checkpoint_path', None, 'Checkpoint prefix (model_dir/ckpt-N), or a directory: its newest.')
    flags.DEFINE_string('output_path', None, 'SavedModel directory to write.')
    flags.DEFINE_multi_string('config_param', [], 'NAME=VALUE for a ${NAME} placeholder of the config; repeatable.')
    flags.DEFINE_bool('overwrite', False, 'Replace an existing non-empty --output_path.')
    flags.DEFINE_bool('jit_compile', False, 'Compile the model and post-processing with XLA inside the SavedModel.')


def run() -> None:
    """Console-script entry (`python -m trainer.export_model` calls the same)."""
    _define_flags()
    flags.mark_flags_as_required(['experiment_option_path', 'checkpoint_path', 'output_path'])
    app.run(main)


if __name__ == '__main__':
    run()

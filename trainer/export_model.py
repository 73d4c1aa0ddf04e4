r"""Exports a trained model as a SavedModel (deeplab2's `export_model.py` command line).

  python -m trainer.export_model \
      --experiment_option_path=configs/synthetic/axial_deeplab_tiny.textproto \
      --checkpoint_path=/tmp/runs/synthetic_axial_deeplab_tiny/ckpt-400 --output_path=/tmp/export

The model is built from the config at the eval crop size, its weights restored from the checkpoint (a prefix, or a
directory for its newest checkpoint), and the SavedModel serves `serving_default(image: uint8 [H, W, 3])` and
`serve_batch(images: uint8 [B, H, W, 3])` for any H, W (deeplab_axial/inference/export_module.py) with the asset
`assets/deeplab_axial.json` = {"task", "model", "dataset"}. Load it with `tf.saved_model.load` or run it with
`python -m deeplab_axial.predict --saved_model`. The export is written to a hidden temporary folder next to
--output_path (`.{name}.export-{host}-{pid}`) and renamed when complete; an export to the same path removes such
folders of killed exports. A full disk or a missing permission is one error line naming the path.
"""

import dataclasses
import json
import os
import shutil
import sys
from typing import Optional, Sequence

import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

from deeplab_axial import common
from deeplab_axial import config_utils
from deeplab_axial import io_errors
from deeplab_axial import temp_files
from deeplab_axial.inference import export_module
from deeplab_axial.inference import model_loader
from deeplab_axial.inference import saved_model_runner
from deeplab_axial.protos import config_pb2


class ExportError(Exception):
    """A problem with the flags, config, checkpoint or output path, reported without a traceback."""


def _check_output_path(output_path: str, overwrite: bool) -> None:
    if os.path.exists(output_path) and not os.path.isdir(output_path):
        raise ExportError(f'--output_path {output_path!r} exists and is not a directory')
    if os.path.isdir(output_path) and os.listdir(output_path) and not overwrite:
        raise ExportError(f'--output_path {output_path!r} is not empty; pass --overwrite to replace it')


def _write_saved_model(module: tf.Module, loaded: model_loader.InferenceModel, output_path: str) -> None:
    """Saves `module` in a hidden folder beside `output_path` (.{name}.export-{host}-{pid}, see temp_files) and renames
    it to `output_path`; first removes such folders of exports to the same path that were killed."""
    parent, name = os.path.split(output_path)
    os.makedirs(parent, exist_ok=True)
    prefix = os.path.join(parent, f'.{name}.export-')
    temp_files.remove_stale(prefix)
    work = temp_files.temp_name(prefix)
    try:
        asset_dir = os.path.join(work, 'asset')
        os.makedirs(asset_dir)
        asset_path = os.path.join(asset_dir, saved_model_runner.ASSET_FILE)
        try:
            with open(asset_path, 'w') as f:
                json.dump({'task': loaded.task, 'model': loaded.model_name,
                           'dataset': dataclasses.asdict(loaded.descriptor)}, f, indent=2)
        except OSError as e:  # a failed write names no file
            raise io_errors.with_path(e, asset_path) from None
        module.metadata = tf.saved_model.Asset(asset_path)
        staged = os.path.join(work, 'saved_model')
        signatures = {saved_model_runner.SINGLE_SIGNATURE: module.serving_default.get_concrete_function(),
                      saved_model_runner.BATCH_SIGNATURE: module.serve_batch.get_concrete_function()}
        tf.saved_model.save(module, staged, signatures=signatures)
        if os.path.isdir(output_path):  # Replaced (allowed by the caller): move it aside, deleted with `work`.
            os.replace(output_path, os.path.join(work, 'replaced'))
        os.replace(staged, output_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def export(config: config_pb2.ExperimentOptions, checkpoint_path: str, output_path: str, *,
           overwrite: bool = False, jit_compile: bool = False) -> str:
    """Writes the SavedModel of the config's model restored from `checkpoint_path`.

    Args:
      config: the experiment config (placeholders of data paths may stay unfilled).
      checkpoint_path: checkpoint prefix or directory.
      output_path: the SavedModel directory; must be absent or empty unless `overwrite`.
      overwrite: replace a non-empty `output_path`.
      jit_compile: compile the static-size part with XLA.

    Returns:
      The checkpoint prefix that was exported.

    Raises:
      ExportError naming the output path (also for a full disk or a missing permission); config_utils.ConfigError,
      builder.ModelConfigError or model_loader.CheckpointError naming the bad field or checkpoint.
    """
    output_path = os.path.abspath(output_path)
    _check_output_path(output_path, overwrite)
    loaded = model_loader.load_model(config, checkpoint_path)
    if loaded.task == common.TASK_PANOPTIC:
        module = export_module.PanopticExportModule(loaded.model, loaded.post_processor, loaded.input_size,
                                                    loaded.resize_options, jit_compile=jit_compile,
                                                    scales=loaded.scales, flip=loaded.flip)
    else:
        module = export_module.ClassificationExportModule(loaded.model, loaded.input_size, jit_compile=jit_compile,
                                                          scales=loaded.scales, flip=loaded.flip)
    try:
        _write_saved_model(module, loaded, output_path)
    except (OSError, tf.errors.OpError) as e:
        message = io_errors.user_io_message(e)
        if message is None:
            raise
        raise ExportError(f'Cannot write the SavedModel {output_path}: {message}') from None
    logging.info('Exported %s (%s) from %s to %s', loaded.model_name, loaded.task, loaded.checkpoint_path,
                 output_path)
    return loaded.checkpoint_path


def main(argv: Sequence[str]) -> Optional[int]:
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    try:
        params = config_utils.parse_config_params(flags.FLAGS.config_param)
        config = model_loader.load_config(flags.FLAGS.experiment_option_path, params)
        export(config, flags.FLAGS.checkpoint_path, flags.FLAGS.output_path, overwrite=flags.FLAGS.overwrite,
               jit_compile=flags.FLAGS.jit_compile)
    except (ExportError, ValueError) as e:  # ConfigError, ModelConfigError and CheckpointError are ValueErrors.
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f'Wrote SavedModel to {flags.FLAGS.output_path}')
    return 0


def _define_flags() -> None:
    """The command line's flags; defined only when run as a program, so that `export` imports without them (the
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

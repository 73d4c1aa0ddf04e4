"""Writes a SavedModel of a config's model restored from a checkpoint (`export`).

The model is built from the config at the eval crop size, its weights restored from the checkpoint (a prefix, or a
directory for its newest checkpoint), and the SavedModel serves `serving_default(image: uint8 [H, W, 3])` and
`serve_batch(images: uint8 [B, H, W, 3])` for any H, W (`export_module`) with the asset `assets/deeplab_axial.json`
= {"task", "model", "dataset"}. The export is written to a hidden temporary folder next to the output path
(`.{name}.export-{host}-{pid}`) and renamed when complete; an export to the same path removes such folders of killed
exports. `python -m trainer.export_model` (deeplab2's command line) and `deeplab_axial.tools.convert_checkpoint
--saved_model` call it.
"""

import dataclasses
import json
import os
import shutil

import tensorflow as tf
from absl import logging

from deeplab_axial import common
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

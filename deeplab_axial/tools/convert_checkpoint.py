"""Converts a deeplab2 or official PyTorch checkpoint once into one of ours (or a SavedModel).

Usage:
  python -m deeplab_axial.tools.convert_checkpoint --source deeplab2 --input CKPT_PREFIX_OR_DIR \
      --config_file CONFIG --output OUT_DIR
  python -m deeplab_axial.tools.convert_checkpoint --source pytorch --input axial26s.pth \
      --config_file configs/imagenet/axial_resnet_26_s_pytorch.textproto --output OUT_DIR [--saved_model]

The config's model is built at its eval crop size and filled from --input: a deeplab2 checkpoint (a prefix, or a
folder: its newest checkpoint, or the only one below it) through `deeplab2_checkpoint` (the config needs
backbone.deeplab2_layout; every item the checkpoint holds is read: the whole Panoptic-DeepLab, or the encoder of an
ImageNet checkpoint), or a PyTorch state dict (`.pth`, which needs torch, or `.npz`) through `pytorch_checkpoint` (a
classification config with backbone.pytorch_layout). OUT_DIR then holds
our checkpoint `ckpt-0` of those items and a global step of 0, with the `checkpoint` file that names it, so it
reads plainly wherever a checkpoint is read: `model_options.initial_checkpoint`, `trainer.train --mode=eval
--model_dir=PARENT` with the experiment name OUT_DIR's base name, `trainer.export_model --checkpoint_path`,
`deeplab_axial.predict --checkpoint`. With --saved_model, OUT_DIR is instead the SavedModel of the model
(`saved_model_export.export`, from a temporary checkpoint). OUT_DIR must not exist, or be empty; it is written
under a temporary name beside it and renamed when complete. Errors are one line naming the flag or file (exit 2).
"""

import argparse
import glob
import os
import shutil
import sys
import tempfile
from typing import Dict, Optional, Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from deeplab_axial import cli, common, config_utils, lazy_module  # noqa: E402
from deeplab_axial.protos import config_pb2  # noqa: E402

# Loaded on first use: --help answers before TensorFlow is imported.
keras = lazy_module.load('keras')
tf = lazy_module.load('tensorflow')
model_loader = lazy_module.load('deeplab_axial.inference.model_loader')
saved_model_export = lazy_module.load('deeplab_axial.inference.saved_model_export')
builder = lazy_module.load('deeplab_axial.model.builder')
deeplab2_checkpoint = lazy_module.load('deeplab_axial.model.deeplab2_checkpoint')
pytorch_checkpoint = lazy_module.load('deeplab_axial.model.pytorch_checkpoint')

SOURCES = ('deeplab2', 'pytorch')
CHECKPOINT_NAME = 'ckpt-0'


class ConvertError(Exception):
    """A problem with a flag, the input or the output, reported in one line without a traceback."""


def build_model(config: config_pb2.ExperimentOptions) -> 'keras.Model':
    """The config's model (drop path off), built at the eval crop size, as inference builds it."""
    descriptors = config_utils.validate(config)
    config = config_pb2.ExperimentOptions.FromString(config.SerializeToString())
    config.model_options.backbone.drop_path_keep_prob = 1.0
    model = builder.build_model(config, descriptors.get('eval') or descriptors['train'])
    model.build((None,) + model_loader.input_size(config) + (3,))
    return model


def read_weights(model: 'keras.Model', source: str, path: str) -> Dict[str, 'keras.layers.Layer']:
    """Fills `model` from the checkpoint at `path`; returns the checkpoint items that were filled."""
    if source == 'pytorch':
        pytorch_checkpoint.load_pytorch_checkpoint(model, path)
        return dict(model.checkpoint_items)
    prefix = _deeplab2_prefix(path)
    if not deeplab2_checkpoint.is_deeplab2_checkpoint(prefix):
        raise ConvertError(f'--input {prefix!r} is not a deeplab2 checkpoint (no deeplab2 encoder variables)')
    readable = deeplab2_checkpoint.readable_items(prefix)
    items = {name: item for name, item in model.checkpoint_items.items() if name in readable}
    deeplab2_checkpoint.load_deeplab2_checkpoint(items, prefix)
    return items


def _deeplab2_prefix(path: str) -> str:
    """The checkpoint prefix `path` names: itself, a folder's newest, or the only one anywhere below a folder
    without a `checkpoint` file (as deeplab2's released archives unpack)."""
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, 'checkpoint')):
        indexes = glob.glob(os.path.join(glob.escape(path), '**', '*.index'), recursive=True)
        if len(indexes) != 1:
            raise ConvertError(f'--input {path!r} holds {len(indexes)} checkpoints (.index files) and no `checkpoint` '
                               'file naming one: pass a checkpoint prefix (folder/ckpt-N)')
        return indexes[0][:-len('.index')]
    try:
        return model_loader.resolve_checkpoint(path)
    except model_loader.CheckpointError as e:
        raise ConvertError(f'--input: {e}') from None


def write_checkpoint(items: Dict[str, 'keras.layers.Layer'], directory: str) -> str:
    """Writes `ckpt-0` (the items and global step 0) and its `checkpoint` file into `directory`; returns the
    prefix."""
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name=common.CKPT_GLOBAL_STEP)
    checkpoint = tf.train.Checkpoint(**{common.CKPT_GLOBAL_STEP: step}, **items)
    manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=1, checkpoint_name='ckpt')
    return manager.save(checkpoint_number=0)


def _check_output(output: str) -> str:
    output = os.path.abspath(output)
    if os.path.exists(output) and not (os.path.isdir(output) and not os.listdir(output)):
        raise ConvertError(f'--output {output!r} exists and is not an empty folder')
    return output


def convert(source: str, input_path: str, config_file: str, output: str, saved_model: bool = False,
            config_params: Optional[Dict[str, str]] = None) -> str:
    """Converts `input_path` into `output` (see the module docstring); returns the output folder.

    Raises:
      ConvertError naming the flag, file or output; ValueError (config_utils.ConfigError, builder.ModelConfigError,
      model_loader.CheckpointError, pytorch_checkpoint.PyTorchCheckpointError, ...) naming the field or file.
    """
    if source not in SOURCES:
        raise ConvertError(f'--source must be one of {SOURCES}. Received: {source!r}')
    if not (os.path.exists(input_path) or os.path.exists(input_path + '.index')):
        raise ConvertError(f'--input {input_path!r} does not exist')
    if not os.path.isfile(config_file):
        raise ConvertError(f'--config_file {config_file!r} does not exist')
    output = _check_output(output)
    config = model_loader.load_config(config_file, config_params)
    model = build_model(config)
    items = read_weights(model, source, input_path)
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(dir=parent, prefix=f'.{os.path.basename(output)}.convert-')
    try:
        staged = os.path.join(work, 'checkpoint')
        prefix = write_checkpoint(items, staged)
        if saved_model:
            saved_model_export.export(config, prefix, os.path.join(work, 'saved_model'))
            staged = os.path.join(work, 'saved_model')
        if os.path.isdir(output):  # empty (checked above)
            os.rmdir(output)
        os.replace(staged, output)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return output


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog='python -m deeplab_axial.tools.convert_checkpoint',
                                description=__doc__.split('\n')[0])
    parser.add_argument('--source', required=True, choices=SOURCES, help='where the checkpoint comes from')
    parser.add_argument('--input', required=True,
                        help='deeplab2: checkpoint prefix or folder; pytorch: a .pth (needs torch) or .npz file')
    parser.add_argument('--config_file', required=True,
                        help='our experiment config (textproto) of the model the checkpoint holds')
    parser.add_argument('--output', required=True, help='a new folder: our checkpoint, or the SavedModel')
    parser.add_argument('--saved_model', action='store_true', help='write a SavedModel instead of a checkpoint')
    parser.add_argument('--config_param', action='append', default=[],
                        help='NAME=VALUE for a ${NAME} placeholder of the config; repeatable')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status (`deeplab_axial.cli`)."""
    args = _parse_args(argv)

    def run() -> int:
        params = config_utils.parse_config_params(args.config_param)
        output = convert(args.source, args.input, args.config_file, args.output, args.saved_model, params)
        print(f'Wrote {"SavedModel" if args.saved_model else "checkpoint"} {output}')
        return cli.EXIT_OK

    # Config, model, checkpoint and export errors are ValueErrors.
    return cli.run_reporting_errors(run, (ConvertError, ValueError, FileNotFoundError))


if __name__ == '__main__':
    sys.exit(main())

"""Adapter from a training config + checkpoint to an inference runner (the `--config_file/--checkpoint` path).

A runner is what deeplab_axial.predict calls: `runner(images)` maps a list of same-size uint8 [height, width, 3]
images to prediction arrays with a batch dimension (the SavedModel contract's keys), and it exposes `task`,
`model_name`, `descriptor` and `supports_batches` (see saved_model_runner.SavedModelRunner). This path, unlike the
SavedModel one, is where multi-scale and flipped inference (`scales`, `flip`) live, because it holds the raw model.

It needs the trainer's model building (config parsing, model + post-processor construction, checkpoint restore),
which is not part of this branch; until it is wired in, `build_runner` says so instead of guessing.
"""

import os
from typing import Sequence


def build_runner(config_file: str, checkpoint: str, scales: Sequence[float] = (1.0,), flip: bool = False):
    """Builds a runner from a textproto config and a checkpoint.

    Args:
      config_file: experiment config (textproto).
      checkpoint: checkpoint prefix or directory.
      scales: input scales whose raw outputs are averaged before post-processing.
      flip: also average horizontally flipped inputs.

    Raises:
      FileNotFoundError naming a missing config or checkpoint; NotImplementedError while the trainer's model
      building is not connected to inference.
    """
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f'--config_file {config_file!r} does not exist')
    if not (os.path.exists(checkpoint) or os.path.exists(checkpoint + '.index')):
        raise FileNotFoundError(f'--checkpoint {checkpoint!r} does not exist (expected a checkpoint prefix with '
                                'a .index file, or a directory)')
    raise NotImplementedError(
        'Inference from --config_file/--checkpoint needs the trainer\'s model building, which this installation '
        'does not connect yet. Export a SavedModel with the trainer and pass --saved_model instead.')

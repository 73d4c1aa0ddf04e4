"""Writing an evaluation pass: `eval_results.json` (atomic) and the few rendered predictions for TensorBoard."""

import os
from typing import Dict, Sequence

import numpy as np
import tensorflow as tf

from deeplab_axial import atomic_files
from trainer import summaries

EVAL_RESULTS_NAME = 'eval_results.json'


def write_eval_results(experiment_dir: str, step: int, metrics: Dict[str, float], details: Dict = None) -> str:
    """Writes {'global_step', 'metrics', 'details'} to experiment_dir/eval_results.json (temp name, then rename)."""
    path = os.path.join(experiment_dir, EVAL_RESULTS_NAME)
    atomic_files.write_json(path, {'global_step': int(step), 'metrics': {k: float(v) for k, v in metrics.items()},
                             'details': details or {}})
    return path


def write_image_summaries(writer: tf.summary.SummaryWriter, name: str, pictures: Sequence[np.ndarray],
                          step: int) -> None:
    """One image summary per picture (sizes differ between examples), named name/0, name/1, ..."""
    with writer.as_default(step=step):
        for i, picture in enumerate(pictures):
            summaries.image(f'{name}/{i}', np.asarray(picture, np.uint8)[np.newaxis], step, max_outputs=1)
    writer.flush()

"""Inference from a training config + checkpoint (the `--config_file/--checkpoint` path of deeplab_axial.predict).

A runner is what deeplab_axial.predict calls: `runner(images)` maps a list of same-size uint8 [height, width, 3]
images to prediction arrays with a batch dimension (the SavedModel contract's keys), and it exposes `task`,
`model_name`, `descriptor` and `supports_batches` (as saved_model_runner.SavedModelRunner does). Unlike the
SavedModel path, this one holds the raw model, so it is where multi-scale and flipped inference live.

`CheckpointRunner` is complete given two callables: the model's raw prediction at the input size and the
post-processor. `build_runner` makes those from a config and a checkpoint; that needs the trainer's model building
(config parsing, model and post-processor construction, checkpoint restore with eval preprocessing), which this
module does not have yet, so it says so instead of guessing.
"""

import os
from typing import Callable, Dict, Sequence

import numpy as np
import tensorflow as tf

from deeplab_axial import common
from deeplab_axial.data.dataset import DatasetDescriptor
from deeplab_axial.inference import multi_scale

PostProcessor = Callable[[Dict[str, tf.Tensor]], Dict[str, tf.Tensor]]


class CheckpointRunner:
    """Runs a raw model with multi-scale/flip averaging, then post-processing (panoptic) or top-5 (classification).

    Args:
      predict_raw: float32 [batch, height, width, 3] images in 0..255 -> raw outputs at that size. It owns any eval
        preprocessing the model needs (e.g. padding to the crop size its global axial attention was built for, and
        cropping the outputs back), because multi-scale inference calls it at several sizes.
      post_process: averaged raw outputs (`semantic_logits`, `semantic_probs`, `center_heatmap`, `offset_map`) ->
        post-processing outputs (`panoptic_pred`, ...); unused for classification.
      descriptor: the model's dataset.
      task: 'panoptic' or 'classification'.
      model_name: registry name of the model.
      scales: input scales to average over.
      flip: also average horizontally flipped inputs.
    """

    supports_batches = True

    def __init__(self, predict_raw: multi_scale.RawPredictor, post_process: PostProcessor,
                 descriptor: DatasetDescriptor, task: str, model_name: str, scales: Sequence[float] = (1.0,),
                 flip: bool = False):
        if task not in (common.TASK_PANOPTIC, common.TASK_CLASSIFICATION):
            raise ValueError(f'`task` must be "{common.TASK_PANOPTIC}" or "{common.TASK_CLASSIFICATION}". '
                             f'Received: {task!r}')
        self._predict_raw = predict_raw
        self._post_process = post_process
        self.descriptor = descriptor
        self.task = task
        self.model_name = model_name
        self.scales = tuple(scales)
        self.flip = flip

    def __call__(self, images: Sequence[np.ndarray]) -> Dict[str, np.ndarray]:
        """Predicts on uint8 [height, width, 3] images of one size; returns arrays with a batch dimension."""
        batch = tf.constant(np.stack(images), tf.float32)
        raw = multi_scale.multi_scale_predict(self._predict_raw, batch, self.scales, self.flip)
        if self.task == common.TASK_CLASSIFICATION:
            probs = tf.nn.softmax(raw[common.PRED_LOGITS_KEY])
            top5 = tf.math.top_k(probs, k=min(5, int(probs.shape[-1])))
            outputs = {common.PRED_LOGITS_KEY: raw[common.PRED_LOGITS_KEY],
                       common.PRED_TOP5_CLASSES_KEY: tf.cast(top5.indices, tf.int32),
                       common.PRED_TOP5_PROBS_KEY: top5.values}
        else:
            outputs = dict(raw)
            outputs.update(self._post_process(raw))
        return {k: v.numpy() for k, v in outputs.items()}


def build_runner(config_file: str, checkpoint: str, scales: Sequence[float] = (1.0,),
                 flip: bool = False) -> CheckpointRunner:
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

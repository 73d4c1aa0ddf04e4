"""Inference from a training config + checkpoint (the `--config_file/--checkpoint` path of deeplab_axial.predict).

A runner is what deeplab_axial.predict calls: `runner(images)` maps a list of same-size uint8 [height, width, 3]
images to prediction arrays with a batch dimension (the SavedModel contract's keys), and it exposes `task`,
`model_name`, `descriptor` and `supports_batches` (as saved_model_runner.SavedModelRunner does). Unlike the
SavedModel path, this one holds the raw model, so it is where multi-scale and flipped inference live.

`CheckpointRunner` is complete given two callables: the model's raw prediction at any size and the post-processor.
`build_runner` makes those from a config and a checkpoint (deeplab_axial.inference.model_loader). A panoptic runner
built there follows the evaluator's path (inference_path): each image is fitted into the model's
input size, multi-scale/flip averaging and post-processing run at that size, and the predictions are restored to
the image size, so at scale 1 without flip it gives the SavedModel's and the evaluator's panoptic maps. Every scale
runs the model at the scaled size itself (the models take any static size), as deeplab2's eval_scales do.
"""

import os
from typing import Callable, Dict, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from deeplab_axial import common
from deeplab_axial.data import preprocessing
from deeplab_axial.data.dataset import DatasetDescriptor
from deeplab_axial.inference import model_loader
from deeplab_axial.inference import multi_scale
from deeplab_axial.inference import inference_path

PostProcessor = Callable[[Dict[str, tf.Tensor]], Dict[str, tf.Tensor]]


class CheckpointRunner:
    """Runs a raw model with multi-scale/flip averaging, then post-processing (panoptic) or top-5 (classification).

    Args:
      predict_raw: float32 [batch, height, width, 3] images in 0..255 -> raw outputs at that size; multi-scale
        inference calls it at every scaled size.
      post_process: averaged raw outputs (`semantic_logits`, `semantic_probs`, `center_heatmap`, `offset_map`) ->
        post-processing outputs (`panoptic_pred`, ...); unused for classification.
      descriptor: the model's dataset.
      task: 'panoptic' or 'classification'.
      model_name: registry name of the model.
      scales: input scales to average over.
      flip: also average horizontally flipped inputs.
      input_size: the model's (height, width). Panoptic images are fitted into it first (`fit_to_input_size`),
        averaging and post-processing run at that size and the predictions are restored to the image size;
        classification images are resized and centre-cropped to it first (the eval pipeline's
        `classification_eval`). None runs on the images as they are.
      resize_options: `fit_to_input_size` resize-to-range keywords (the eval dataset's), with `input_size`.
    """

    supports_batches = True

    def __init__(self, predict_raw: multi_scale.RawPredictor, post_process: PostProcessor,
                 descriptor: DatasetDescriptor, task: str, model_name: str, scales: Sequence[float] = (1.0,),
                 flip: bool = False, input_size: Optional[Sequence[int]] = None,
                 resize_options: Optional[Mapping[str, int]] = None):
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
        self.input_size = None if input_size is None else tuple(int(s) for s in input_size)
        self.resize_options = dict(resize_options or {})

    def _predict_fitted(self, batch: tf.Tensor) -> Dict[str, tf.Tensor]:
        """The evaluator's path: fit to the input size, average and post-process there, restore the image size."""
        fitted = [inference_path.fit_to_input_size(image, self.input_size, **self.resize_options)
                  for image in batch]
        raw = multi_scale.multi_scale_predict(self._predict_raw, tf.stack([padded for padded, _ in fitted]),
                                              self.scales, self.flip)
        predictions = self._post_process(raw)
        image_size = tf.shape(batch)[1:3]
        restored = [inference_path.restore_to_image_size({k: v[i] for k, v in predictions.items()}, resized,
                                                         image_size)
                    for i, (_, resized) in enumerate(fitted)]
        return {k: tf.stack([r[k] for r in restored]) for k in restored[0]}

    def __call__(self, images: Sequence[np.ndarray]) -> Dict[str, np.ndarray]:
        """Predicts on uint8 [height, width, 3] images of one size; returns arrays with a batch dimension."""
        batch = tf.constant(np.stack(images), tf.float32)
        if self.task == common.TASK_PANOPTIC and self.input_size is not None:
            return {k: v.numpy() for k, v in self._predict_fitted(batch).items()}
        if self.input_size is not None:
            batch = tf.stack([preprocessing.classification_eval(image, self.input_size) for image in batch])
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


def build_runner(config_file: str, checkpoint: str, scales: Optional[Sequence[float]] = None,
                 flip: Optional[bool] = None) -> CheckpointRunner:
    """Builds a runner from a textproto config and a checkpoint.

    The model is built at eval_dataset_options.crop_size and restored from the trainer's checkpoint layout;
    post-processing takes evaluator_options.

    Args:
      config_file: experiment config (textproto); unfilled data-path placeholders are fine.
      checkpoint: checkpoint prefix or directory (newest checkpoint).
      scales: input scales whose raw outputs are averaged before post-processing; None takes the config's
        evaluator_options.eval_scales.
      flip: also average horizontally flipped inputs; None takes evaluator_options.add_flipped_images.

    Raises:
      FileNotFoundError naming a missing config or checkpoint; ValueError (config_utils.ConfigError,
      builder.ModelConfigError, model_loader.CheckpointError) naming the bad field or checkpoint.
    """
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f'--config_file {config_file!r} does not exist')
    if not (os.path.exists(checkpoint) or os.path.exists(checkpoint + '.index')):
        raise FileNotFoundError(f'--checkpoint {checkpoint!r} does not exist (expected a checkpoint prefix with '
                                'a .index file, or a directory)')
    loaded = model_loader.load_model(model_loader.load_config(config_file), checkpoint)
    call = tf.function(lambda images: loaded.model(images, training=False))
    scales = loaded.scales if scales is None else scales
    flip = loaded.flip if flip is None else flip
    if loaded.task == common.TASK_PANOPTIC:
        # Post-processing at the model's input size: one trace, run as a graph.
        return CheckpointRunner(call, tf.function(loaded.post_processor), loaded.descriptor, loaded.task,
                                loaded.model_name, scales, flip, input_size=loaded.input_size,
                                resize_options=loaded.resize_options)
    return CheckpointRunner(call, None, loaded.descriptor, loaded.task, loaded.model_name, scales, flip,
                            input_size=loaded.input_size)

"""Runs an exported SavedModel through its signatures, with nothing but TensorFlow and the export's asset file.

The export contract: `serving_default(input_tensor: uint8 [height, width, 3])` (deeplab2's argument name; exports
made before it took `image`, read as well) and `serve_batch(images: uint8
[batch, height, width, 3])` return the prediction keys of deeplab_axial.common with a batch dimension at the input
size, and `assets/deeplab_axial.json` = {"task", "model", "dataset"} describes the model and its dataset. This
module never imports the trainer or the model code, so a SavedModel runs in a process that has neither.
"""

import json
import os
from typing import Dict, Sequence

import numpy as np
import tensorflow as tf

from deeplab_axial import common
from deeplab_axial.data.dataset import DatasetDescriptor

ASSET_FILE = 'deeplab_axial.json'
SINGLE_SIGNATURE = 'serving_default'
BATCH_SIGNATURE = 'serve_batch'


def read_export_metadata(saved_model_dir: str) -> dict:
    """Reads and checks `assets/deeplab_axial.json` of an export.

    Returns:
      {"task": str, "model": str, "dataset": DatasetDescriptor}.

    Raises:
      FileNotFoundError / ValueError naming the file and the missing or bad field.
    """
    path = os.path.join(saved_model_dir, 'assets', ASSET_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path} not found: a deeplab_axial SavedModel carries assets/{ASSET_FILE} '
                                '(task, model, dataset). Was this directory written by the deeplab_axial export?')
    with open(path) as f:
        try:
            meta = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f'{path} is not valid JSON: {e}') from None
    missing = [k for k in ('task', 'model', 'dataset') if k not in meta]
    if missing:
        raise ValueError(f'{path} lacks the fields {missing}; expected "task", "model" and "dataset"')
    if meta['task'] not in (common.TASK_PANOPTIC, common.TASK_CLASSIFICATION):
        raise ValueError(f'{path}: "task" must be "{common.TASK_PANOPTIC}" or "{common.TASK_CLASSIFICATION}". '
                         f'Received: {meta["task"]!r}')
    try:
        descriptor = DatasetDescriptor.from_dict(meta['dataset'])
    except (TypeError, ValueError) as e:
        raise ValueError(f'{path}: bad "dataset" block: {e}') from None
    return {'task': meta['task'], 'model': meta['model'], 'dataset': descriptor}


class SavedModelRunner:
    """Calls an exported model on uint8 images.

    Attributes:
      task: 'panoptic' or 'classification'.
      model_name: the model's registry name, from the asset file.
      descriptor: the dataset descriptor the model was trained for.
    """

    def __init__(self, saved_model_dir: str):
        meta = read_export_metadata(saved_model_dir)
        self.task = meta['task']
        self.model_name = meta['model']
        self.descriptor = meta['dataset']
        self._loaded = tf.saved_model.load(saved_model_dir)
        signatures = self._loaded.signatures
        if SINGLE_SIGNATURE not in signatures:
            raise ValueError(f'SavedModel {saved_model_dir} has no {SINGLE_SIGNATURE!r} signature. '
                             f'Found: {sorted(signatures.keys())}')
        self._single = signatures[SINGLE_SIGNATURE]
        (self._single_input,) = self._single.structured_input_signature[1]  # 'input_tensor', or older 'image'
        self._batch = signatures[BATCH_SIGNATURE] if BATCH_SIGNATURE in signatures else None

    @property
    def supports_batches(self) -> bool:
        return self._batch is not None

    def __call__(self, images: Sequence[np.ndarray]) -> Dict[str, np.ndarray]:
        """Predicts on images of one size.

        Args:
          images: uint8 [height, width, 3] arrays, all the same size.

        Returns:
          The signature's outputs as numpy arrays with batch dimension len(images).
        """
        if not images:
            raise ValueError('`images` is empty')
        if len({im.shape for im in images}) != 1:
            raise ValueError('All images of one call must share a size. '
                             f'Received: {sorted({im.shape for im in images})}')
        if len(images) > 1 and self._batch is not None:
            outputs = self._batch(images=tf.constant(np.stack(images), tf.uint8))
            return {k: v.numpy() for k, v in outputs.items()}
        per_image = [self._single(**{self._single_input: tf.constant(im, tf.uint8)}) for im in images]
        return {k: np.concatenate([o[k].numpy() for o in per_image]) for k in per_image[0]}

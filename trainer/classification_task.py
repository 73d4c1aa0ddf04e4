"""The classification task (ImageNet-style pre-training): loss with label smoothing and top-1/top-5 evaluation.

With several workers each evaluates its share of the records and the correct counts are summed over workers.
"""

import math
from typing import Callable, Dict, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from deeplab_axial import common
from deeplab_axial import config_utils
from deeplab_axial.data.dataset import DatasetDescriptor
from deeplab_axial.inference import inference_path
from deeplab_axial.model.loss.classification_loss import classification_loss
from deeplab_axial.protos import config_pb2
from trainer import cluster
from trainer import eval_results
from trainer import replica_eval

OUTPUT_KEYS = (common.TOTAL_LOSS, common.CLASSIFICATION_LOSS)
TOP1_KEY = 'evaluation/accuracy/top1'
TOP5_KEY = 'evaluation/accuracy/top5'


def make_loss_fn(config: config_pb2.ExperimentOptions, descriptor: DatasetDescriptor,
                 model: keras.Model) -> Callable[[Dict[str, tf.Tensor]], Dict[str, tf.Tensor]]:
    """loss_fn(batch) -> per-example {total_loss, classification_loss} [batch] (weighted, label-smoothed)."""
    options = config.trainer_options.loss_options.classification_loss
    weight, smoothing = options.weight, options.label_smoothing

    def loss_fn(inputs: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        logits = model(inputs[common.IMAGE], training=True)[common.PRED_LOGITS_KEY]
        loss = classification_loss(inputs[common.GT_CLASS_LABEL_KEY], logits, smoothing) * weight
        return {common.TOTAL_LOSS: loss, common.CLASSIFICATION_LOSS: loss}

    return loss_fn


class ClassificationEval:
    """Evaluator (reset/update/result): top-1 and top-5 accuracy over the eval set, on all replicas.

    Args:
      strategy: the strategy the model was built under.
      model: the classifier (called with training=False).
      batch_size: the global eval batch size (each of W workers gets batches of ceil(batch_size / W)).
      crop_size: (height, width) of the eval images.
      experiment_dir: eval_results.json goes here (from the chief).
      global_step: the controller's step variable.
      scales: input scales whose class probabilities are averaged (evaluator_options.eval_scales).
      flip: also average over horizontally flipped images (evaluator_options.add_flipped_images).
    """

    def __init__(self, strategy: tf.distribute.Strategy, model: keras.Model, batch_size: int,
                 crop_size: Tuple[int, int], experiment_dir: str, global_step: tf.Variable,
                 scales: Sequence[float] = (1.0,), flip: bool = False):
        self._model = model
        self._crop_size = tuple(crop_size)
        self._scales = tuple(scales)
        self._flip = flip
        self._experiment_dir = experiment_dir
        self._global_step = global_step
        self._strategy = strategy
        self._worker = cluster.worker_info(strategy)
        self._runner = replica_eval.ReplicaRunner(strategy, self._predict,
                                                  math.ceil(batch_size / self._worker.num_workers))
        self.last_results: Dict[str, float] = {}
        self.reset()

    def _predict(self, inputs: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        images = tf.ensure_shape(inputs[common.IMAGE], [None, *self._crop_size, 3])
        return {common.PRED_LOGITS_KEY: inference_path.classification_logits(self._model, images, self._scales,
                                                                             self._flip)}

    def reset(self) -> None:
        self._top1 = self._top5 = self._count = 0

    def update(self, batch: Dict[str, tf.Tensor]) -> None:
        logits = self._runner({common.IMAGE: batch[common.IMAGE]})[common.PRED_LOGITS_KEY]
        labels = batch[common.GT_CLASS_LABEL_KEY].numpy()
        k = min(5, logits.shape[-1])
        # Stable sort: ties go to the lower class id, as tf.math.top_k.
        top = np.argsort(-logits, axis=-1, kind='stable')[:, :k]
        self._top1 += int(np.sum(top[:, 0] == labels))
        self._top5 += int(np.sum(np.any(top == labels[:, None], axis=-1)))
        self._count += len(labels)

    def result(self) -> Dict[str, float]:
        top1, top5, count = np.sum(cluster.gather_objects(
            self._strategy, self._worker, (self._top1, self._top5, self._count)), axis=0).tolist()
        if not count:
            raise ValueError('ClassificationEval: the eval dataset gave no examples')
        metrics = {TOP1_KEY: top1 / count, TOP5_KEY: top5 / count}
        if self._worker.is_chief:
            eval_results.write_eval_results(self._experiment_dir, int(self._global_step.numpy()), metrics,
                                            {'num_examples': count})
        self.last_results = metrics
        return metrics


def build_evaluator(config: config_pb2.ExperimentOptions, descriptor: DatasetDescriptor,
                    strategy: tf.distribute.Strategy, model: keras.Model, crop_size: Tuple[int, int],
                    experiment_dir: str, global_step: tf.Variable) -> ClassificationEval:
    """Top-1/top-5 evaluation of the classifier, averaged over evaluator_options' scales and flips."""
    del descriptor  # The classes come from the model.
    return ClassificationEval(strategy, model, config.eval_dataset_options.batch_size, crop_size, experiment_dir,
                              global_step, scales=config_utils.eval_scales(config.evaluator_options),
                              flip=config.evaluator_options.add_flipped_images)

"""What a trainer task provides: the protocol `train_lib` drives every task through.

A task is a module (trainer/panoptic_task.py, trainer/classification_task.py) with the three members below;
`train_lib` picks it by the task of the backbone's registry entry (`registry.model_task`: 'panoptic' or
'classification'), builds the model and optimizer itself, and asks the task for the rest. Adding a task is a module
following `Task` and an entry in train_lib's task table.
"""

from typing import Callable, Dict, Protocol, Sequence, Tuple, runtime_checkable

import keras
import tensorflow as tf

from deeplab_axial.data.dataset import DatasetDescriptor
from deeplab_axial.protos import config_pb2
from trainer.controller import Evaluator

# One training batch (the input pipeline's dict) -> per-example losses [batch] by name.
LossFn = Callable[[Dict[str, tf.Tensor]], Dict[str, tf.Tensor]]


@runtime_checkable
class Task(Protocol):
    """A trainer task: its loss and its evaluation, from the experiment config."""

    OUTPUT_KEYS: Sequence[str]
    """The names the loss function returns, logged by the controller; the first is common.TOTAL_LOSS, the one
    trained on."""

    def make_loss_fn(self, config: config_pb2.ExperimentOptions, descriptor: DatasetDescriptor,
                     model: keras.Model) -> LossFn:
        """The loss of `model` (called with training=True) on a batch, as configured by
        trainer_options.loss_options; per-example values, which the train step averages over the global batch.

        Args:
          config: the validated experiment config.
          descriptor: the training dataset.
          model: the model built from the config, inside the strategy's scope.
        """

    def build_evaluator(self, config: config_pb2.ExperimentOptions, descriptor: DatasetDescriptor,
                        strategy: tf.distribute.Strategy, model: keras.Model, crop_size: Tuple[int, int],
                        experiment_dir: str, global_step: tf.Variable) -> Evaluator:
        """The controller's evaluator (reset / update per eval batch / result) of `model` on the eval dataset.

        Args:
          config: the validated experiment config (evaluator_options, eval_dataset_options).
          descriptor: the eval dataset.
          strategy: the strategy the model was built under; evaluation runs on all its replicas.
          model: the model, called with training=False.
          crop_size: (height, width) of the eval batches, the model's static input size.
          experiment_dir: where the evaluator writes eval_results.json, summaries and predictions.
          global_step: the controller's step variable, naming each evaluation pass.
        """

"""A full training step (model forward/backward, Panoptic-DeepLab or classification loss, RAdam + Lookahead update)
on random data, shared by benchmarks/train_step.py and benchmarks/gpu_train_axial_deeplab_l.py.

The step is trainer/train_step.make_train_step_fn, the one the trainer runs, called without a distribution strategy
(one device).
"""

import time
from typing import Callable, Dict, List, Tuple, Union

import keras
import numpy as np
import tensorflow as tf

from deeplab_axial import common
from deeplab_axial.model import registry
from deeplab_axial.model.loss.classification_loss import classification_loss
from deeplab_axial.model.loss.panoptic_deeplab_loss import PanopticDeepLabLoss
from deeplab_axial.protos import trainer_pb2
from trainer import optimizer_builder
from trainer import train_step


def _size(crop: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    return (crop, crop) if isinstance(crop, int) else tuple(crop)


def random_batch(task: str, batch: int, crop: Union[int, Tuple[int, int]], num_classes: int,
                 seed: int = 0) -> Dict[str, tf.Tensor]:
    """Random images and targets with the input pipeline's keys and dtypes; `crop` is a size or (height, width)."""
    rng = np.random.default_rng(seed)
    height, width = _size(crop)
    inputs = {common.IMAGE: rng.uniform(0, 255, (batch, height, width, 3)).astype(np.float32)}
    if task == common.TASK_CLASSIFICATION:
        inputs[common.GT_CLASS_LABEL_KEY] = rng.integers(0, num_classes, (batch,)).astype(np.int32)
    else:
        shape = (batch, height, width)
        inputs.update({
            common.GT_SEMANTIC_KEY: rng.integers(0, num_classes, shape).astype(np.int32),
            common.GT_INSTANCE_CENTER_KEY: rng.uniform(0, 1, shape).astype(np.float32),
            common.GT_INSTANCE_REGRESSION_KEY: rng.normal(0, 10, shape + (2,)).astype(np.float32),
            common.SEMANTIC_LOSS_WEIGHT_KEY: np.ones(shape, np.float32),
            common.CENTER_LOSS_WEIGHT_KEY: np.ones(shape, np.float32),
            common.REGRESSION_LOSS_WEIGHT_KEY: np.ones(shape, np.float32)})
    return {k: tf.constant(v) for k, v in inputs.items()}


def make_train_step(model_name: str, batch: int, crop: Union[int, Tuple[int, int]], jit_compile: bool,
                    policy: str = 'float32', **model_overrides) -> Tuple[Callable[[], Dict[str, tf.Tensor]],
                                                                         keras.Model]:
    """Builds the model (registry overrides `model_overrides`) at [batch, height, width, 3] and returns
    (run_one_step, model); `crop` is a size or (height, width)."""
    optimizer_builder.set_mixed_precision_policy(policy)
    task = registry.model_task(model_name)
    model = registry.build_model(model_name, **model_overrides)
    model.build((batch,) + _size(crop) + (3,))
    num_classes = model.num_classes
    solver = trainer_pb2.SolverOptions(optimizer='radam', use_lookahead=True, base_learning_rate=1e-4,
                                       training_number_of_steps=100000)
    optimizer = optimizer_builder.build_optimizer(solver, mixed_precision_policy=policy)
    if task == common.TASK_CLASSIFICATION:
        def loss_fn(inputs):
            logits = model(inputs[common.IMAGE], training=True)[common.PRED_LOGITS_KEY]
            loss = classification_loss(inputs[common.GT_CLASS_LABEL_KEY], logits, 0.1)
            return {common.TOTAL_LOSS: loss}
    else:
        panoptic_loss = PanopticDeepLabLoss(ignore_label=255)

        def loss_fn(inputs):
            return panoptic_loss(inputs, model(inputs[common.IMAGE], training=True))
    step = tf.function(train_step.make_train_step_fn(loss_fn, model.trainable_variables, optimizer, batch,
                                                     weight_decay=1e-4), jit_compile=jit_compile)
    inputs = random_batch(task, batch, crop, num_classes)
    return lambda: step(inputs), model


def time_steps(run_step: Callable[[], Dict[str, tf.Tensor]], steps: int) -> Tuple[float, List[float]]:
    """(seconds of the first step, including tracing/compilation; seconds of each following step)."""
    t0 = time.perf_counter()
    float(run_step()[common.TOTAL_LOSS])
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = float(run_step()[common.TOTAL_LOSS])
        times.append(time.perf_counter() - t0)
        if not np.isfinite(loss):
            raise FloatingPointError(f'non-finite loss {loss}')
    return first, times

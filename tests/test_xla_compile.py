"""The trainer's whole training step (forward, Panoptic-DeepLab loss, gradients, weight decay, clipping, optimizer
update) and evaluation step (model and post-processing) of the tiny config compile with XLA on the CPU, as TPUs
require: `jit_compile=True` refuses any op without an XLA kernel (host-only ops such as py_function, string or
print ops)."""

import os

import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial import common
from deeplab_axial import config_utils
from deeplab_axial.data import targets
from deeplab_axial.model import builder
from deeplab_axial.inference import inference_path
from evaluation.synthetic_panoptic import random_panoptic_pair
from trainer import optimizer_builder
from trainer import panoptic_task
from trainer import train_step

pytestmark = pytest.mark.slow

_CROP = 33
_TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', 'synthetic',
                     'axial_deeplab_tiny.textproto')


@pytest.fixture(scope='module')
def tiny():
    config = config_utils.load_config(_TINY, params={'DATA_DIR': '/unused'})
    config.trainer_options.solver_options.use_gradient_clipping = True
    config.trainer_options.solver_options.weight_decay = 1e-4
    config.trainer_options.solver_options.warmup_steps = 0  # a non-zero learning rate at the first step
    descriptor = config_utils.validate(config)['train']
    model = builder.build_model(config, descriptor)
    model.build((None, _CROP, _CROP, 3))
    return config, descriptor, model


def _batch(descriptor, size: int = 2) -> dict:
    """Images and the input pipeline's training targets of random panoptic labels."""
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(size):
        label, _, _ = random_panoptic_pair(rng, descriptor, _CROP, _CROP, 8)
        sample = targets.generate_panoptic_targets(
            tf.constant(label), label_divisor=descriptor.panoptic_label_divisor, ignore_label=descriptor.ignore_label,
            thing_classes=descriptor.thing_classes, sigma=2.0)
        sample[common.IMAGE] = tf.constant(rng.uniform(0, 255, (_CROP, _CROP, 3)), tf.float32)
        samples.append(sample)
    return {k: tf.stack([s[k] for s in samples]) for k in samples[0]}


def test_train_step_compiles_with_xla(tiny):
    config, descriptor, model = tiny
    solver = config.trainer_options.solver_options
    optimizer = optimizer_builder.build_optimizer(solver)
    loss_fn = panoptic_task.make_loss_fn(config, descriptor, model)
    variables = model.trainable_variables
    step = train_step.make_train_step_fn(loss_fn, variables, optimizer, 2, weight_decay=solver.weight_decay,
                                         clip_norm=solver.clip_gradient_norm)
    batch = _batch(descriptor)
    before = [v.numpy() for v in variables]
    with tf.GradientTape() as tape:
        eager_loss = tf.reduce_mean(loss_fn(batch)[common.TOTAL_LOSS])
        total = eager_loss + optimizer_builder.weight_decay_loss(variables, solver.weight_decay)
    gradients = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(total, variables)]

    outputs = tf.function(step, jit_compile=True)(batch)

    # The compiled step computed the loss of the weights it started from ...
    assert float(outputs[common.TOTAL_LOSS] - outputs['weight_decay_loss']) == pytest.approx(float(eager_loss),
                                                                                         rel=1e-3)
    assert int(optimizer.iterations.numpy()) == 1
    # ... and applied Adam's first update, -lr * g / (|g| + epsilon / sqrt(1 - beta_2)) for the clipped gradient g,
    # checked where g is well above that epsilon (below it, rounding differences between the eager and the
    # compiled gradient matter).
    scale = min(1.0, solver.clip_gradient_norm / np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2))
                                                            for g in gradients)))
    epsilon = solver.adam_epsilon / np.sqrt(1.0 - solver.adam_beta_2)
    checked = 0
    for gradient, old, variable in zip(gradients, before, variables):
        clipped = scale * gradient.astype(np.float64)
        large = np.abs(clipped) > 100 * epsilon
        expected = -solver.base_learning_rate * clipped / (np.abs(clipped) + epsilon)
        np.testing.assert_allclose((variable.numpy() - old)[large], expected[large], rtol=1e-3, atol=1e-6,
                                   err_msg=variable.path)
        checked += int(large.sum())
    assert checked > 10000


def test_eval_step_compiles_with_xla(tiny):
    config, descriptor, model = tiny
    post_processor = builder.build_post_processor(config, descriptor)
    images = _batch(descriptor)[common.IMAGE]

    def predict(x):
        return inference_path.panoptic_predictions(model, post_processor, x)

    eager, compiled = predict(images), tf.function(predict, jit_compile=True)(images)
    np.testing.assert_allclose(compiled[common.PRED_SEMANTIC_PROBS_KEY], eager[common.PRED_SEMANTIC_PROBS_KEY],
                               atol=1e-4)
    assert compiled[common.PRED_PANOPTIC_KEY].shape == (2, _CROP, _CROP)
    agree = np.mean(compiled[common.PRED_PANOPTIC_KEY].numpy() == eager[common.PRED_PANOPTIC_KEY].numpy())
    assert agree > 0.99

"""Initialisation from an initial checkpoint: item selection, last-layer dropping, clear errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial import common
from deeplab_axial.protos import model_pb2
from trainer import checkpoint_utils


def _items(seed: int, classes: int = 3) -> dict:
    def dense(units, inputs):
        layer = keras.layers.Dense(units, kernel_initializer=keras.initializers.RandomNormal(seed=seed))
        layer.build((None, inputs))
        return layer
    return {common.CKPT_ENCODER: dense(4, 2), common.CKPT_DECODER: dense(4, 4),
            common.CKPT_SEMANTIC_LAST_LAYER: dense(classes, 4)}


def _save(tmp_path, items) -> str:
    return tf.train.Checkpoint(**items, optimizer=keras.optimizers.SGD()).write(str(tmp_path / 'init' / 'ckpt'))


def test_restores_all_items_and_skips_the_optimizer(tmp_path):
    source = _items(seed=1)
    prefix = _save(tmp_path, source)
    target = _items(seed=2)
    checkpoint_utils.make_init_fn(model_pb2.ModelOptions(initial_checkpoint=prefix), target)()
    for name in source:
        np.testing.assert_array_equal(target[name].kernel.numpy(), source[name].kernel.numpy())


def test_folder_and_dropped_last_layer_with_other_class_count(tmp_path):
    source = _items(seed=1)
    _save(tmp_path, source)
    tf.train.CheckpointManager(tf.train.Checkpoint(**source), str(tmp_path / 'run'), 1).save()
    target = _items(seed=2, classes=5)
    before = target[common.CKPT_SEMANTIC_LAST_LAYER].kernel.numpy()
    options = model_pb2.ModelOptions(initial_checkpoint=str(tmp_path / 'run'),
                                     restore_semantic_last_layer_from_initial_checkpoint=False)
    checkpoint_utils.make_init_fn(options, target)()
    np.testing.assert_array_equal(target[common.CKPT_ENCODER].kernel.numpy(),
                                  source[common.CKPT_ENCODER].kernel.numpy())
    np.testing.assert_array_equal(target[common.CKPT_SEMANTIC_LAST_LAYER].kernel.numpy(), before)


def test_backbone_only_checkpoint_leaves_the_rest(tmp_path):
    source = _items(seed=1)
    prefix = tf.train.Checkpoint(**{common.CKPT_ENCODER: source[common.CKPT_ENCODER]}).write(
        str(tmp_path / 'backbone'))
    target = _items(seed=2)
    decoder = target[common.CKPT_DECODER].kernel.numpy()
    checkpoint_utils.make_init_fn(model_pb2.ModelOptions(initial_checkpoint=prefix), target)()
    np.testing.assert_array_equal(target[common.CKPT_ENCODER].kernel.numpy(),
                                  source[common.CKPT_ENCODER].kernel.numpy())
    np.testing.assert_array_equal(target[common.CKPT_DECODER].kernel.numpy(), decoder)


def test_mismatched_class_count_without_dropping_is_an_error(tmp_path):
    prefix = _save(tmp_path, _items(seed=1))
    with pytest.raises(ValueError, match='semantic_last_layer'):
        checkpoint_utils.make_init_fn(model_pb2.ModelOptions(initial_checkpoint=prefix), _items(2, classes=5))()


def test_unrelated_or_missing_checkpoint_is_an_error(tmp_path):
    prefix = tf.train.Checkpoint(other=tf.Variable(1.0)).write(str(tmp_path / 'other'))
    with pytest.raises(ValueError, match="holds none of .* top-level items are .*'other'"):
        checkpoint_utils.make_init_fn(model_pb2.ModelOptions(initial_checkpoint=prefix), _items(1))()
    with pytest.raises(ValueError, match='is not a checkpoint'):
        checkpoint_utils.make_init_fn(model_pb2.ModelOptions(initial_checkpoint=str(tmp_path / 'nope')),
                                      _items(1))()


def test_no_initial_checkpoint_is_a_no_op():
    items = _items(1)
    kernel = items[common.CKPT_ENCODER].kernel.numpy()
    checkpoint_utils.make_init_fn(model_pb2.ModelOptions(), items)()
    np.testing.assert_array_equal(items[common.CKPT_ENCODER].kernel.numpy(), kernel)

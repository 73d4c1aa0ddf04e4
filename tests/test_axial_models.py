"""Axial-ResNet encoders, Axial-DeepLab and the classifier: shapes, parameter counts, checkpoints, serialization."""

import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial import common
from deeplab_axial.model import registry
from deeplab_axial.model.deeplab import normalize_image
from deeplab_axial.model.encoder.axial_resnet import AxialResNet


def _count(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


def _built(name, size=(65, 65), **overrides):
    model = registry.build_model(name, **overrides)
    model.build((None,) + tuple(size) + (3,))
    return model


def _images(rng, batch, height, width):
    return tf.constant(rng.uniform(0, 255, (batch, height, width, 3)).astype(np.float32))


def test_unknown_name_lists_the_registered_names():
    with pytest.raises(ValueError, match='axial_deeplab_l.*axial_resnet_s'):
        registry.build_model('axial_deeplab_q')


def test_unknown_override_is_named():
    with pytest.raises(ValueError, match='spann'):
        registry.build_model('axial_deeplab_s', spann=33)


def test_registry_has_every_paper_variant():
    names = set(registry.model_names())
    for size in ('s', 'm', 'l', 'xl'):
        assert {f'axial_resnet_{size}', f'full_axial_resnet_{size}', f'axial_deeplab_{size}'} <= names
    assert {'axial_resnet_26_s', 'axial_deeplab_tiny'} <= names
    assert registry.model_task('axial_deeplab_tiny') == common.TASK_PANOPTIC
    assert registry.model_task('axial_resnet_s') == common.TASK_CLASSIFICATION


# deeplab2's own golden counts (axial_resnet_instances_test.py; trainable, no head): an independent check of our
# block and stem layout. They use a 64-channel stem at every width and no max-pool.
@pytest.mark.parametrize('stem, width, expected', [('conv', 0.5, 11466912), ('inception', 1.0, 43841920)])
def test_encoder_matches_deeplab2_parameter_counts(stem, width, expected):
    encoder = AxialResNet(stem=stem, stem_pool=False, width_multiplier=width, stem_width_multiplier=1.0,
                          output_stride=16)
    encoder.build((None, 224, 224, 3))
    assert _count(encoder.trainable_weights) == expected


# The paper's parameter counts (Table 1 for the ImageNet models, Table 6 for Cityscapes), within 4%.
@pytest.mark.parametrize('name, paper', [('axial_deeplab_s', 12.1e6), ('axial_deeplab_m', 25.9e6),
                                         ('axial_deeplab_l', 44.9e6), ('axial_resnet_s', 12.4e6),
                                         ('full_axial_resnet_s', 12.5e6)])
def test_parameter_counts_match_the_paper(name, paper):
    model = _built(name, size=(33, 33))
    assert abs(_count(model.weights) / paper - 1) < 0.04


@pytest.mark.parametrize('height, width', [(513, 1025), (257, 131)])
def test_deeplab_output_shapes_at_odd_sizes_graph_only(height, width):
    model = registry.build_model('axial_deeplab_s', width_multiplier=0.125, stem_width_multiplier=0.125)
    model.build((1, height, width, 3))
    function = tf.function(lambda images: model(images, training=False))
    outputs = function.get_concrete_function(tf.TensorSpec([2, height, width, 3], tf.float32)).structured_outputs
    assert outputs[common.PRED_SEMANTIC_LOGITS_KEY].shape == (2, height, width, 19)
    assert outputs[common.PRED_CENTER_HEATMAP_KEY].shape == (2, height, width)
    assert outputs[common.PRED_OFFSET_MAP_KEY].shape == (2, height, width, 2)
    assert all(t.dtype == tf.float32 for t in outputs.values())


@pytest.mark.parametrize('stem, stem_pool, output_stride', [('conv', True, 32), ('inception', True, 16),
                                                              ('inception', False, 16), ('axial', False, 32)])
def test_encoder_features_follow_feature_info(rng, stem, stem_pool, output_stride):
    encoder = AxialResNet(stem=stem, stem_pool=stem_pool, width_multiplier=0.125, stem_width_multiplier=0.25,
                          blocks_per_stage=[1, 1, 1, 1], output_stride=output_stride, span=5, stem_span=5)
    features = encoder(rng.normal(size=(1, 45, 67, 3)).astype(np.float32))
    assert list(features) == [common.RES2, common.RES3, common.RES4, common.RES5]
    for key, info in encoder.feature_info.items():
        assert features[key].shape == (1, math.ceil(45 / info['stride']), math.ceil(67 / info['stride']),
                                       info['channels'])
    assert encoder.feature_info[common.RES5]['stride'] == output_stride
    assert encoder.feature_info[common.RES2] == dict(channels=32, stride=4)


def test_tiny_deeplab_trains_on_odd_crops(rng):
    model = _built('axial_deeplab_tiny', size=(49, 65))
    images = _images(rng, 2, 49, 65)
    with tf.GradientTape() as tape:
        outputs = model(images, training=True)
        loss = sum(tf.reduce_mean(tf.square(v)) for v in outputs.values())
    assert outputs[common.PRED_SEMANTIC_LOGITS_KEY].shape == (2, 49, 65, 19)
    assert outputs[common.PRED_CENTER_HEATMAP_KEY].shape == (2, 49, 65)
    assert outputs[common.PRED_OFFSET_MAP_KEY].shape == (2, 49, 65, 2)
    grads = tape.gradient(loss, model.trainable_weights)
    missing = [v.path for v, g in zip(model.trainable_weights, grads) if g is None]
    assert not missing
    assert all(np.isfinite(tf.convert_to_tensor(g).numpy()).all() for g in grads)


def test_offsets_are_rescaled_to_input_pixels(rng):
    model = _built('axial_deeplab_tiny', size=(65, 97))
    offset_conv = model.instance_last_layer.offset
    offset_conv.kernel.assign(np.zeros(offset_conv.kernel.shape, np.float32))
    offset_conv.bias.assign(np.array([1.0, 2.0], np.float32))  # (dy, dx) = (1, 2) pixels at stride 4
    offsets = model(_images(rng, 1, 65, 97))[common.PRED_OFFSET_MAP_KEY].numpy()
    # Stride-4 map of 17 x 25; align_corners stretches 16 -> 64 and 24 -> 96 pixels: a factor 4 on both axes.
    np.testing.assert_allclose(offsets[..., 0], 4.0, rtol=1e-6)
    np.testing.assert_allclose(offsets[..., 1], 8.0, rtol=1e-6)


def test_classifier_logits(rng):
    model = registry.build_model('axial_resnet_26_s', width_multiplier=0.125, stem_width_multiplier=0.125,
                                 num_classes=7)
    logits = model(_images(rng, 2, 35, 35))[common.PRED_LOGITS_KEY]
    assert logits.shape == (2, 7) and logits.dtype == tf.float32
    assert set(model.checkpoint_items) == {common.CKPT_ENCODER, common.CKPT_CLASSIFICATION_HEAD}


def test_classifier_dropout_acts_in_training_only(rng):
    images = _images(rng, 2, 33, 33)
    kwargs = dict(width_multiplier=0.125, stem_width_multiplier=0.125, num_classes=5)
    plain = _built('axial_resnet_26_s', size=(33, 33), **kwargs)
    dropped = _built('axial_resnet_26_s', size=(33, 33), dropout_rate=0.5, **kwargs)
    dropped.set_weights(plain.get_weights())
    np.testing.assert_array_equal(dropped(images)[common.PRED_LOGITS_KEY].numpy(),
                                  plain(images)[common.PRED_LOGITS_KEY].numpy())
    # Batch statistics make training mode deterministic without dropout; with it, two steps draw two masks.
    first, second = (plain(images, training=True)[common.PRED_LOGITS_KEY].numpy() for _ in range(2))
    np.testing.assert_array_equal(first, second)
    first, second = (dropped(images, training=True)[common.PRED_LOGITS_KEY].numpy() for _ in range(2))
    assert np.abs(first - second).max() > 1e-3
    assert dropped.get_config()['dropout_rate'] == 0.5
    # Under mixed precision the pooled features reach the float32 head unrounded (integer pixels: exact in bfloat16,
    # to which Keras casts the model's inputs).
    images = tf.round(images)
    keras.config.set_dtype_policy('mixed_bfloat16')
    try:
        mixed = _built('axial_resnet_26_s', size=(33, 33), dropout_rate=0.5, **kwargs)
        mixed.set_weights(plain.get_weights())
        logits = mixed(images)[common.PRED_LOGITS_KEY]
        features = mixed.encoder(normalize_image(images, mixed.compute_dtype))[common.RES5]
    finally:
        keras.config.set_dtype_policy('float32')
    pooled = tf.reduce_mean(tf.cast(features, tf.float32), axis=[1, 2])
    np.testing.assert_allclose(logits.numpy(), mixed.classification_head(pooled).numpy(), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match='dropout_rate'):
        registry.build_model('axial_resnet_26_s', dropout_rate=1.0)
    with pytest.raises(ValueError, match='dropout_rate'):
        registry.build_model('axial_deeplab_tiny', dropout_rate=0.1)  # Panoptic models have no classifier.


_REPLICA_DROPOUT_SCRIPT = """
import sys, numpy as np, tensorflow as tf
sys.path.insert(0, {repo!r})
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from deeplab_axial import common
from deeplab_axial.model import registry
strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
with strategy.scope():
    model = registry.build_model('axial_resnet_26_s', width_multiplier=0.125, stem_width_multiplier=0.125,
                                 num_classes=5, dropout_rate=0.5)
    model.build((None, 33, 33, 3))
images = tf.constant(np.random.default_rng(0).uniform(0, 255, (2, 33, 33, 3)), tf.float32)
step = tf.function(lambda: strategy.run(lambda: model(images, training=True)[common.PRED_LOGITS_KEY]))
first, second = (r.numpy() for r in strategy.experimental_local_results(step()))
print('DIFFERENCE', float(np.abs(first - second).max()))
"""


def test_each_replica_draws_its_own_dropout_mask():
    """Same images on two replicas: with one mask for both (a mirrored seed) their training logits would agree."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, '-c', _REPLICA_DROPOUT_SCRIPT.format(repo=repo)], capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
    assert out.returncode == 0, out.stderr[-3000:]
    assert float(out.stdout.split('DIFFERENCE')[1]) > 1e-3


def test_checkpoint_variable_paths_are_pinned():
    paths = {v.path for v in _built('axial_deeplab_tiny').weights}
    for path in ['axial_deeplab_tiny/encoder/stem_conv1/conv/kernel',
                 'axial_deeplab_tiny/encoder/res2_block1/attention/height_axis/qkv_kernel',
                 'axial_deeplab_tiny/encoder/res2_block1/attention/height_axis/query_rpe',
                 'axial_deeplab_tiny/encoder/res3_block1/attention/width_axis/key_rpe',
                 'axial_deeplab_tiny/encoder/res5_block1/attention/width_axis/value_rpe',
                 'axial_deeplab_tiny/encoder/res4_block1/attention/height_axis/batch_norm_similarity/gamma',
                 'axial_deeplab_tiny/encoder/res2_block1/conv3/batch_norm/gamma',
                 'axial_deeplab_tiny/decoder/semantic_decoder/fusion1/depthwise/depthwise_conv/kernel',
                 'axial_deeplab_tiny/semantic_last_layer/kernel',
                 'axial_deeplab_tiny/instance_last_layer/center_last_layer/bias',
                 'axial_deeplab_tiny/instance_last_layer/offset_last_layer/kernel']:
        assert path in paths


def test_checkpoint_items_restore_without_the_last_layers(rng, tmp_path):
    source = _built('axial_deeplab_tiny')
    path = tf.train.Checkpoint(**source.checkpoint_items).save(str(tmp_path / 'ckpt'))
    target = _built('axial_deeplab_tiny', num_classes=5)
    items = target.checkpoint_items
    assert set(items) == {common.CKPT_ENCODER, common.CKPT_DECODER, common.CKPT_SEMANTIC_LAST_LAYER,
                          common.CKPT_INSTANCE_LAST_LAYER}
    items.pop(common.CKPT_SEMANTIC_LAST_LAYER)
    tf.train.Checkpoint(**items).restore(path).assert_existing_objects_matched()
    for mine, theirs in zip(target.encoder.weights + target.decoder.weights,
                            source.encoder.weights + source.decoder.weights):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())


def test_keras_save_and_load(rng, tmp_path):
    model = _built('axial_deeplab_tiny', size=(33, 41))
    images = _images(rng, 1, 33, 41)
    expected = model(images)
    model.save(tmp_path / 'tiny.keras')
    loaded = keras.saving.load_model(tmp_path / 'tiny.keras')
    got = loaded(images)
    for key in expected:
        np.testing.assert_allclose(got[key].numpy(), expected[key].numpy(), rtol=1e-5, atol=1e-5)
    assert loaded.get_config() == model.get_config()


@pytest.mark.parametrize('policy', ['mixed_bfloat16', 'mixed_float16'])
def test_mixed_precision_outputs_are_float32(rng, policy):
    keras.config.set_dtype_policy(policy)
    try:
        model = _built('axial_deeplab_tiny', size=(33, 33))
        outputs = model(_images(rng, 1, 33, 33), training=True)
    finally:
        keras.config.set_dtype_policy('float32')
    assert all(v.dtype == tf.float32 for v in outputs.values())
    assert all(np.isfinite(v.numpy()).all() for v in outputs.values())


def test_jit_compiled_forward_matches(rng):
    model = _built('axial_deeplab_tiny', size=(33, 49))
    images = _images(rng, 1, 33, 49)
    plain = model(images)
    compiled = tf.function(lambda x: model(x), jit_compile=True)(images)
    for key in plain:
        np.testing.assert_allclose(compiled[key].numpy(), plain[key].numpy(), rtol=1e-3, atol=1e-4)


def test_linear_drop_path_schedule():
    encoder = AxialResNet(stem='conv', width_multiplier=0.125, blocks_per_stage=[1, 1, 1, 1],
                          drop_path_keep_prob=0.6, drop_path_schedule='linear')
    keeps = [block.drop_path_keep_prob for stage in encoder.stages for block in stage]
    np.testing.assert_allclose(keeps, [0.9, 0.8, 0.7, 0.6])


def test_sync_batchnorm_reaches_every_batch_norm():
    model = registry.build_model('axial_deeplab_tiny', use_sync_batchnorm=True)
    model.build((None, 33, 33, 3))
    norms = [layer for layer in model._flatten_layers(include_self=False)
             if isinstance(layer, keras.layers.BatchNormalization) or hasattr(layer, 'synchronized')]
    assert norms and all(layer.synchronized for layer in norms)


def test_dynamic_image_size_is_rejected_clearly():
    model = _built('axial_deeplab_tiny', size=(33, 33))
    function = tf.function(lambda images: model(images))
    with pytest.raises(ValueError, match='static shape'):
        function.get_concrete_function(tf.TensorSpec([1, None, None, 3], tf.float32))

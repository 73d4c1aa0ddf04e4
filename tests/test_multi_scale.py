"""Tests of multi-scale / flipped inference against closed-form toy models."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial import common
from deeplab_axial.data import dataset
from deeplab_axial.inference import checkpoint_runner, multi_scale


def _per_pixel_model(images):
    """Semantic logits and heatmap from each pixel's colour alone; offsets point at the input's centre."""
    height, width = int(images.shape[1]), int(images.shape[2])
    x = images / 255.0
    logits = tf.stack([x[..., 0] * 3.0, x[..., 1] - x[..., 2], 1.0 - x[..., 0]], axis=-1)
    ys = tf.range(height, dtype=tf.float32)[:, None] * tf.ones([1, width])
    xs = tf.range(width, dtype=tf.float32)[None, :] * tf.ones([height, 1])
    offsets = tf.stack([(height - 1) / 2 - ys, (width - 1) / 2 - xs], axis=-1)
    batch = tf.shape(images)[0]
    return {common.PRED_SEMANTIC_LOGITS_KEY: logits, common.PRED_CENTER_HEATMAP_KEY: x[..., 1] * 2.0,
            common.PRED_OFFSET_MAP_KEY: tf.tile(offsets[None], [batch, 1, 1, 1]),
            common.PRED_LOGITS_KEY: tf.reduce_mean(logits, axis=[1, 2]), 'ignored': logits}


def _flat_image(rng, batch=2, size=16):
    colours = rng.uniform(0, 255, size=(batch, 1, 1, 3))
    return tf.constant(np.broadcast_to(colours, (batch, size, size, 3)), tf.float32)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_single_scale_is_the_model_with_probabilities(rng):
    images = tf.constant(rng.uniform(0, 255, size=(2, 8, 12, 3)), tf.float32)
    raw = _per_pixel_model(images)
    out = multi_scale.multi_scale_predict(_per_pixel_model, images)
    assert 'ignored' not in out
    np.testing.assert_allclose(out[common.PRED_SEMANTIC_PROBS_KEY],
                               _softmax(raw[common.PRED_SEMANTIC_LOGITS_KEY].numpy()), rtol=1e-5)
    np.testing.assert_allclose(tf.nn.softmax(out[common.PRED_SEMANTIC_LOGITS_KEY]),
                               out[common.PRED_SEMANTIC_PROBS_KEY], rtol=1e-5)
    np.testing.assert_allclose(out[common.PRED_CENTER_HEATMAP_KEY], raw[common.PRED_CENTER_HEATMAP_KEY], rtol=1e-6)
    np.testing.assert_allclose(out[common.PRED_OFFSET_MAP_KEY], raw[common.PRED_OFFSET_MAP_KEY], rtol=1e-6)


def test_scales_and_flip_keep_centre_offsets_in_input_pixels(rng):
    images = _flat_image(rng)
    out = multi_scale.multi_scale_predict(_per_pixel_model, images, scales=(0.5, 1.0), flip=True)
    ys, xs = np.meshgrid(np.arange(16), np.arange(16), indexing='ij')
    expected = np.stack([7.5 - ys, 7.5 - xs], -1)
    # Bilinear resizing reproduces a linear field exactly away from the clamped borders.
    np.testing.assert_allclose(out[common.PRED_OFFSET_MAP_KEY][:, 2:-2, 2:-2], np.broadcast_to(
        expected[2:-2, 2:-2], (2, 12, 12, 2)), atol=1e-4)
    # A flat image gives the same per-pixel outputs at every scale and flip.
    raw = _per_pixel_model(images)
    np.testing.assert_allclose(out[common.PRED_SEMANTIC_PROBS_KEY],
                               _softmax(raw[common.PRED_SEMANTIC_LOGITS_KEY].numpy()), rtol=1e-5)
    np.testing.assert_allclose(out[common.PRED_CENTER_HEATMAP_KEY], raw[common.PRED_CENTER_HEATMAP_KEY], rtol=1e-5)


def test_flip_averages_with_the_mirrored_prediction(rng):
    images = tf.constant(rng.uniform(0, 255, size=(1, 6, 10, 3)), tf.float32)
    out = multi_scale.multi_scale_predict(_per_pixel_model, images, flip=True)
    # A per-pixel colour model is flip-equivariant, so the average equals one run; offsets stay centre-pointing.
    raw = _per_pixel_model(images)
    np.testing.assert_allclose(out[common.PRED_CENTER_HEATMAP_KEY], raw[common.PRED_CENTER_HEATMAP_KEY], rtol=1e-5)
    np.testing.assert_allclose(out[common.PRED_OFFSET_MAP_KEY], raw[common.PRED_OFFSET_MAP_KEY], atol=1e-5)

    def left_biased(x):  # Heatmap = column index: mirrored run gives W-1-column, the average is constant.
        width = int(x.shape[2])
        cols = tf.range(width, dtype=tf.float32)[None, None, :] * tf.ones_like(x[..., 0])
        return {common.PRED_CENTER_HEATMAP_KEY: cols}

    averaged = multi_scale.multi_scale_predict(left_biased, images, flip=True)
    np.testing.assert_allclose(averaged[common.PRED_CENTER_HEATMAP_KEY], np.full((1, 6, 10), 4.5), rtol=1e-6)


def test_classification_logits_average_as_probabilities(rng):
    images = tf.constant(rng.uniform(0, 255, size=(2, 8, 8, 3)), tf.float32)
    calls = iter([np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), np.array([[0.0, 0.0, 2.0], [0.0, 1.0, 0.0]])])

    def model(x):
        return {common.PRED_LOGITS_KEY: tf.constant(next(calls), tf.float32)}

    out = multi_scale.multi_scale_predict(model, images, scales=(1.0, 0.5))
    expected = (_softmax(np.array([[2.0, 0, 0], [0, 1.0, 0]])) + _softmax(np.array([[0, 0, 2.0], [0, 1.0, 0]]))) / 2
    np.testing.assert_allclose(tf.nn.softmax(out[common.PRED_LOGITS_KEY]), expected, rtol=1e-5)


def test_bad_scales_raise():
    with pytest.raises(ValueError, match='scales'):
        multi_scale.multi_scale_predict(_per_pixel_model, tf.zeros([1, 4, 4, 3]), scales=(0.0,))


def test_checkpoint_runner_post_processes_and_ranks_top5(rng):
    descriptor = dataset.get('synthetic_panoptic')

    def post_process(raw):
        semantic = tf.argmax(raw[common.PRED_SEMANTIC_PROBS_KEY], axis=-1, output_type=tf.int32)
        return {common.PRED_PANOPTIC_KEY: semantic * descriptor.panoptic_label_divisor}

    images = [rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8) for _ in range(3)]
    runner = checkpoint_runner.CheckpointRunner(_per_pixel_model, post_process, descriptor, common.TASK_PANOPTIC,
                                                'toy', scales=(1.0,), flip=True)
    out = runner(images)
    logits = _per_pixel_model(tf.constant(np.stack(images), tf.float32))[common.PRED_SEMANTIC_LOGITS_KEY].numpy()
    np.testing.assert_array_equal(out[common.PRED_PANOPTIC_KEY], logits.argmax(-1) * 256)
    assert out[common.PRED_OFFSET_MAP_KEY].shape == (3, 8, 8, 2)

    def classifier(x):
        return {common.PRED_LOGITS_KEY: tf.tile(tf.constant([[0.0, 3.0, 1.0, 2.0, -1.0, 0.5]]), [tf.shape(x)[0], 1])}

    top = checkpoint_runner.CheckpointRunner(classifier, None, dataset.get('synthetic_classification'),
                                             common.TASK_CLASSIFICATION, 'toy')(images)
    assert top[common.PRED_TOP5_CLASSES_KEY].tolist() == [[1, 3, 2, 5, 0]] * 3
    assert top[common.PRED_TOP5_CLASSES_KEY].dtype == np.int32

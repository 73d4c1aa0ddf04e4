"""Tests of multi-scale / flipped inference against closed-form toy models."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial import common
from deeplab_axial.data import dataset
from deeplab_axial.inference import checkpoint_runner, multi_scale
from deeplab_axial.inference import inference_path
from deeplab_axial.model.post_processor.panoptic_deeplab import PostProcessor


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
    # Bilinear resizing with align_corners reproduces a linear field exactly, borders included: at scale 0.5 the
    # model sees 8 x 8 and points at its centre 3.5, which is 7.5 in input pixels.
    np.testing.assert_allclose(out[common.PRED_OFFSET_MAP_KEY], np.broadcast_to(expected, (2, 16, 16, 2)),
                               atol=1e-4)
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


def _recording(model, sizes):
    def run(images):
        sizes.append(tuple(int(s) for s in images.shape[1:3]))
        return model(images)
    return run


def test_scaled_size_keeps_stride_aligned_crops():
    # deeplab2's rule, floor((size - 1) * scale) + 1: 16k + 1 crops stay 16k' + 1 at the usual scales.
    assert [multi_scale.scaled_size(1025, s) for s in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)] == [
        513, 769, 1025, 1281, 1537, 1793]
    assert multi_scale.scaled_size(2049, 0.5) == 1025
    assert multi_scale.scaled_size(8, 1.25) == 9  # 7 * 1.25 = 8.75, rounded down.
    assert multi_scale.scaled_size(17, 0.01) == 1


def test_flip_negates_dx_and_flips_back(rng, constant_offset_model):
    images = tf.constant(rng.uniform(0, 255, (2, 9, 11, 3)), tf.float32)
    single = multi_scale.multi_scale_predict(constant_offset_model, images)
    flipped = multi_scale.multi_scale_predict(constant_offset_model, images, flip=True)
    # The pointwise model gives the same maps on the flipped image once flipped back; dx averages 2 and -2 to 0.
    np.testing.assert_allclose(flipped[common.PRED_SEMANTIC_PROBS_KEY], single[common.PRED_SEMANTIC_PROBS_KEY],
                               atol=1e-6)
    np.testing.assert_allclose(flipped[common.PRED_CENTER_HEATMAP_KEY], images[..., 0] / 255.0, atol=1e-6)
    np.testing.assert_allclose(flipped[common.PRED_OFFSET_MAP_KEY][..., 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(flipped[common.PRED_OFFSET_MAP_KEY][..., 1], 0.0, atol=1e-6)
    np.testing.assert_allclose(single[common.PRED_SEMANTIC_PROBS_KEY], _softmax(images.numpy() / 50.0), atol=1e-6)

    def column_offsets(x):  # dx = the column index in the model's own pixels, dy = 0.
        columns = tf.range(int(x.shape[2]), dtype=tf.float32)[None, None, :] * tf.ones_like(x[..., 0])
        return {common.PRED_OFFSET_MAP_KEY: tf.stack([tf.zeros_like(columns), columns], -1)}

    # The mirrored run gives W - 1 - c at column c once flipped back, negated: the mean is c - (W - 1) / 2. A
    # missing flip-back would give 0, a missing negation (W - 1) / 2.
    averaged = multi_scale.multi_scale_predict(column_offsets, images, flip=True)[common.PRED_OFFSET_MAP_KEY]
    np.testing.assert_allclose(averaged[..., 1], np.broadcast_to(np.arange(11) - 5.0, (2, 9, 11)), atol=1e-5)
    np.testing.assert_allclose(averaged[..., 0], 0.0, atol=1e-6)


def test_offsets_are_rescaled_to_input_pixels(constant_offset_model):
    images = tf.fill([1, 17, 33, 3], 100.0)
    sizes = []
    out = multi_scale.multi_scale_predict(_recording(constant_offset_model, sizes), images, scales=(0.5, 2.0))
    assert sizes == [(9, 17), (33, 65)]
    assert out[common.PRED_SEMANTIC_PROBS_KEY].shape == (1, 17, 33, 3)
    # align_corners: at scale 0.5 one model pixel is 16/8 (y) and 32/16 (x) input pixels; at 2.0, 16/32 and 32/64.
    dy = (1.0 * 2.0 + 1.0 * 0.5) / 2
    dx = (2.0 * 2.0 + 2.0 * 0.5) / 2
    np.testing.assert_allclose(out[common.PRED_OFFSET_MAP_KEY][..., 0], dy, rtol=1e-5)
    np.testing.assert_allclose(out[common.PRED_OFFSET_MAP_KEY][..., 1], dx, rtol=1e-5)
    np.testing.assert_allclose(out[common.PRED_CENTER_HEATMAP_KEY], 100.0 / 255.0, rtol=1e-5)


def test_post_processing_of_the_average_compiles_with_xla(rng, constant_offset_model):
    images = tf.constant(rng.uniform(0, 255, (1, 17, 21, 3)), tf.float32)
    pp = PostProcessor(num_classes=3, label_divisor=100, ignore_label=0, thing_classes=(1,), keep_k_centers=5)

    def infer(x):
        return pp(multi_scale.multi_scale_predict(constant_offset_model, x, scales=(0.75, 1.0), flip=True))

    eager, compiled = infer(images), tf.function(infer, jit_compile=True)(images)
    for key in (common.PRED_PANOPTIC_KEY, common.PRED_INSTANCE_KEY):
        np.testing.assert_array_equal(compiled[key].numpy(), eager[key].numpy())
    assert compiled[common.PRED_PANOPTIC_KEY].shape == (1, 17, 21)


def test_panoptic_predictions_average_scales_and_flips_in_inference_mode(rng):
    images = tf.constant(rng.uniform(0, 255, (2, 9, 13, 3)), tf.float32)
    calls = []

    def model(x, training):
        calls.append((tuple(int(s) for s in x.shape[1:3]), training))
        return _per_pixel_model(x)

    def post_process(raw):
        return {'probs': raw[common.PRED_SEMANTIC_PROBS_KEY], 'offsets': raw[common.PRED_OFFSET_MAP_KEY]}

    out = inference_path.panoptic_predictions(model, post_process, images, scales=(0.5, 1.5), flip=True)
    # (9 - 1) * 0.5 + 1 = 5, (13 - 1) * 0.5 + 1 = 7; at 1.5: 13 and 19; each scale plain and mirrored.
    assert calls == [((5, 7), False)] * 2 + [((13, 19), False)] * 2
    expected = multi_scale.multi_scale_predict(_per_pixel_model, images, scales=(0.5, 1.5), flip=True)
    np.testing.assert_allclose(out['probs'], expected[common.PRED_SEMANTIC_PROBS_KEY], rtol=1e-6)
    np.testing.assert_allclose(out['offsets'], expected[common.PRED_OFFSET_MAP_KEY], rtol=1e-6)
    # At scale 1 without flip the model's raw outputs go to post-processing as they are.
    calls.clear()
    single = inference_path.panoptic_predictions(model, lambda raw: raw, images)
    assert calls == [((9, 13), False)] and common.PRED_SEMANTIC_PROBS_KEY not in single


def test_checkpoint_runner_runs_every_scale_at_its_own_size(rng):
    """The fitted (evaluator's) path: images fitted into the input size, then each scale at its own size, larger
    than the input size too; classification images are centre-cropped to the input size first."""
    descriptor = dataset.get('synthetic_panoptic')
    sizes = []
    runner = checkpoint_runner.CheckpointRunner(
        _recording(_per_pixel_model, sizes), lambda raw: {common.PRED_PANOPTIC_KEY: tf.argmax(
            raw[common.PRED_SEMANTIC_PROBS_KEY], -1, output_type=tf.int32)}, descriptor, common.TASK_PANOPTIC,
        'toy', scales=(0.5, 1.25), input_size=(9, 13))
    image = rng.integers(0, 256, size=(7, 10, 3), dtype=np.uint8)  # Padded into 9 x 13, restored to 7 x 10.
    out = runner([image])
    assert sizes == [(5, 7), (11, 16)]
    assert out[common.PRED_PANOPTIC_KEY].shape == (1, 7, 10)
    # A flat image keeps its per-pixel class through padding, both scales and the restore, away from the padding.
    flat = np.broadcast_to(image[:1, :1], image.shape).copy()
    expected = np.argmax(_per_pixel_model(tf.constant(flat[None], tf.float32))[common.PRED_SEMANTIC_LOGITS_KEY], -1)
    np.testing.assert_array_equal(runner([flat])[common.PRED_PANOPTIC_KEY][:, :5, :7], expected[:, :5, :7])

    sizes.clear()
    classifier = checkpoint_runner.CheckpointRunner(
        _recording(_per_pixel_model, sizes), None, dataset.get('synthetic_classification'),
        common.TASK_CLASSIFICATION, 'toy', scales=(1.0, 1.5), flip=True, input_size=(8, 8))
    top = classifier([rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)])
    assert sizes == [(8, 8), (8, 8), (11, 11), (11, 11)]
    assert top[common.PRED_TOP5_CLASSES_KEY].shape == (1, 3)


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

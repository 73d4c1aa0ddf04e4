"""The shared eval/export inference path: fitting, padding like the eval pipeline, and restoring sizes."""

import numpy as np
import tensorflow as tf

from deeplab_axial import common
from deeplab_axial.data import preprocessing
from deeplab_axial.inference import inference_path


def test_small_image_is_padded_exactly_like_the_eval_pipeline(rng):
    image = rng.uniform(0, 255, (5, 7, 3)).astype(np.float32)
    label = np.zeros((5, 7), np.int32)
    padded, resized = inference_path.fit_to_input_size(image, (9, 11))
    expected, _ = preprocessing.preprocess_panoptic_eval(tf.constant(image), tf.constant(label), (9, 11), 0)
    np.testing.assert_array_equal(padded.numpy(), expected.numpy())
    np.testing.assert_array_equal(resized.numpy(), [5, 7])
    assert np.all(padded.numpy()[5:] == 127.5) and np.all(padded.numpy()[:, 7:] == 127.5)


def test_large_image_is_scaled_down_keeping_its_aspect():
    image = np.full((40, 20, 3), 200, np.uint8)
    padded, resized = inference_path.fit_to_input_size(image, (10, 10))
    np.testing.assert_array_equal(resized.numpy(), [10, 5])  # scale 0.25 on both axes
    np.testing.assert_allclose(padded.numpy()[:, :5], 200.0)
    np.testing.assert_array_equal(padded.numpy()[:, 5:], 127.5)


def test_scaling_down_aligns_corners_as_restoring_does():
    """A vertical ramp 0..39 fitted from 40 rows into 10: with corners aligned row i holds i * 39 / 9 (half-pixel
    centres would give 4 i + 1.5), so restore_to_image_size's align-corners resize maps it back onto the ramp."""
    image = np.repeat(np.arange(40, dtype=np.float32)[:, None, None], 3, axis=2).repeat(20, axis=1)
    padded, resized = inference_path.fit_to_input_size(image, (10, 10))
    np.testing.assert_allclose(padded.numpy()[:10, 0, 0], np.arange(10) * 39 / 9, atol=1e-4)
    back = inference_path.restore_to_image_size({common.PRED_SEMANTIC_PROBS_KEY: padded}, resized, [40, 20])
    np.testing.assert_allclose(back[common.PRED_SEMANTIC_PROBS_KEY].numpy()[:, 0, 0], np.arange(40), atol=1e-3)


def test_restore_crops_and_resizes_each_kind_of_output():
    panoptic = np.arange(16, dtype=np.int32).reshape(4, 4)
    offsets = np.ones((4, 4, 2), np.float32)
    predictions = {common.PRED_PANOPTIC_KEY: tf.constant(panoptic),
                   common.PRED_OFFSET_MAP_KEY: tf.constant(offsets),
                   common.PRED_CENTER_HEATMAP_KEY: tf.fill([4, 4], 0.5),
                   'other': tf.constant(3)}
    restored = inference_path.restore_to_image_size(predictions, [2, 2], [4, 6])
    # Nearest-neighbour upsampling (corners aligned, as deeplab2) of the valid 2x2 corner [[0, 1], [4, 5]] to 4x6.
    np.testing.assert_array_equal(restored[common.PRED_PANOPTIC_KEY].numpy(),
                                  [[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1], [4, 4, 4, 5, 5, 5], [4, 4, 4, 5, 5, 5]])
    assert restored[common.PRED_PANOPTIC_KEY].dtype == tf.int32
    # With corners aligned, one pixel at the resized size is (4 - 1) / (2 - 1) = 3 pixels (dy) and
    # (6 - 1) / (2 - 1) = 5 pixels (dx) at the image size.
    np.testing.assert_allclose(restored[common.PRED_OFFSET_MAP_KEY].numpy()[..., 0], 3.0)
    np.testing.assert_allclose(restored[common.PRED_OFFSET_MAP_KEY].numpy()[..., 1], 5.0)
    np.testing.assert_allclose(restored[common.PRED_CENTER_HEATMAP_KEY].numpy(), 0.5)
    assert restored['other'].numpy() == 3


def test_panoptic_predictions_runs_model_in_inference_mode_then_post_processing():
    calls = []

    def model(images, training):
        calls.append(training)
        return {'raw': images}

    out = inference_path.panoptic_predictions(model, lambda raw: {'post': raw['raw'] + 1}, tf.zeros([1, 2, 2, 3]))
    assert calls == [False]
    np.testing.assert_array_equal(out['post'].numpy(), np.ones([1, 2, 2, 3]))

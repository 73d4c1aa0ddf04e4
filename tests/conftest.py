"""Shared pytest set-up: quiet TensorFlow, deterministic seeds."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def constant_offset_model():
    """A pointwise panoptic model: logits from the colour, heatmap = red / 255, offsets (dy, dx) = (1, 2) pixels."""
    import tensorflow as tf  # Here, not at the top: conftest loads for tests that must run without TensorFlow.

    from deeplab_axial import common

    def model(images):
        shape = tf.shape(images)
        return {
            common.PRED_SEMANTIC_LOGITS_KEY: images / 50.0,
            common.PRED_CENTER_HEATMAP_KEY: images[..., 0] / 255.0,
            common.PRED_OFFSET_MAP_KEY: tf.ones([shape[0], shape[1], shape[2], 2]) * tf.constant([1.0, 2.0]),
        }
    return model

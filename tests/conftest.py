"""Shared pytest set-up: quiet TensorFlow, deterministic seeds, a full disk."""

import errno
import os
import subprocess
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state (Python, numpy, TensorFlow and Keras), whatever ran before it in
    the same worker process: weights drawn by Keras initialisers and drop-path masks do not depend on test order."""
    if 'keras' in sys.modules:  # a test without TensorFlow does not load it
        sys.modules['keras'].utils.set_random_seed(0)


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


@pytest.fixture
def small_filesystem(tmp_path):
    """A folder on an empty 64 KiB tmpfs, a disk that a bigger write fills up. Skips where mounting is not permitted
    (it needs root)."""
    mount_point = tmp_path / 'small'
    mount_point.mkdir()
    try:
        subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', str(mount_point)], check=True,
                       capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        pytest.skip('mounting a small tmpfs is not permitted here')
    yield mount_point
    subprocess.run(['umount', '-l', str(mount_point)], check=False, capture_output=True, timeout=30)


@pytest.fixture
def full_filesystem(small_filesystem):
    """`small_filesystem` filled to the last byte by a file `filler`: any write there fails with ENOSPC."""
    try:
        with open(small_filesystem / 'filler', 'wb') as f:
            while True:
                f.write(b'x' * 4096)
                f.flush()
    except OSError as e:
        assert e.errno == errno.ENOSPC
    return small_filesystem

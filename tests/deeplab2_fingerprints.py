"""The gradient fingerprint that tests/data/deeplab2/make_fixtures.py stores and test_deeplab2_agreement.py checks."""

import numpy as np


def gradient_projection(images_shape) -> dict:
    """The fixed weights of the scalar whose gradients are fingerprinted: sum(output * weight) per output."""
    batch, height, width, _ = images_shape
    rng = np.random.default_rng(2)
    return {'semantic_logits': rng.normal(size=(batch, height, width, 19)).astype(np.float32),
            'center_heatmap': rng.normal(size=(batch, height, width)).astype(np.float32),
            'offset_map': rng.normal(size=(batch, height, width, 2)).astype(np.float32)}


def fingerprint(gradient: np.ndarray) -> np.ndarray:
    """[norm, dot with sin(0, 1, 2, ...)] of a flattened gradient: order-sensitive and cheap to store."""
    flat = gradient.reshape(-1).astype(np.float64)
    return np.array([np.linalg.norm(flat), flat @ np.sin(np.arange(flat.size))])

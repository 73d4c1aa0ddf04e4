"""The gradient fingerprint that tests/data/deeplab2/make_fixtures.py stores and test_deeplab2_agreement.py checks."""

from typing import Dict, Mapping

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


def fingerprint_errors(model, variable_keys: Mapping[str, str], expected: Mapping[str, np.ndarray],
                       output_keys: Mapping[str, str]) -> Dict[str, float]:
    """Per trainable variable path: |our fingerprint - deeplab2's| / (its gradient norm + 1e-6 of the largest norm).

    Args:
      model: our panoptic model, loaded from the fixture's checkpoint.
      variable_keys: {our variable path: deeplab2 checkpoint key} (what `load_deeplab2_checkpoint` returns).
      expected: the fixture's outputs.npz (images and grad:<key> fingerprints).
      output_keys: {deeplab2 output name: our output key}.
    """
    import tensorflow as tf  # Only the gradient tests need it.

    images = tf.constant(expected['images'])
    with tf.GradientTape() as tape:
        predictions = model(images, training=True)
        scalar = tf.add_n([tf.reduce_sum(predictions[output_keys[key]] * weight)
                           for key, weight in gradient_projection(images.shape).items()])
    variables = model.trainable_variables
    gradients = tape.gradient(scalar, variables)
    theirs = {v.path: expected[f'grad:{variable_keys[v.path]}'] for v in variables}
    assert len(theirs) == len([key for key in expected if key.startswith('grad:')])
    scale = max(value[0] for value in theirs.values())
    ours = {v.path: fingerprint(np.zeros(v.shape) if g is None else tf.convert_to_tensor(g).numpy())
            for v, g in zip(variables, gradients)}
    return {path: float(np.abs(ours[path] - theirs[path]).max() / (theirs[path][0] + 1e-6 * scale)) for path in ours}

"""FusedBatchNormalization and TermBatchNormalization.normalize_sum against numpy batch norm and the Keras layer."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial.model.layers.fused_batch_norm import FusedBatchNormalization
from deeplab_axial.model.layers.term_batch_norm import TermBatchNormalization


def _numpy_batch_norm(x, gamma, beta, epsilon):
    mean, variance = x.mean((0, 1)), x.var((0, 1))
    return (x - mean) / np.sqrt(variance + epsilon) * gamma + beta, mean, variance


def _layers(rng, channels=5, rank=3):
    fused = FusedBatchNormalization(momentum=0.9, epsilon=1e-3)
    reference = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-3)
    for layer in (fused, reference):
        layer.build((None,) * (rank - 1) + (channels,))
    gamma = rng.uniform(0.5, 2, channels).astype(np.float32)
    beta = rng.normal(size=channels).astype(np.float32)
    for layer in (fused, reference):
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
    return fused, reference, gamma, beta


def test_fused_training_matches_numpy_and_keras_outputs_statistics_and_gradients(rng):
    fused, reference, gamma, beta = _layers(rng)
    x = rng.normal(3.0, 2.0, (4, 6, 5)).astype(np.float32)
    upstream = rng.normal(size=x.shape).astype(np.float32)
    results = []
    for layer in (fused, reference):
        inputs = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            y = layer(inputs, training=True)
            loss = tf.reduce_sum(y * upstream)
        results.append([y] + tape.gradient(loss, [inputs, layer.gamma, layer.beta]))
    expected, mean, variance = _numpy_batch_norm(x, gamma, beta, 1e-3)
    np.testing.assert_allclose(results[0][0], expected, rtol=1e-4, atol=1e-4)
    for got, want in zip(results[0], results[1]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # Moving averages of the biased batch variance, as Keras keeps them (the kernel returns the unbiased one).
    np.testing.assert_allclose(fused.moving_mean.numpy(), 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(fused.moving_variance.numpy(), 0.9 + 0.1 * variance, rtol=1e-5)


@pytest.mark.parametrize('shape', [(2, 3, 5), (2, 3, 4, 5)])  # a feature map takes the kernel's inference form
def test_fused_inference_uses_moving_statistics(rng, shape):
    fused, _, gamma, beta = _layers(rng, rank=len(shape))
    fused.moving_mean.assign(np.full(5, 0.5, np.float32))
    fused.moving_variance.assign(np.full(5, 4.0, np.float32))
    x = rng.normal(size=shape).astype(np.float32)
    np.testing.assert_allclose(fused(x, training=False), (x - 0.5) / np.sqrt(4.0 + 1e-3) * gamma + beta,
                               rtol=1e-5, atol=1e-5)


def test_frozen_batch_norm_folds_into_a_scale_and_shift(rng):
    """A non-trainable layer normalises with its moving statistics in training too (as Keras); its
    folded_scale_and_shift, which the qkv projection takes into its kernel, gives the same transform; the kernel
    (training) path is not folded."""
    fused, _, gamma, beta = _layers(rng)
    mean = rng.normal(size=5).astype(np.float32)
    variance = rng.uniform(0.5, 3, 5).astype(np.float32)
    fused.moving_mean.assign(mean)
    fused.moving_variance.assign(variance)
    x = rng.normal(size=(2, 3, 5)).astype(np.float32)
    expected = (x - mean) / np.sqrt(variance + 1e-3) * gamma + beta
    scale, shift = fused.folded_scale_and_shift()
    np.testing.assert_allclose(x * scale.numpy() + shift.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert fused.uses_batch_statistics(True) and not fused.uses_batch_statistics(False)
    fused.trainable = False
    assert not fused.uses_batch_statistics(True)
    np.testing.assert_allclose(fused(x, training=True), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fused.moving_mean.numpy(), mean)  # no update


@pytest.mark.parametrize('policy', ['mixed_bfloat16', 'mixed_float16'])
def test_fused_mixed_precision_keeps_float32_statistics(rng, policy):
    x = rng.normal(size=(3, 4, 6)).astype(np.float32)
    layer = FusedBatchNormalization(dtype=policy)
    y = layer(tf.cast(x, layer.compute_dtype), training=True)
    assert y.dtype == layer.compute_dtype
    assert layer.moving_mean.dtype == 'float32'
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.01 * x.mean((0, 1)), rtol=0.02, atol=1e-3)
    feature_map = x.reshape(3, 2, 2, 6)
    maps = FusedBatchNormalization(dtype=policy)
    maps.build(feature_map.shape)
    maps.moving_mean.assign(x.mean((0, 1)))
    maps.moving_variance.assign(x.var((0, 1)))
    y = maps(tf.cast(feature_map, maps.compute_dtype), training=False)
    assert y.dtype == maps.compute_dtype
    expected = (feature_map - x.mean((0, 1))) / np.sqrt(x.var((0, 1)) + 1e-3)
    np.testing.assert_allclose(tf.cast(y, tf.float32), expected, rtol=2e-2, atol=2e-2)


def test_fused_compiles_with_xla_and_falls_back_for_other_axes(rng):
    x = tf.constant(rng.normal(size=(2, 3, 4)).astype(np.float32))
    for inputs in (x, tf.reshape(x, [2, 3, 1, 4])):
        layer = FusedBatchNormalization()
        layer.build(inputs.shape)
        layer.moving_variance.assign(rng.uniform(0.5, 2, 4).astype(np.float32))
        eager = layer(inputs, training=False)
        np.testing.assert_allclose(tf.function(lambda t: layer(t, training=False), jit_compile=True)(inputs),
                                   eager, rtol=1e-6)
    # Axis 1 is not the fused case: the Keras computation, per channel of axis 1.
    per_axis1 = FusedBatchNormalization(axis=1, epsilon=1e-3)
    y = per_axis1(x, training=True).numpy()
    xs = x.numpy()
    expected = (xs - xs.mean((0, 2), keepdims=True)) / np.sqrt(xs.var((0, 2), keepdims=True) + 1e-3)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('training', [True, False])
def test_normalize_sum_matches_per_term_batch_norm(rng, training):
    layer = TermBatchNormalization(2, 3, momentum=0.9, epsilon=1e-3)
    layer.build()
    gamma = rng.uniform(0.5, 2, (2, 3)).astype(np.float32)
    beta = rng.normal(size=(2, 3)).astype(np.float32)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    moving_mean = rng.normal(size=(2, 3)).astype(np.float32)
    moving_variance = rng.uniform(1, 3, (2, 3)).astype(np.float32)
    layer.moving_mean.assign(moving_mean)
    layer.moving_variance.assign(moving_variance)
    terms = [rng.normal(2.0, 3.0, (5, 7, 3)).astype(np.float32) for _ in range(2)]
    got = layer.normalize_sum([tf.constant(t) for t in terms], training=training).numpy()
    if training:
        parts = [_numpy_batch_norm(t, gamma[i], beta[i], 1e-3) for i, t in enumerate(terms)]
        expected = sum(p[0] for p in parts)
        np.testing.assert_allclose(layer.moving_mean.numpy(),
                                   0.9 * moving_mean + 0.1 * np.stack([p[1] for p in parts]), rtol=1e-5)
        np.testing.assert_allclose(layer.moving_variance.numpy(),
                                   0.9 * moving_variance + 0.1 * np.stack([p[2] for p in parts]), rtol=1e-5)
    else:
        expected = sum((t - moving_mean[i]) / np.sqrt(moving_variance[i] + 1e-3) * gamma[i] + beta[i]
                       for i, t in enumerate(terms))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_normalize_sum_synchronized_path_agrees_with_fused_path(rng):
    terms = [tf.constant(rng.normal(1.0, 2.0, (4, 5, 3)).astype(np.float32)) for _ in range(2)]
    outputs = []
    for synchronized in (False, True):
        layer = TermBatchNormalization(2, 3, synchronized=synchronized)
        layer.build()
        outputs.append(layer.normalize_sum(terms, training=True).numpy())
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-4, atol=1e-4)

"""Gram-matrix batch-norm moments of the attention logits against direct reductions over the valid pairs."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial.model.layers.attention_moments import content_moments, relative_moments, windowed_content_sums
from deeplab_axial.model.layers.axial_attention import _window


def _direct_moments(logits, valid):
    """Per-head mean and mean of squares of logits [batch, heads, L, L] over the batch and the valid (o, p)."""
    values = logits.transpose(1, 0, 2, 3)[:, :, valid]  # [heads, batch, valid pairs]
    return values.mean((1, 2)), np.square(values).mean((1, 2))


def _pairs(length, span, max_span):
    """Independent enumeration of the valid (o, p) pairs and their clipped table rows."""
    relative = np.arange(length)[None, :] - np.arange(length)[:, None]  # [o, p] = p - o
    valid = np.ones((length, length), bool) if span is None else np.abs(relative) <= (span - 1) // 2
    rows = np.clip(relative, -(max_span - 1), max_span - 1) + max_span - 1
    return valid, rows


def test_content_moments_match_direct_reduction(rng):
    query = rng.normal(0.3, 1.0, (3, 2, 9, 4)).astype(np.float32)
    key = rng.normal(-0.2, 1.5, (3, 2, 7, 4)).astype(np.float32)
    logits = np.einsum('nhod,nhpd->nhop', query.astype(np.float64), key.astype(np.float64))
    expected = _direct_moments(logits, np.ones((9, 7), bool))
    got = content_moments(query, key)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g.numpy(), e, rtol=1e-5)


@pytest.mark.parametrize('length, span, block_size, max_span', [
    (11, None, 64, 255),  # global
    (11, None, 64, 4),  # global with distances beyond 3 on the clipped end rows
    (11, 5, 4, 255),  # local: 3 blocks, the last padded, windows cut at both borders
    (13, 7, 5, 2),  # local with clipped table rows inside the window
    (9, 1, 4, 255),  # span 1: each query sees itself only
    (11, 15, 64, 255),  # shorter than the span: one block masked to the windows
])
@pytest.mark.parametrize('term', ['query', 'key'])
def test_relative_moments_match_direct_reduction(rng, length, span, block_size, max_span, term):
    geometry = _window(length, span, block_size, max_span)
    x = rng.normal(0.4, 1.0, (2, 3, length, 4)).astype(np.float32)
    table = rng.normal(0.1, 0.7, (2 * max_span - 1, 4)).astype(np.float32)
    valid, rows = _pairs(length, span, max_span)
    equation = 'nhod,opd->nhop' if term == 'query' else 'nhpd,opd->nhop'
    logits = np.einsum(equation, x.astype(np.float64), table.astype(np.float64)[rows])
    expected = _direct_moments(logits, valid)
    assert geometry['pairs'] == valid.sum()
    got = relative_moments(x, table, geometry['count_rows'], geometry[f'{term}_counts'], geometry['pairs'])
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g.numpy(), e, rtol=1e-5, atol=1e-6)


def _gradients(moments_fn, inputs, upstream):
    """Gradients of upstream . (mean, mean of squares) with respect to `inputs` (float64 tensors)."""
    inputs = [tf.constant(x) for x in inputs]
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        mean, mean_square = moments_fn(*inputs)
        loss = tf.reduce_sum(mean * upstream[0]) + tf.reduce_sum(mean_square * upstream[1])
    return [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, inputs)]


def _direct_moments_tf(logits, valid):
    """`_direct_moments` in TensorFlow, differentiated by TensorFlow: the independent reference for the gradients."""
    values = tf.boolean_mask(tf.transpose(logits, [2, 3, 1, 0]), valid)  # [valid pairs, heads, batch]
    return tf.reduce_mean(values, [0, 2]), tf.reduce_mean(tf.square(values), [0, 2])


def test_content_moment_gradients_match_differentiated_direct_reduction(rng):
    query = rng.normal(0.3, 1.0, (3, 2, 9, 4))
    key = rng.normal(-0.2, 1.5, (3, 2, 7, 4))
    upstream = rng.normal(size=(2, 2))
    got = _gradients(lambda q, k: content_moments(tf.cast(q, tf.float32), tf.cast(k, tf.float32)),
                     [query, key], upstream.astype(np.float32))
    expected = _gradients(lambda q, k: _direct_moments_tf(tf.einsum('nhod,nhpd->nhop', q, k), np.ones((9, 7), bool)),
                          [query, key], upstream)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('length, span, block_size, max_span', [(11, None, 64, 255), (13, 7, 5, 2)])
@pytest.mark.parametrize('term', ['query', 'key'])
def test_relative_moment_gradients_match_differentiated_direct_reduction(rng, length, span, block_size,
                                                                          max_span, term):
    geometry = _window(length, span, block_size, max_span)
    x = rng.normal(0.4, 1.0, (2, 3, length, 4))
    table = rng.normal(0.1, 0.7, (2 * max_span - 1, 4))
    upstream = rng.normal(size=(2, 3))
    valid, rows = _pairs(length, span, max_span)
    equation = 'nhod,opd->nhop' if term == 'query' else 'nhpd,opd->nhop'
    got = _gradients(lambda x, t: relative_moments(tf.cast(x, tf.float32), tf.cast(t, tf.float32),
                                                   geometry['count_rows'], geometry[f'{term}_counts'],
                                                   geometry['pairs']), [x, table], upstream.astype(np.float32))
    expected = _gradients(lambda x, t: _direct_moments_tf(tf.einsum(equation, x, tf.gather(t, rows)), valid),
                          [x, table], upstream)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


def _blocked(length, span, block_size, max_span, rng, depth=4):
    """Blocked q, k of a local span as the layer lays them out, with the per-pair positions and the geometry."""
    geometry = _window(length, span, block_size, max_span)
    blocks, block, keys, halo = geometry['blocks'], geometry['block'], geometry['keys'], geometry['halo']
    query = rng.normal(0.3, 1.0, (2, 3, length, depth))
    key = rng.normal(-0.2, 1.5, (2, 3, length, depth))
    query_index = np.arange(blocks * block).reshape(blocks, block)
    key_index = np.arange(blocks)[:, None] * block + np.arange(keys)[None, :] - halo
    pad = lambda x: np.pad(x, [(0, 0), (0, 0), (halo, blocks * block + halo), (0, 0)])  # noqa: E731
    query_blocks = pad(query)[:, :, query_index + halo]
    key_blocks = pad(key)[:, :, key_index + halo]
    return query, key, query_blocks, key_blocks, geometry


@pytest.mark.parametrize('length, span, block_size', [(11, 5, 4), (13, 7, 5), (40, 9, 64), (9, 1, 4)])
def test_windowed_content_sums_match_direct_reduction(rng, length, span, block_size):
    query, key, query_blocks, key_blocks, geometry = _blocked(length, span, block_size, 255, rng)
    valid, _ = _pairs(length, span, 255)
    logits = np.einsum('nhod,nhpd->nhop', query, key)  # independent of the blocks
    expected_total = np.einsum('nhop,op->nh', logits, valid)
    expected_squares = np.einsum('nhop,op->nh', logits ** 2, valid)
    total, squares = windowed_content_sums(tf.constant(query_blocks, tf.float32), tf.constant(key_blocks, tf.float32),
                                           tf.constant(geometry['mask']))
    np.testing.assert_allclose(total.numpy(), expected_total, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(squares.numpy(), expected_squares, rtol=1e-4, atol=1e-4)


def test_windowed_content_sum_gradients_match_differentiated_direct_reduction(rng):
    _, _, query_blocks, key_blocks, geometry = _blocked(13, 7, 5, 255, rng)
    upstream = rng.normal(size=(2, 2, 3))
    mask = geometry['mask']

    def direct(q, k):
        logits = tf.einsum('nhiud,nhiwd->nhiuw', q, k) * mask
        return tf.reduce_sum(logits, [2, 3, 4]), tf.reduce_sum(tf.square(logits), [2, 3, 4])

    def gradients(fn, dtype):
        inputs = [tf.constant(query_blocks, dtype), tf.constant(key_blocks, dtype)]
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            total, squares = fn(*inputs)
            loss = tf.reduce_sum(total * upstream[0]) + tf.reduce_sum(squares * upstream[1])
        return [g.numpy() for g in tape.gradient(loss, inputs)]
    got = gradients(lambda q, k: windowed_content_sums(q, k, tf.constant(mask)), tf.float32)
    expected = gradients(direct, tf.float64)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)

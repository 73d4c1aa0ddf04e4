"""The local window of `AxialAttention` as the paper defines it, against a direct loop over (o, p) of Eq. 4.

Query o attends to the keys p with |p - o| <= (m - 1) / 2 inside the axis, for every axis length L; the attention is
global only when no span is set or when every window covers the axis (L <= (m + 1) / 2). The cases that matter are
the axes shorter than the span but longer than half of it (L = 34..65 for m = 65: Cityscapes' 65-long height axis at
output stride 16), which an earlier rule ran globally.
"""

import numpy as np
import pytest

from deeplab_axial.model.layers.axial_attention import AxialAttention, _window

EPSILON = 1e-3
SPAN = 65
RADIUS = (SPAN - 1) // 2


def _batch_norm(x, mean, variance, gamma, beta):
    return (x - mean) / np.sqrt(variance + EPSILON) * gamma + beta


def loop_eq4(x, layer, training):
    """Eq. 4 with batch norm on the qkv projection, on each (similarity term, head) and on each (retrieved term,
    channel), one (o, p) pair at a time. Training mode takes the batch statistics, the similarities' over the batch
    and the pairs inside the windows only.

    x: float64 [N, L, C]; reads the layer's variables; returns float64 [N, L, Dv].
    """
    n, length, _ = x.shape
    heads = layer.num_heads
    dk, dv = layer.total_key_depth // heads, layer.total_value_depth // heads
    rows = 2 * layer.max_span - 1

    def value(variable):
        return variable.numpy().astype(np.float64)

    def norm(bn, x, index, axes, batch_values=None):
        """Batch norm of term `index` (None: the layer's only term) of `bn` over `axes`."""
        pick = (lambda v: value(v)) if index is None else (lambda v: value(v)[index])
        if training:
            values = x if batch_values is None else batch_values
            mean, variance = values.mean(axes), values.var(axes)
        else:
            mean, variance = pick(bn.moving_mean), pick(bn.moving_variance)
        return mean, variance, pick(bn.gamma), pick(bn.beta)

    qkv = x @ value(layer.qkv_kernel)
    qkv = _batch_norm(qkv, *norm(layer.batch_norm_qkv, qkv, None, (0, 1)))
    q = qkv[..., :heads * dk].reshape(n, length, heads, dk)
    k = qkv[..., heads * dk:2 * heads * dk].reshape(n, length, heads, dk)
    v = qkv[..., 2 * heads * dk:].reshape(n, length, heads, dv)
    query_rpe, key_rpe, value_rpe = value(layer.query_rpe), value(layer.key_rpe), value(layer.value_rpe)

    radius = None if layer.span is None else (layer.span - 1) // 2
    pairs = [(o, p) for o in range(length) for p in range(length) if radius is None or abs(p - o) <= radius]

    def row(o, p):
        return min(max(p - o, -(layer.max_span - 1)), layer.max_span - 1) + layer.max_span - 1

    # Similarity terms per pair, [pairs, N, heads]: content, query-relative, key-relative (the layer's term order).
    terms = np.zeros((3, len(pairs), n, heads))
    for i, (o, p) in enumerate(pairs):
        assert 0 <= row(o, p) < rows
        terms[0, i] = np.einsum('nhd,nhd->nh', q[:, o], k[:, p])
        terms[1, i] = np.einsum('nhd,d->nh', q[:, o], query_rpe[row(o, p)])
        terms[2, i] = np.einsum('nhd,d->nh', k[:, p], key_rpe[row(o, p)])
    logits = sum(_batch_norm(terms[t], *norm(layer.batch_norm_similarity, terms[t], t, (0, 1))) for t in range(3))

    retrieved = np.zeros((2, n, length, heads, dv))  # content, value-relative
    for o in range(length):
        mine = [i for i, (query, _) in enumerate(pairs) if query == o]
        weights = np.exp(logits[mine] - logits[mine].max(0))
        weights /= weights.sum(0)  # softmax over the keys of query o: [keys, N, heads]
        for weight, i in zip(weights, mine):
            p = pairs[i][1]
            retrieved[0, :, o] += weight[:, :, None] * v[:, p]
            retrieved[1, :, o] += weight[:, :, None] * value_rpe[row(o, p)]
    retrieved = retrieved.reshape(2, n, length, heads * dv)
    return sum(_batch_norm(retrieved[t], *norm(layer.batch_norm_retrieved_output, retrieved[t], t, (0, 1)))
               for t in range(2))


def _layer(rng, length, span=SPAN, block_size=64):
    """A small layer with random tables and non-trivial batch norms at all three sites, and its input."""
    layer = AxialAttention(8, 8, num_heads=2, span=span, block_size=block_size)
    x = rng.normal(size=(2, length, 4)).astype(np.float32)
    layer.build(x.shape)
    for variable in layer.weights:
        name, shape = variable.path.split('/')[-1], tuple(variable.shape)
        if name in ('gamma', 'moving_variance'):
            variable.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        elif name in ('beta', 'moving_mean'):
            variable.assign(rng.normal(0.0, 0.5, shape).astype(np.float32))
        elif name.endswith('_rpe'):
            variable.assign(rng.normal(0.0, 0.5, shape).astype(np.float32))
    return layer, x


@pytest.mark.parametrize('length, span, block_size', [
    (33, SPAN, 64),  # L = (m + 1) / 2: every window covers the axis (global)
    (34, SPAN, 64),  # the first length at which the border queries miss the far end
    (40, SPAN, 64),
    (65, SPAN, 64),  # Cityscapes' height axis at output stride 16
    (66, SPAN, 64),  # longer than the span
    (40, 9, 8),  # blocks of 8 queries with their halos, the last one padded
])
@pytest.mark.parametrize('training', [False, True])
def test_layer_matches_the_loop_reference(rng, length, span, block_size, training):
    layer, x = _layer(rng, length, span, block_size)
    expected = loop_eq4(x.astype(np.float64), layer, training)
    got = layer(x, training=training).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('length', [33, 34, 40, 65, 66, 129])
def test_receptive_field_is_the_window_at_every_length(rng, length):
    # The query at o = 0 sees positions 0..32 and nothing beyond, whatever the axis length.
    layer, x = _layer(rng, length)
    changed = x.copy()
    changed[:, RADIUS + 1:] += rng.normal(size=changed[:, RADIUS + 1:].shape).astype(np.float32)
    before, after = layer(x).numpy(), layer(changed).numpy()
    np.testing.assert_allclose(after[:, 0], before[:, 0], rtol=1e-6, atol=1e-6)
    if length > RADIUS + 1:
        assert np.abs(after[:, -1] - before[:, -1]).max() > 1e-2  # the last query does see them


@pytest.mark.parametrize('length, span, global_', [
    (33, 65, True), (34, 65, False), (65, 65, False), (66, 65, False), (129, 65, False), (5, None, True),
    (1, 1, True), (2, 1, False), (8, 15, True), (9, 15, False)])
def test_global_only_when_every_window_covers_the_axis(length, span, global_):
    geometry = _window(length, span, 64, 255)
    assert (geometry['mask'] is None) == global_
    radius = length if span is None else (span - 1) // 2
    expected_pairs = sum(min(o + radius, length - 1) - max(o - radius, 0) + 1 for o in range(length))
    assert geometry['pairs'] == expected_pairs


@pytest.mark.parametrize('length, span, block_size, blocks, keys', [
    (65, 65, 64, 1, 65),  # one block of the whole axis: 65^2 pairs, not 2 * 33 * 97 (blocks of 33)
    (129, 65, 64, 5, 90),  # blocks of 26 with a halo of 32 each side: 5 * 26 * 90 = 11700 pairs < 129^2
    (257, 65, 64, 13, 84),  # blocks of 20: 84 keys per query, where blocks of 64 computed 128
    (40, 9, 8, 5, 16),
    (23, 7, 2, 12, 8),  # the cap bounds the memory: 23^2 pairs are more than blocks of 2 compute (12 * 2 * 8)
])
def test_geometry_takes_the_cheaper_layout(length, span, block_size, blocks, keys):
    geometry = _window(length, span, block_size, 255)
    assert (geometry['blocks'], geometry['keys']) == (blocks, keys)
    assert geometry['paper_keys'] == min(span, length)

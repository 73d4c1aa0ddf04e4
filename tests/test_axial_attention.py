"""AxialAttention / AxialAttention2D / AxialBlock against a numpy implementation of Eq. 4 written here."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial.model.layers import axial_attention
from deeplab_axial.model.layers.axial_attention import AxialAttention, AxialAttention2D, _block_size, _window
from deeplab_axial.model.layers.axial_blocks import AxialBlock
from deeplab_axial.model.layers.drop_path import DropPath

EPS = 1e-3


def _randomize_batch_norms(layer, rng):
    """Gives every batch norm of `layer` non-trivial gamma, beta and moving statistics."""
    for variable in layer.weights:
        name = variable.path.split('/')[-1]
        shape = tuple(variable.shape)
        if name in ('gamma', 'moving_variance'):
            variable.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        elif name in ('beta', 'moving_mean'):
            variable.assign(rng.normal(0.0, 0.5, shape).astype(np.float32))


def _bn(x, mean, var, gamma, beta):
    return (x - mean) / np.sqrt(var + EPS) * gamma + beta


def numpy_axial_attention(x, layer, training=False):
    """Eq. 4 with deeplab2's batch norms, one query at a time; batch statistics in training mode.

    x: [N, L, C] float64. Reads the layer's variables; returns [N, L, Dv].
    """
    n, length, _ = x.shape
    heads = layer.num_heads
    dk = layer.total_key_depth // heads
    dv = layer.total_value_depth // heads
    weights = {v.path.split('/', 1)[1]: v.numpy().astype(np.float64) for v in layer.weights}
    qkv = x @ weights['qkv_kernel']
    if training:
        mean, var = qkv.mean((0, 1)), qkv.var((0, 1))
    else:
        mean, var = weights['batch_norm_qkv/moving_mean'], weights['batch_norm_qkv/moving_variance']
    qkv = _bn(qkv, mean, var, weights['batch_norm_qkv/gamma'], weights['batch_norm_qkv/beta'])
    dkt = layer.total_key_depth
    q = qkv[..., :dkt].reshape(n, length, heads, dk)
    k = qkv[..., dkt:2 * dkt].reshape(n, length, heads, dk)
    v = qkv[..., 2 * dkt:].reshape(n, length, heads, dv)
    max_span = layer.max_span
    half = None if layer.span is None else (layer.span - 1) // 2  # a window that covers the axis is global
    rel = np.arange(length)[None, :] - np.arange(length)[:, None]  # [o, p] = p - o
    rows = np.clip(rel, -(max_span - 1), max_span - 1) + max_span - 1
    window = np.ones((length, length), bool) if half is None else np.abs(rel) <= half

    terms = []
    if layer.use_content_similarity:
        terms.append(np.einsum('nohd,nphd->nhop', q, k))
    if layer.use_query_rpe_similarity:
        terms.append(np.einsum('nohd,opd->nhop', q, weights['query_rpe'][rows]))
    if layer.use_key_rpe_similarity:
        terms.append(np.einsum('nphd,opd->nhop', k, weights['key_rpe'][rows]))
    logits = 0.0
    for t, term in enumerate(terms):
        if training:
            values = term.transpose(1, 0, 2, 3)[:, :, window]  # [heads, batch, pairs inside the span]
            mean, var = values.mean((1, 2)), values.var((1, 2))
        else:
            mean = weights['batch_norm_similarity/moving_mean'][t]
            var = weights['batch_norm_similarity/moving_variance'][t]
        logits = logits + _bn(term, mean[:, None, None], var[:, None, None],
                              weights['batch_norm_similarity/gamma'][t][:, None, None],
                              weights['batch_norm_similarity/beta'][t][:, None, None])
    logits = np.where(window, logits, -np.inf)
    attention = np.exp(logits - logits.max(-1, keepdims=True))
    attention /= attention.sum(-1, keepdims=True)

    outputs = []
    if layer.retrieve_value_content:
        outputs.append(np.einsum('nhop,nphd->nohd', attention, v).reshape(n, length, heads * dv))
    if layer.retrieve_value_rpe:
        relative_v = weights['value_rpe'][rows]
        outputs.append(np.einsum('nhop,opd->nohd', attention, relative_v).reshape(n, length, heads * dv))
    result = 0.0
    for t, out in enumerate(outputs):
        if training:
            mean, var = out.mean((0, 1)), out.var((0, 1))
        else:
            mean = weights['batch_norm_retrieved_output/moving_mean'][t]
            var = weights['batch_norm_retrieved_output/moving_variance'][t]
        result = result + _bn(out, mean, var, weights['batch_norm_retrieved_output/gamma'][t],
                              weights['batch_norm_retrieved_output/beta'][t])
    return result


def _layer_and_input(rng, length=11, channels=6, **kwargs):
    layer = AxialAttention(16, 24, **kwargs)
    x = rng.normal(size=(3, length, channels)).astype(np.float32)
    layer.build(x.shape)
    _randomize_batch_norms(layer, rng)
    for name in ('query_rpe', 'key_rpe', 'value_rpe'):
        if hasattr(layer, name):
            getattr(layer, name).assign(rng.normal(0, 0.5, tuple(getattr(layer, name).shape)).astype(np.float32))
    return layer, x


@pytest.mark.parametrize('kwargs', [
    dict(span=None),
    dict(span=None, max_span=4),  # distances beyond 3 reuse the clipped table rows
    dict(span=5, block_size=4),  # 3 blocks, the last one padded
    dict(span=3, block_size=11),
    dict(span=21),  # every window covers the axis: global
    dict(span=15),  # shorter than the span, but the border queries miss the far end
    dict(span=1, block_size=4),  # each query attends to itself only
    dict(span=None, use_query_rpe_similarity=False, retrieve_value_rpe=False),
    dict(span=5, block_size=3, use_content_similarity=False, use_key_rpe_similarity=False),
])
@pytest.mark.parametrize('training', [False, True])
def test_layer_matches_numpy_eq4(rng, kwargs, training):
    layer, x = _layer_and_input(rng, **kwargs)
    expected = numpy_axial_attention(x.astype(np.float64), layer, training=training)
    got = layer(x, training=training).numpy()
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize('length, kwargs', [
    (11, dict(span=None)),  # global: 6 queries (stride 2) against 11 keys
    (12, dict(span=None, max_span=4)),
    (23, dict(span=5, block_size=4)),  # blocks of strided queries with their halos, the last one padded
    (24, dict(span=7, block_size=3)),
    (9, dict(span=7)),  # the whole axis as one masked block
    (23, dict(span=1, block_size=4)),
    (23, dict(span=5, block_size=4, use_content_similarity=False, use_key_rpe_similarity=False)),
])
@pytest.mark.parametrize('stride', [2, 3])
@pytest.mark.parametrize('training', [False, True])
def test_query_stride_returns_the_strided_outputs(rng, length, kwargs, stride, training):
    # In inference only the kept queries are computed (their own blocks, bands and masks); in training all of them
    # (the batch norms' statistics cover every query) and the output is subsampled. Both equal Eq. 4's outputs at
    # positions 0, s, 2s, ... with the statistics of all queries.
    layer, x = _layer_and_input(rng, length=length, **kwargs)
    expected = numpy_axial_attention(x.astype(np.float64), layer, training=training)[:, ::stride]
    got = layer(x, training=training, query_stride=stride).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4)
    dynamic = tf.function(lambda t: layer(t, training=training, query_stride=stride),
                          input_signature=[tf.TensorSpec([None, length, x.shape[-1]], tf.float32)])
    np.testing.assert_allclose(dynamic(x).numpy(), expected, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize('length, span, stride, blocks, block, keys', [
    # Cost blocks * (s * (b - 1) + m) * (b + 8): 129 strided queries in 10 blocks of 13 spanning 2 * 12 + 65 keys,
    # 10 * 89 * 21 = 18690 (blocks of 12: 11 * 87 * 20 = 19140; of 15: 9 * 93 * 23 = 19251).
    (257, 65, 2, 10, 13, 89),
    # 65 queries: 5 blocks of 13, 5 * 89 * 21 = 9345, against the whole axis as one block, 129 * (65 + 8) = 9417.
    (129, 65, 2, 5, 13, 89),
    (40, 9, 3, 2, 7, 27),  # 14 queries: 2 * 27 * 15 = 810 (one block: 40 * 22 = 880)
])
def test_strided_geometry(length, span, stride, blocks, block, keys):
    geometry = _window(length, span, 64, 255, stride)
    assert (geometry['queries'], geometry['blocks'], geometry['block'], geometry['keys']) == (
        -(-length // stride), blocks, block, keys)
    # Every strided query keeps its whole window: the valid pairs are the full layer's at those queries.
    radius = (span - 1) // 2
    assert geometry['pairs'] == sum(min(o + radius, length - 1) - max(o - radius, 0) + 1
                                    for o in range(0, length, stride))


@pytest.mark.parametrize('length, span, max_block, expected', [
    # Cost blocks * (b + m - 1) * (b + 8) over b = ceil(length / blocks): for length 20, span 5, at most 8:
    # b 7 -> 3 * 11 * 15 = 495, b 5 -> 4 * 9 * 13 = 468, b 4 -> 5 * 8 * 12 = 480, b 3 -> 7 * 7 * 11 = 539.
    (20, 5, 8, 5),
    (20, 5, 4, 4),  # the cap
    (257, 65, 64, 20),  # 13 blocks of 20 (260 padded) against 84 keys, where 64 computed 128 keys per query
    (129, 65, 64, 26),
    (9, 1, 1, 1),
    # The whole axis as one block: 65 * (65 + 8) = 4745, blocks of 33: 2 * 97 * 41 = 7954.
    (65, 65, 64, 65),
    (20, 15, 8, 20),  # 20 * 28 = 560 against 3 * 21 * 15 = 945 (b 7); 20^2 <= 3 * 8 * 22 pairs of the cap
])
def test_block_size_minimises_pairs_plus_block_work(length, span, max_block, expected):
    assert _block_size(length, span, max_block) == expected
    geometry = _window(length, span, max_block, 255)
    assert geometry['block'] == expected and geometry['blocks'] == -(-length // expected)
    assert geometry['keys'] == (length if expected == length else expected + span - 1)


@pytest.mark.parametrize('training', [False, True])
def test_every_block_size_gives_the_same_outputs_and_gradients(rng, training):
    reference, x = _layer_and_input(rng, length=23, span=7, block_size=64)
    results = []
    for block_size in (64, 6, 2, 1):  # blocks of 8, 6, 2 and 1 queries
        layer = AxialAttention.from_config(dict(reference.get_config(), block_size=block_size))
        layer.build(x.shape)
        layer.set_weights(reference.get_weights())
        x_tensor = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x_tensor)
            y = layer(x_tensor, training=training)
            loss = tf.reduce_sum(y * np.linspace(-1, 1, y.shape[-1], dtype=np.float32))
        results.append([y.numpy(), tape.gradient(loss, x_tensor).numpy()])
    assert [_window(23, 7, b, 255)['block'] for b in (64, 6, 2, 1)] == [8, 6, 2, 1]
    for got in results[1:]:
        for g, e in zip(got, results[0]):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('count, most, groups, size', [(5, 1, 5, 1), (5, 2, 3, 2), (5, 4, 2, 3), (49, 1000, 1, 49),
                                                        (8, 4, 2, 4), (0, 4, 0, 0)])
def test_dynamic_sequence_groups_are_equal_and_pad_less_than_one_sequence_each(monkeypatch, count, most, groups,
                                                                                size):
    # Groups of at most `most` sequences: a single group is the sequences themselves (a batch of one image used to
    # be padded to a full group of `most`).
    monkeypatch.setattr(axial_attention, '_GROUP_BYTES', most * 100 + 99)
    got = axial_attention._dynamic_sequence_groups(tf.constant(count), 100)
    assert [int(t) for t in got] == [groups, size]


@pytest.mark.parametrize('group_sequences, static_groups', [(1, 5), (2, 2), (4, 2)])
@pytest.mark.parametrize('training', [False, True])
def test_many_sequence_groups_and_a_dynamic_batch_match_numpy(rng, monkeypatch, training, group_sequences,
                                                               static_groups):
    # 5 sequences in groups of at most 1, 2 or 4: 5, 2 or 2 static groups, or a loop over 5 groups, 3 of 2 or 2 of 3
    # sequences, the last padded.
    layer, x = _layer_and_input(rng, length=11, span=5, block_size=4)
    x = np.concatenate([x, x[::-1] * 0.5 + 0.1], 0)[:5]
    geometry = _window(11, 5, 4, 255)
    logit_bytes = 8 * geometry['blocks'] * geometry['block'] * geometry['keys'] * 4
    monkeypatch.setattr(axial_attention, '_GROUP_BYTES', group_sequences * logit_bytes + 1)
    assert axial_attention._sequence_groups(5, logit_bytes) == static_groups
    expected = numpy_axial_attention(x.astype(np.float64), layer, training=training)
    static = layer(x, training=training).numpy()
    dynamic = tf.function(lambda t: layer(t, training=training),
                          input_signature=[tf.TensorSpec([None, 11, x.shape[-1]], tf.float32)])
    np.testing.assert_allclose(static, expected, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(dynamic(x).numpy(), expected, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(dynamic(x[:1]).numpy()[0], numpy_axial_attention(
        x[:1].astype(np.float64), layer, training=training)[0], rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize('span', [None, 5])
@pytest.mark.parametrize('training', [False, True])
def test_bfloat16_core_matches_numpy_within_bfloat16_rounding(rng, span, training):
    layer, x = _layer_and_input(rng, span=span, block_size=4, core_dtype='bfloat16')
    expected = numpy_axial_attention(x.astype(np.float64), layer, training=training)
    got = layer(x, training=training)
    assert got.dtype == tf.float32
    error = np.abs(got.numpy() - expected).max() / np.abs(expected).max()
    assert error < 3e-2  # 8-bit mantissas on the products; float32 ones agree to 2e-4 (above)
    float32 = AxialAttention.from_config(dict(layer.get_config(), core_dtype=None))
    float32.build(x.shape)
    float32.set_weights(layer.get_weights())
    assert np.abs(float32(x, training=training).numpy() - expected).max() < 0.1 * error * np.abs(expected).max()


def test_switches_drop_the_unused_tables(rng):
    layer, _ = _layer_and_input(rng, use_query_rpe_similarity=False, use_key_rpe_similarity=False,
                                retrieve_value_rpe=False)
    names = [v.path.split('/')[-1] for v in layer.weights]
    assert not {'query_rpe', 'key_rpe', 'value_rpe'} & set(names)
    assert layer.batch_norm_similarity.gamma.shape == (1, 8)


def test_relative_tables_have_deeplab2_shape_and_paths():
    layer = AxialAttention(64, 128, name='height_axis')
    layer.build((None, 9, 32))
    shapes = {v.path: tuple(v.shape) for v in layer.weights}
    assert shapes['height_axis/query_rpe'] == (509, 8)
    assert shapes['height_axis/key_rpe'] == (509, 8)
    assert shapes['height_axis/value_rpe'] == (509, 16)
    assert shapes['height_axis/qkv_kernel'] == (32, 256)
    assert shapes['height_axis/batch_norm_similarity/gamma'] == (3, 8)  # 24 = one per (term, head)
    assert shapes['height_axis/batch_norm_retrieved_output/gamma'] == (2, 128)  # 2 * Dv


def test_output_ignores_inputs_outside_its_span(rng):
    layer, x = _layer_and_input(rng, length=40, span=7, block_size=8)
    base = layer(x).numpy()
    o = 17
    changed = x.copy()
    changed[:, :o - 3] += rng.normal(size=changed[:, :o - 3].shape).astype(np.float32)
    changed[:, o + 4:] += rng.normal(size=changed[:, o + 4:].shape).astype(np.float32)
    after = layer(changed).numpy()
    np.testing.assert_allclose(after[:, o], base[:, o], rtol=1e-5, atol=1e-5)
    assert np.abs(after[:, o - 4] - base[:, o - 4]).max() > 1e-3  # its neighbours do see the change


def test_gradients_reach_all_three_relative_tables(rng):
    for span in (None, 5):
        layer, x = _layer_and_input(rng, span=span, block_size=4)
        with tf.GradientTape() as tape:
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * rng.normal(size=y.shape).astype(np.float32))
        tables = [layer.query_rpe, layer.key_rpe, layer.value_rpe]
        for table, grad in zip(tables, tape.gradient(loss, tables)):
            assert grad is not None and float(tf.reduce_max(tf.abs(grad))) > 0, table.path


@pytest.mark.parametrize('kwargs', [dict(span=None, max_span=4), dict(span=5, block_size=4)])
def test_training_gradients_match_finite_differences(rng, kwargs):
    # The batch statistics depend on the input, so this also checks the gradients of the Gram-matrix moments.
    layer, x = _layer_and_input(rng, **kwargs)
    layer.qkv_kernel.assign(rng.normal(0, 0.4, tuple(layer.qkv_kernel.shape)).astype(np.float32))
    seed = rng.normal(size=(3, 11, 24)).astype(np.float32)
    direction = rng.normal(size=x.shape).astype(np.float32)

    def loss(t):
        return tf.reduce_sum(layer(t, training=True) * seed)
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = loss(x)
    analytic = float(tf.reduce_sum(tape.gradient(value, x) * direction))
    step = 3e-3
    numeric = (float(loss(x + step * direction)) - float(loss(x - step * direction))) / (2 * step)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-3)


def test_similarity_shift_gets_a_zero_gradient(rng):
    # The shift of the logits' batch norm is constant along each softmax row: its exact gradient is zero.
    layer, x = _layer_and_input(rng, span=5, block_size=4)
    with tf.GradientTape() as tape:
        y = layer(x, training=True)
        loss = tf.reduce_sum(y * rng.normal(size=y.shape).astype(np.float32))
    norm = layer.batch_norm_similarity
    beta, gamma = tape.gradient(loss, [norm.beta, norm.gamma])
    np.testing.assert_array_equal(beta.numpy(), 0.0)
    assert np.all(np.abs(gamma.numpy()) > 0)


def test_training_updates_moving_statistics(rng):
    layer, x = _layer_and_input(rng, span=5, block_size=4)
    before = layer.batch_norm_similarity.moving_mean.numpy().copy()
    layer(x, training=True)
    assert not np.allclose(before, layer.batch_norm_similarity.moving_mean.numpy())


@pytest.mark.parametrize('span', [None, 5])
def test_jit_compile_gives_the_same_result(rng, span):
    layer, x = _layer_and_input(rng, span=span, block_size=4)
    plain = layer(x).numpy()
    compiled = tf.function(lambda t: layer(t), jit_compile=True)(tf.constant(x)).numpy()
    np.testing.assert_allclose(compiled, plain, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('policy', ['mixed_bfloat16', 'mixed_float16'])
def test_mixed_precision(rng, policy):
    reference, x = _layer_and_input(rng, span=5, block_size=4)
    expected = reference(x).numpy()
    keras.config.set_dtype_policy(policy)
    try:
        config = reference.get_config()
        config.pop('dtype')  # follow the global mixed policy
        layer = AxialAttention.from_config(config)
        layer.build(x.shape)
        layer.set_weights(reference.get_weights())
        y = layer(x)
        y_train = layer(x, training=True)
    finally:
        keras.config.set_dtype_policy('float32')
    assert y.dtype == layer.compute_dtype == policy.split('_')[1]
    assert y_train.dtype == y.dtype
    assert all(v.dtype == 'float32' for v in layer.weights)
    tolerance = 0.15 if policy == 'mixed_bfloat16' else 0.05
    np.testing.assert_allclose(tf.cast(y, tf.float32).numpy(), expected, atol=tolerance * np.abs(expected).max())


def test_config_round_trip():
    layers = [AxialAttention(16, 32, span=5, max_span=100, block_size=8, use_key_rpe_similarity=False,
                             use_sync_batchnorm=True, core_dtype='bfloat16', name='a'),
              AxialAttention2D(8, span=[None, 7], strides=2, bn_momentum=0.9, retrieve_value_rpe=False, name='b'),
              AxialBlock(8, strides=2, span=9, drop_path_keep_prob=0.7, name='c'),
              DropPath(0.8, name='d')]
    for layer in layers:
        config = layer.get_config()
        clone = layer.__class__.from_config(config)
        assert clone.get_config() == config
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
        assert restored.get_config() == config


def test_2d_is_height_then_strided_width(rng):
    layer = AxialAttention2D(8, span=[None, 3], strides=2, block_size=4)
    x = rng.normal(size=(2, 7, 9, 5)).astype(np.float32)
    y = layer(x).numpy()
    assert y.shape == (2, 4, 5, 16)
    height = layer.height_axis(np.transpose(x, [0, 2, 1, 3]).reshape(18, 7, 5)).numpy()
    height = np.transpose(height.reshape(2, 9, 7, 16), [0, 2, 1, 3])[:, ::2]
    width = layer.width_axis(height.reshape(8, 9, 16)).numpy().reshape(2, 4, 9, 16)[:, :, ::2]
    np.testing.assert_allclose(y, width, rtol=1e-5, atol=1e-5)


def test_block_shapes_and_zero_initialised_residual(rng):
    x = np.abs(rng.normal(size=(2, 13, 11, 12))).astype(np.float32)
    block = AxialBlock(4, strides=1, span=5, num_heads=4, block_size=4)
    y = block(x).numpy()
    assert y.shape == (2, 13, 11, 16)
    # conv3's gamma starts at 0 and its beta at 0: the output is ReLU(shortcut) at initialisation.
    shortcut = block.shortcut(x).numpy()
    np.testing.assert_allclose(y, np.maximum(shortcut, 0), rtol=1e-5, atol=1e-5)
    strided = AxialBlock(4, strides=2, span=None, num_heads=4)
    assert strided(x).shape == (2, 7, 6, 16)
    identity = AxialBlock(3, strides=1, num_heads=1)
    np.testing.assert_allclose(identity(x).numpy(), np.maximum(x, 0), rtol=1e-6)


def test_drop_path_drops_whole_examples(rng):
    layer = DropPath(0.5)
    x = np.ones((256, 3, 3, 2), np.float32)
    y = layer(x, training=True).numpy()
    per_example = y.reshape(256, -1)
    assert set(np.unique(per_example)) <= {0.0, 2.0}
    assert np.all(per_example.min(1) == per_example.max(1))
    assert 0.3 < (per_example[:, 0] > 0).mean() < 0.7
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x)


@pytest.mark.parametrize('kwargs, message', [
    (dict(total_key_depth=12, num_heads=8), 'num_heads'),
    (dict(span=4), 'span'),
    (dict(use_content_similarity=False, use_query_rpe_similarity=False, use_key_rpe_similarity=False),
     'similarity'),
    (dict(retrieve_value_rpe=False, retrieve_value_content=False), 'retrieve'),
    (dict(core_dtype='int8'), 'core_dtype'),
])
def test_bad_arguments_name_the_field(kwargs, message):
    args = dict(total_key_depth=16, total_value_depth=16)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        AxialAttention(**args)


def test_a_bad_query_stride_names_the_argument(rng):
    layer, x = _layer_and_input(rng)
    with pytest.raises(ValueError, match='query_stride.*Received: 0'):
        layer(x, query_stride=0)

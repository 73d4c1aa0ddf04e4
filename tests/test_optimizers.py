"""Schedules, RAdam and Lookahead against numpy references, weight decay, clipping, builder dispatch."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial.protos import trainer_pb2
from trainer import optimizer_builder


def _solver(**fields) -> trainer_pb2.SolverOptions:
    solver = trainer_pb2.SolverOptions(training_number_of_steps=100, base_learning_rate=0.1)
    for k, v in fields.items():
        setattr(solver, k, v)
    return solver


def _numpy_radam(w, grads, lr, b1=0.9, b2=0.999, eps=1e-7, threshold=5.0):
    """RAdam as written in Liu et al. (2020), Algorithm 2, with the rectification threshold of TF Addons."""
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    rho_inf = 2.0 / (1.0 - b2) - 1.0
    out = []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1 ** t)
        rho_t = rho_inf - 2.0 * t * b2 ** t / (1 - b2 ** t)
        if rho_t >= threshold:
            r_t = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            w = w - lr * r_t * m_hat / (np.sqrt(v / (1 - b2 ** t)) + eps)
        else:
            w = w - lr * m_hat
        out.append(w.copy())
    return out


def _apply(optimizer, w0, grads):
    var = keras.Variable(w0.astype(np.float32))
    out = []
    for g in grads:
        optimizer.apply([tf.constant(g, tf.float32)], [var])
        out.append(var.numpy().copy())
    return out


def test_radam_matches_numpy_reference_through_both_phases(rng):
    # rho_t crosses the threshold of 5 at t = 6 (beta_2 = 0.999), so 12 steps cover both update rules.
    w0 = rng.normal(size=(4, 3))
    grads = [rng.normal(size=(4, 3)) for _ in range(12)]
    got = _apply(optimizer_builder.RAdam(0.01), w0, grads)
    want = _numpy_radam(w0, grads, 0.01)
    for t, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f'step {t + 1}')


def test_radam_first_steps_are_momentum_sgd():
    """Hand-computed: before rectification, w -= lr * m_hat and m_hat = g for a constant gradient."""
    got = _apply(optimizer_builder.RAdam(0.5), np.array([1.0]), [np.array([2.0])] * 3)
    np.testing.assert_allclose(np.concatenate(got), [0.0, -1.0, -2.0], rtol=1e-6)


def test_lookahead_matches_its_definition(rng):
    """Inner SGD steps on fast weights; every k steps slow += alpha * (fast - slow) and fast = slow."""
    k, alpha, lr = 3, 0.5, 0.1
    w0 = rng.normal(size=(5,))
    grads = [rng.normal(size=(5,)) for _ in range(10)]
    got = _apply(optimizer_builder.Lookahead(keras.optimizers.SGD(lr), sync_period=k, slow_step_size=alpha),
                 w0, grads)
    fast, slow = w0.copy(), w0.copy()
    for t, g in enumerate(grads, start=1):
        fast = fast - lr * g
        if t % k == 0:
            slow = slow + alpha * (fast - slow)
            fast = slow.copy()
        np.testing.assert_allclose(got[t - 1], fast, rtol=1e-5, atol=1e-6, err_msg=f'step {t}')


def test_lookahead_radam_uses_inner_step_count(rng):
    """The inner RAdam must see steps 1, 2, ... (its bias correction) while wrapped."""
    w0 = rng.normal(size=(3,))
    grads = [rng.normal(size=(3,)) for _ in range(8)]
    got = _apply(optimizer_builder.Lookahead(optimizer_builder.RAdam(0.01), sync_period=100), w0, grads)
    want = _numpy_radam(w0, grads, 0.01)
    np.testing.assert_allclose(got[-1], want[-1], rtol=1e-5, atol=1e-6)


def test_lookahead_with_sync_period_one_and_alpha_one_is_the_inner_optimizer(rng):
    w0 = rng.normal(size=(3,))
    grads = [rng.normal(size=(3,)) for _ in range(4)]
    got = _apply(optimizer_builder.Lookahead(keras.optimizers.Adam(0.01), 1, 1.0), w0, grads)
    want = _apply(keras.optimizers.Adam(0.01), w0, grads)
    np.testing.assert_allclose(got[-1], want[-1], rtol=1e-6)


def test_lookahead_variables_include_the_inner_optimizer_once():
    var = keras.Variable(np.zeros(3, np.float32))
    look = optimizer_builder.Lookahead(optimizer_builder.RAdam(0.01))
    look.build([var])
    names = sorted(v.name for v in look.variables)
    # Two step counters (shared, and the inner's unused one), two learning rates, slow weights, moments and
    # velocities, each once.
    assert len(look.variables) == len({id(v) for v in look.variables}) == 7
    assert look.optimizer.iterations is look.iterations
    assert sum('slow' in n for n in names) == 1 and sum('velocity' in n for n in names) == 1


def test_optimizer_config_round_trips():
    radam = optimizer_builder.RAdam(0.01, beta_2=0.99, sma_threshold=4.0)
    again = optimizer_builder.RAdam.from_config(radam.get_config())
    assert (again.beta_2, again.sma_threshold) == (0.99, 4.0)
    look = optimizer_builder.Lookahead(radam, 4, 0.3)
    again = optimizer_builder.Lookahead.from_config(look.get_config())
    assert isinstance(again.optimizer, optimizer_builder.RAdam)
    assert (again.sync_period, again.slow_step_size) == (4, 0.3)


def test_poly_schedule_with_warmup_by_hand():
    schedule = optimizer_builder.build_learning_rate_schedule(_solver(warmup_steps=10, poly_learning_power=0.9))
    lr = lambda s: float(schedule(s))  # noqa: E731
    assert lr(0) == 0.0
    assert lr(5) == pytest.approx(0.05)
    # After warm-up, the poly decay at the same global step (deeplab2's WarmUp replaces, not shifts).
    assert lr(10) == pytest.approx(0.1 * (1 - 10 / 100) ** 0.9, rel=1e-5)
    assert lr(50) == pytest.approx(0.1 * 0.5 ** 0.9, rel=1e-5)
    assert lr(100) == pytest.approx(0.0, abs=1e-7)


def test_cosine_schedule_by_hand():
    schedule = optimizer_builder.build_learning_rate_schedule(_solver(learning_policy='cosine'))
    for step in (0, 25, 50, 99):
        assert float(schedule(step)) == pytest.approx(0.05 * (1 + math.cos(math.pi * step / 100)), rel=1e-5, abs=1e-8)


def test_backbone_multiplier_scales_the_schedule():
    base = optimizer_builder.build_learning_rate_schedule(_solver())
    scaled = optimizer_builder.build_learning_rate_schedule(_solver(), multiplier=0.1)
    assert float(scaled(30)) == pytest.approx(0.1 * float(base(30)), rel=1e-6)


def test_warmup_schedule_serialises():
    schedule = optimizer_builder.build_learning_rate_schedule(_solver(warmup_steps=10))
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert float(again(7)) == pytest.approx(float(schedule(7)))


@pytest.mark.parametrize('name, lookahead, cls', [
    ('adam', False, keras.optimizers.Adam), ('adamw', False, keras.optimizers.AdamW),
    ('sgd', False, keras.optimizers.SGD), ('radam', False, optimizer_builder.RAdam),
    ('radam', True, optimizer_builder.Lookahead)])
def test_build_optimizer_dispatch(name, lookahead, cls):
    optimizer = optimizer_builder.build_optimizer(_solver(optimizer=name, use_lookahead=lookahead))
    assert type(optimizer) is cls


def test_every_listed_optimizer_and_learning_policy_builds_and_others_are_named():
    # The tables config_checks validates against: each value must build, anything else fails naming the table.
    for name in optimizer_builder.OPTIMIZERS:
        assert isinstance(optimizer_builder.build_optimizer(_solver(optimizer=name)), keras.optimizers.Optimizer)
    for policy in optimizer_builder.LEARNING_POLICIES:
        assert float(optimizer_builder.build_learning_rate_schedule(_solver(learning_policy=policy))(1)) > 0
    with pytest.raises(ValueError, match=r"optimizer must be one of \('adam', 'adamw', 'sgd', 'radam'\)"):
        optimizer_builder.build_optimizer(_solver(optimizer='adagrad'))
    with pytest.raises(ValueError, match='learning_policy must be one of'):
        optimizer_builder.build_learning_rate_schedule(_solver(learning_policy='step'))


def test_every_listed_precision_policy_sets_and_others_are_named():
    try:
        for policy in optimizer_builder.PRECISION_POLICIES:
            optimizer_builder.set_mixed_precision_policy(policy)
            assert keras.config.dtype_policy().name == policy
        with pytest.raises(ValueError, match='mixed_precision_policy must be one of'):
            optimizer_builder.set_mixed_precision_policy('float16')
    finally:
        keras.config.set_dtype_policy('float32')


def test_sgd_nesterov_flags():
    optimizer = optimizer_builder.build_optimizer(_solver(optimizer='sgd', use_nesterov=True, momentum=0.8))
    assert optimizer.nesterov and optimizer.momentum == pytest.approx(0.8)


def test_adamw_decays_kernels_only():
    optimizer = optimizer_builder.build_optimizer(_solver(optimizer='adamw', adamw_weight_decay=0.5))
    layer = keras.layers.Dense(2)
    layer.build((None, 2))
    layer.bias.assign(np.ones(2, np.float32))
    kernel = layer.kernel.numpy()
    zeros = [tf.zeros_like(layer.kernel), tf.zeros_like(layer.bias)]
    optimizer.apply(zeros, [layer.kernel, layer.bias])
    lr0 = float(optimizer_builder.build_learning_rate_schedule(_solver())(0))
    np.testing.assert_allclose(layer.kernel.numpy(), kernel * (1 - 0.5 * lr0), rtol=1e-6)
    np.testing.assert_allclose(layer.bias.numpy(), np.ones(2))


def test_mixed_float16_wraps_in_loss_scale_optimizer():
    optimizer = optimizer_builder.build_optimizer(_solver(), mixed_precision_policy='mixed_float16')
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)


def test_weight_decay_loss_is_half_sum_of_squares_of_kernels():
    model = keras.Sequential([keras.Input((3, 3, 2)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(),
                              keras.layers.Flatten(), keras.layers.Dense(2)])
    kernels = [v.numpy() for v in model.trainable_variables if v.path.endswith('kernel')]
    assert len(kernels) == 2
    expected = 1e-4 * sum((k ** 2).sum() for k in kernels) / 2
    got = float(optimizer_builder.weight_decay_loss(model.trainable_variables, 1e-4))
    assert got == pytest.approx(expected, rel=1e-5)
    assert not optimizer_builder.is_decayed(model.layers[0].bias)
    assert float(optimizer_builder.weight_decay_loss(model.trainable_variables, 0.0)) == 0.0


def test_clip_gradients_by_global_norm():
    grads = [tf.constant([3.0, 0.0]), tf.constant([[4.0]])]
    clipped, norm = optimizer_builder.clip_gradients(grads, 1.0)
    assert float(norm) == pytest.approx(5.0)
    np.testing.assert_allclose(clipped[0].numpy(), [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(clipped[1].numpy(), [[0.8]], rtol=1e-6)


def test_split_backbone_variables():
    encoder = keras.layers.Dense(2, name='encoder')
    head = keras.layers.Dense(1, name='head')
    encoder.build((None, 2))
    head.build((None, 2))
    backbone, rest = optimizer_builder.split_backbone_variables(encoder.weights + head.weights, 'encoder')
    assert backbone == encoder.weights and rest == head.weights

"""Losses against hand-worked values and numpy references: top-k, weights, ignore, all-ignore, dtypes, smoothing."""

import math

import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial import common
from deeplab_axial.model.loss import base_loss
from deeplab_axial.model.loss.classification_loss import classification_loss
from deeplab_axial.model.loss.panoptic_deeplab_loss import PanopticDeepLabLoss

IGNORE = 255


def _np_top_k_mean(weighted, valid, p):
    """Per-example reference: k = max(1, round half up(p * #valid)) largest valid values, divided by #non-zero."""
    out = []
    for w, v in zip(weighted.reshape(len(weighted), -1), valid.reshape(len(valid), -1)):
        values = np.sort(w[v])[::-1]
        if values.size == 0:
            out.append(0.0)
            continue
        k = max(1, int(math.floor(p * values.size + 0.5)))
        top = values[:k]
        nz = np.count_nonzero(top)
        out.append(top.sum() / nz if nz else 0.0)
    return np.array(out, np.float64)


def _np_cross_entropy(labels, logits):
    z = logits - logits.max(-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    safe = np.where(labels == IGNORE, 0, labels)
    return -np.take_along_axis(log_p, safe[..., None], -1)[..., 0]


def test_top_k_by_hand():
    loss = tf.constant([[0.5, 2.0, 1.0, 0.0, 3.0]])
    valid = tf.constant([[True, True, True, False, True]])
    # 4 valid pixels: p=0.5 -> k=2 -> (3 + 2) / 2; p=0.3 -> 1.2 -> k=1; p=0.625 -> 2.5 rounds up to 3 -> (3+2+1)/3.
    assert base_loss.average_top_k_loss(loss, valid, 0.5).numpy()[0] == pytest.approx(2.5)
    assert base_loss.average_top_k_loss(loss, valid, 0.3).numpy()[0] == pytest.approx(3.0)
    assert base_loss.average_top_k_loss(loss, valid, 0.625).numpy()[0] == pytest.approx(2.0)
    assert base_loss.average_top_k_loss(loss, valid, 1.0).numpy()[0] == pytest.approx(6.5 / 4)
    # A tiny fraction still keeps one pixel.
    assert base_loss.average_top_k_loss(loss, valid, 0.01).numpy()[0] == pytest.approx(3.0)


def test_top_k_percent_out_of_range_raises():
    with pytest.raises(ValueError, match='top_k_percent'):
        base_loss.average_top_k_loss(tf.zeros([1, 2]), tf.ones([1, 2], tf.bool), 0.0)
    with pytest.raises(ValueError, match='top_k_percent'):
        PanopticDeepLabLoss(ignore_label=IGNORE, top_k_percent=1.5)


def test_cross_entropy_weights_and_ignore_by_hand():
    # Uniform logits over 2 classes: every pixel's cross-entropy is ln 2.
    labels = tf.constant([[[0, 1, IGNORE, 1]]])
    logits = tf.zeros([1, 1, 4, 2])
    weights = tf.constant([[[1.0, 3.0, 5.0, 1.0]]])
    got = base_loss.softmax_cross_entropy_loss(labels, logits, weights, ignore_label=IGNORE).numpy()
    # The weight-3 pixel counts three times in the sum, once in the count; the ignored pixel not at all.
    np.testing.assert_allclose(got, [math.log(2) * (1 + 3 + 1) / 3], rtol=1e-6)


@pytest.mark.parametrize('top_k_percent', [1.0, 0.2, 0.5])
def test_cross_entropy_matches_numpy(rng, top_k_percent):
    b, h, w, c = 3, 6, 7, 5
    labels = rng.integers(0, c, (b, h, w))
    labels[rng.random((b, h, w)) < 0.3] = IGNORE
    labels[2] = IGNORE  # an all-ignore image
    logits = rng.normal(size=(b, h, w, c)).astype(np.float32) * 3
    weights = np.where(rng.random((b, h, w)) < 0.2, 3.0, 1.0).astype(np.float32)
    got = base_loss.softmax_cross_entropy_loss(tf.constant(labels), tf.constant(logits), tf.constant(weights),
                                               ignore_label=IGNORE, top_k_percent=top_k_percent).numpy()
    valid = labels != IGNORE
    ref = _np_top_k_mean(_np_cross_entropy(labels, logits) * weights * valid, valid, top_k_percent)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert got[2] == 0.0


def test_all_ignore_gives_zero_loss_and_finite_gradient():
    logits = tf.Variable(tf.random.normal([2, 4, 4, 3]))
    labels = tf.fill([2, 4, 4], IGNORE)
    with tf.GradientTape() as tape:
        loss = base_loss.softmax_cross_entropy_loss(labels, logits, tf.ones([2, 4, 4]), ignore_label=IGNORE,
                                                    top_k_percent=0.2)
    grad = tape.gradient(loss, logits)
    np.testing.assert_array_equal(loss.numpy(), [0.0, 0.0])
    assert np.all(np.isfinite(grad.numpy())) and np.all(grad.numpy() == 0.0)


def test_mse_and_l1_normalise_by_count_of_weighted_pixels(rng):
    gt = rng.normal(size=(2, 5, 6)).astype(np.float32)
    pred = rng.normal(size=(2, 5, 6)).astype(np.float32)
    weights = (rng.random((2, 5, 6)) < 0.6).astype(np.float32) * 2.0
    got = base_loss.mean_squared_error_loss(gt, pred, weights).numpy()
    want = [(weights[i] * (gt[i] - pred[i]) ** 2).sum() / np.count_nonzero(weights[i]) for i in range(2)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    gt2 = rng.normal(size=(2, 5, 6, 2)).astype(np.float32)
    pred2 = rng.normal(size=(2, 5, 6, 2)).astype(np.float32)
    got = base_loss.mean_absolute_error_loss(gt2, pred2, weights).numpy()
    want = [(weights[i] * np.abs(gt2[i] - pred2[i]).mean(-1)).sum() / np.count_nonzero(weights[i]) for i in range(2)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # No weighted pixel -> 0, not NaN.
    np.testing.assert_array_equal(base_loss.mean_absolute_error_loss(gt2, pred2, np.zeros_like(weights)), [0, 0])


def test_low_precision_logits_are_computed_in_float32(rng):
    labels = rng.integers(0, 4, (2, 8, 8))
    logits = rng.normal(size=(2, 8, 8, 4)).astype(np.float32)
    ref = base_loss.softmax_cross_entropy_loss(labels, logits, tf.ones([2, 8, 8]), ignore_label=IGNORE,
                                               top_k_percent=0.2)
    for dtype in (tf.bfloat16, tf.float16):
        got = base_loss.softmax_cross_entropy_loss(labels, tf.cast(logits, dtype), tf.ones([2, 8, 8]),
                                                   ignore_label=IGNORE, top_k_percent=0.2)
        assert got.dtype == tf.float32
        np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=2e-2)


def test_classification_loss_with_label_smoothing(rng):
    logits = rng.normal(size=(4, 10)).astype(np.float32)
    labels = np.array([0, 3, 9, 3])
    z = logits - logits.max(-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    for eps in (0.0, 0.1):
        target = np.eye(10)[labels] * (1 - eps) + eps / 10
        want = -(target * log_p).sum(-1)
        got = classification_loss(tf.constant(labels), tf.constant(logits), label_smoothing=eps)
        assert got.shape == (4,)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    with pytest.raises(ValueError, match='label_smoothing'):
        classification_loss(labels, logits, label_smoothing=1.0)


def _random_batch(rng, b=2, h=8, w=9, c=4):
    semantic = rng.integers(0, c, (b, h, w))
    semantic[rng.random((b, h, w)) < 0.2] = IGNORE
    y_true = {
        common.GT_SEMANTIC_KEY: semantic,
        common.SEMANTIC_LOSS_WEIGHT_KEY: np.where(rng.random((b, h, w)) < 0.3, 3.0, 1.0).astype(np.float32),
        common.GT_INSTANCE_CENTER_KEY: rng.random((b, h, w)).astype(np.float32),
        common.CENTER_LOSS_WEIGHT_KEY: (semantic != IGNORE).astype(np.float32),
        common.GT_INSTANCE_REGRESSION_KEY: rng.normal(size=(b, h, w, 2)).astype(np.float32) * 5,
        common.REGRESSION_LOSS_WEIGHT_KEY: (rng.random((b, h, w)) < 0.5).astype(np.float32),
    }
    y_pred = {
        common.PRED_SEMANTIC_LOGITS_KEY: rng.normal(size=(b, h, w, c)).astype(np.float32),
        common.PRED_CENTER_HEATMAP_KEY: rng.random((b, h, w)).astype(np.float32),
        common.PRED_OFFSET_MAP_KEY: rng.normal(size=(b, h, w, 2)).astype(np.float32) * 5,
    }
    return y_true, y_pred


def test_panoptic_deeplab_loss_matches_numpy_and_compiles(rng):
    y_true, y_pred = _random_batch(rng)
    loss = PanopticDeepLabLoss(ignore_label=IGNORE)
    got = {k: v.numpy() for k, v in loss(y_true, y_pred).items()}
    valid = y_true[common.GT_SEMANTIC_KEY] != IGNORE
    sem = _np_top_k_mean(_np_cross_entropy(y_true[common.GT_SEMANTIC_KEY], y_pred[common.PRED_SEMANTIC_LOGITS_KEY])
                         * y_true[common.SEMANTIC_LOSS_WEIGHT_KEY] * valid, valid, 0.2)
    cw = y_true[common.CENTER_LOSS_WEIGHT_KEY]
    center = (cw * (y_true[common.GT_INSTANCE_CENTER_KEY] - y_pred[common.PRED_CENTER_HEATMAP_KEY]) ** 2).sum((1, 2))
    center /= np.count_nonzero(cw, axis=(1, 2))
    rw = y_true[common.REGRESSION_LOSS_WEIGHT_KEY]
    reg = (rw * np.abs(y_true[common.GT_INSTANCE_REGRESSION_KEY] - y_pred[common.PRED_OFFSET_MAP_KEY]).mean(-1))
    reg = reg.sum((1, 2)) / np.count_nonzero(rw, axis=(1, 2))
    np.testing.assert_allclose(got[common.SEMANTIC_LOSS], sem, rtol=1e-5)
    np.testing.assert_allclose(got[common.CENTER_LOSS], 200.0 * center, rtol=1e-5)
    np.testing.assert_allclose(got[common.REGRESSION_LOSS], 0.01 * reg, rtol=1e-5)
    np.testing.assert_allclose(got[common.TOTAL_LOSS], sem + 200.0 * center + 0.01 * reg, rtol=1e-5)
    compiled = tf.function(lambda t, p: loss(t, p), jit_compile=True)(y_true, y_pred)
    for key, value in got.items():
        assert value.shape == (2,)
        np.testing.assert_allclose(compiled[key].numpy(), value, rtol=1e-5, err_msg=key)
    assert PanopticDeepLabLoss.from_config(loss.get_config()).get_config() == loss.get_config()

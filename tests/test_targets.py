"""Panoptic-DeepLab targets: hand-worked cases, a numpy reference on random maps, tf.data and batching."""

import math

import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial import common
from deeplab_axial.data import targets

DIVISOR = 1000
IGNORE = 255
THINGS = (1, 2)


def _targets(panoptic, **kwargs):
    kwargs.setdefault('sigma', 1.0)
    out = targets.generate_panoptic_targets(tf.constant(panoptic, tf.int32), label_divisor=DIVISOR,
                                            ignore_label=IGNORE, thing_classes=THINGS, **kwargs)
    return {k: v.numpy() for k, v in out.items()}


def _two_touching_instances_with_crowd_and_void():
    """8 x 10 map: stuff class 0, instance A (class 1, 3x3), B touching A on its right (class 1, 3x2), a crowd region
    of class 2 and a void row."""
    p = np.zeros((8, 10), np.int32)  # stuff class 0
    p[1:4, 1:4] = 1 * DIVISOR + 1   # A: rows 1..3, cols 1..3 -> centre (2, 2)
    p[1:4, 4:6] = 1 * DIVISOR + 2   # B: rows 1..3, cols 4..5 -> mean x 4.5 rounds half to even -> centre (2, 4)
    p[5:7, 6:9] = 2 * DIVISOR       # crowd of class 2
    p[7, :] = IGNORE * DIVISOR      # void
    return p


def test_two_touching_instances_centres_offsets_and_heatmap():
    out = _targets(_two_touching_instances_with_crowd_and_void())
    heat = out[common.GT_INSTANCE_CENTER_KEY]
    assert heat[2, 2] == 1.0 and heat[2, 4] == 1.0
    # (2, 3) is at distance 1 from both centres: max of two equal Gaussians exp(-1 / 2).
    np.testing.assert_allclose(heat[2, 3], math.exp(-0.5), rtol=1e-6)
    # (0, 0): nearest centre A at squared distance 8 -> exp(-8 / 2).
    np.testing.assert_allclose(heat[0, 0], math.exp(-4.0), rtol=1e-6)
    # (7, 9): 5 rows from both centres, outside the radius-4 window of sigma 1 -> truncated to 0.
    assert heat[7, 9] == 0.0
    reg = out[common.GT_INSTANCE_REGRESSION_KEY]
    np.testing.assert_array_equal(reg[1, 1], [1.0, 1.0])    # A pixel (1, 1) -> centre (2, 2)
    np.testing.assert_array_equal(reg[3, 5], [-1.0, -1.0])  # B pixel (3, 5) -> centre (2, 4)
    np.testing.assert_array_equal(reg[2, 4], [0.0, 0.0])
    assert np.all(reg[0] == 0) and np.all(reg[5:7, 6:9] == 0)  # stuff and crowd carry no offset


def test_crowd_void_and_loss_weights():
    p = _two_touching_instances_with_crowd_and_void()
    out = _targets(p, small_instance_threshold=7)  # A has 9 pixels (not small), B has 6 (small)
    sem_w = out[common.SEMANTIC_LOSS_WEIGHT_KEY]
    assert np.all(sem_w[1:4, 1:4] == 1.0) and np.all(sem_w[1:4, 4:6] == 3.0)
    assert np.all(sem_w[5:7, 6:9] == 1.0) and np.all(sem_w[7] == 1.0)  # crowd and void keep weight 1
    center_w = out[common.CENTER_LOSS_WEIGHT_KEY]
    expected_center_w = np.ones((8, 10), np.float32)
    expected_center_w[5:7, 6:9] = 0.0
    expected_center_w[7] = 0.0
    np.testing.assert_array_equal(center_w, expected_center_w)
    expected_reg_w = np.zeros((8, 10), np.float32)
    expected_reg_w[1:4, 1:6] = 1.0
    np.testing.assert_array_equal(out[common.REGRESSION_LOSS_WEIGHT_KEY], expected_reg_w)
    expected_crowd = np.zeros((8, 10), bool)
    expected_crowd[5:7, 6:9] = True
    np.testing.assert_array_equal(out[common.GT_IS_CROWD], expected_crowd)
    np.testing.assert_array_equal(out[common.GT_SEMANTIC_KEY], p // DIVISOR)
    np.testing.assert_array_equal(out[common.GT_PANOPTIC_KEY], p)
    assert out[common.GT_SEMANTIC_KEY][7, 0] == IGNORE and out[common.GT_SEMANTIC_KEY][5, 6] == 2
    # The crowd gets no center: at its would-be centre (5.5 -> 6, 7) only B's Gaussian reaches, at (dy, dx) = (4, 3).
    np.testing.assert_allclose(out[common.GT_INSTANCE_CENTER_KEY][6, 7], math.exp(-25.0 / 2.0), rtol=1e-5)


def test_small_instance_weight_can_be_disabled():
    out = _targets(_two_touching_instances_with_crowd_and_void(), increase_small_instance_weights=False)
    assert np.all(out[common.SEMANTIC_LOSS_WEIGHT_KEY] == 1.0)


def test_instance_cut_by_crop_border_is_centred_on_its_visible_part():
    p = np.zeros((6, 6), np.int32)
    p[0:2, 3:6] = 2 * DIVISOR + 7  # rows 0..1 -> mean y 0.5 rounds to 0; cols 3..5 -> x 4
    out = _targets(p)
    heat = out[common.GT_INSTANCE_CENTER_KEY]
    assert heat[0, 4] == 1.0 and np.argmax(heat) == 4
    np.testing.assert_array_equal(out[common.GT_INSTANCE_REGRESSION_KEY][1, 5], [-1.0, -1.0])


def test_empty_image_has_no_centres():
    for fill in (0, IGNORE * DIVISOR):
        out = _targets(np.full((5, 7), fill, np.int32))
        assert np.all(out[common.GT_INSTANCE_CENTER_KEY] == 0.0)
        assert np.all(out[common.GT_INSTANCE_REGRESSION_KEY] == 0.0)
        assert np.all(out[common.REGRESSION_LOSS_WEIGHT_KEY] == 0.0)
        assert out[common.GT_INSTANCE_REGRESSION_KEY].shape == (5, 7, 2)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match='label_divisor'):
        targets.generate_panoptic_targets(tf.zeros([2, 2], tf.int32), label_divisor=0, ignore_label=0,
                                          thing_classes=())
    with pytest.raises(ValueError, match=r'\[height, width\]'):
        targets.generate_panoptic_targets(tf.zeros([1, 2, 2], tf.int32), label_divisor=10, ignore_label=0,
                                          thing_classes=())


def _numpy_targets(p, sigma, threshold, small_weight):
    """Straightforward per-instance reference of the documented semantics."""
    h, w = p.shape
    sem = p // DIVISOR
    inst = p % DIVISOR
    thing = np.isin(sem, THINGS)
    heat = np.zeros((h, w), np.float64)
    reg = np.zeros((h, w, 2), np.float32)
    sem_w = np.ones((h, w), np.float32)
    radius = math.ceil(3 * sigma) + 1
    yy, xx = np.mgrid[0:h, 0:w]
    for pid in np.unique(p):
        if pid // DIVISOR not in THINGS or pid % DIVISOR == 0:
            continue
        mask = p == pid
        cy, cx = np.round(yy[mask].mean()), np.round(xx[mask].mean())
        window = (np.abs(yy - cy) <= radius) & (np.abs(xx - cx) <= radius)
        g = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2)) * window
        heat = np.maximum(heat, g)
        reg[mask] = np.stack([cy - yy[mask], cx - xx[mask]], -1)
        if mask.sum() < threshold:
            sem_w[mask] = small_weight
    crowd = thing & (inst == 0)
    return {
        common.GT_INSTANCE_CENTER_KEY: heat,
        common.GT_INSTANCE_REGRESSION_KEY: reg,
        common.SEMANTIC_LOSS_WEIGHT_KEY: sem_w,
        common.CENTER_LOSS_WEIGHT_KEY: (~(crowd | (sem == IGNORE))).astype(np.float32),
        common.REGRESSION_LOSS_WEIGHT_KEY: (thing & (inst != 0)).astype(np.float32),
        common.GT_IS_CROWD: crowd,
    }


def _random_panoptic(rng, h, w, num_rects):
    p = np.full((h, w), 3 * DIVISOR, np.int32)  # stuff class 3
    for _ in range(num_rects):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        y1, x1 = y0 + rng.integers(1, h // 2), x0 + rng.integers(1, w // 2)
        cls = rng.choice([1, 2, 3, 4, IGNORE])
        iid = rng.integers(0, 4) if cls in THINGS else 0
        p[y0:y1, x0:x1] = cls * DIVISOR + iid
    return p


def test_matches_numpy_reference_on_random_maps(rng):
    for trial in range(6):
        h, w = rng.integers(12, 40), rng.integers(12, 40)
        p = _random_panoptic(rng, h, w, num_rects=rng.integers(0, 8))
        sigma = [1.0, 2.5, 8.0][trial % 3]
        threshold = int(rng.integers(1, 200))
        out = _targets(p, sigma=sigma, small_instance_threshold=threshold, small_instance_weight=2.5)
        ref = _numpy_targets(p, sigma, threshold, 2.5)
        for key, value in ref.items():
            np.testing.assert_allclose(out[key], value, rtol=1e-5, atol=1e-7, err_msg=f'{key}, trial {trial}')


def test_inside_tf_data_graph_mode_matches_eager(rng):
    maps = [_random_panoptic(rng, 24, 32, n) for n in (0, 3, 7)]
    kwargs = dict(label_divisor=DIVISOR, ignore_label=IGNORE, thing_classes=THINGS)
    ds = tf.data.Dataset.from_tensor_slices(np.stack(maps)).map(
        lambda p: targets.generate_panoptic_targets(p, **kwargs))
    for p, got in zip(maps, ds):
        want = _targets(p, sigma=8.0)
        for key in want:
            np.testing.assert_array_equal(got[key].numpy(), want[key], err_msg=key)


def test_batch_wrapper_equals_per_example(rng):
    maps = np.stack([_random_panoptic(rng, 16, 20, n) for n in (2, 5)])
    batch = targets.generate_panoptic_targets_batch(tf.constant(maps), label_divisor=DIVISOR, ignore_label=IGNORE,
                                                    thing_classes=THINGS, sigma=2.0)
    for i, p in enumerate(maps):
        want = _targets(p, sigma=2.0)
        for key in want:
            np.testing.assert_array_equal(batch[key][i].numpy(), want[key], err_msg=key)

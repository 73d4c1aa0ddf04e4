"""compute_overlap: intersections against a counting loop written here, and id maps outside the 24-bit range."""

import numpy as np
import pytest

from evaluation.segment_overlap import compute_overlap

CATEGORIES = {1: {'id': 1}, 2: {'id': 2}}


def test_intersections_match_a_pixel_count():
    rng = np.random.default_rng(0)
    gt_ids = rng.choice(np.array([0, 5, 2 ** 24 - 1], np.uint32), size=(13, 17))
    pred_ids = rng.choice(np.array([0, 7, 300, 65536], np.uint32), size=(13, 17))
    gt_segments = [{'id': 2 ** 24 - 1, 'category_id': 1}, {'id': 5, 'category_id': 2}]
    pred_segments = [{'id': 300, 'category_id': 2}, {'id': 7, 'category_id': 1}, {'id': 65536, 'category_id': 1}]
    overlap = compute_overlap('x', gt_ids, gt_segments, pred_ids, pred_segments, CATEGORIES)
    gt_order = [0] + [s['id'] for s in gt_segments]
    pred_order = [0] + [s['id'] for s in pred_segments]
    expected = np.zeros((3, 4), np.int64)
    for g, p in zip(gt_ids.ravel(), pred_ids.ravel()):
        expected[gt_order.index(g), pred_order.index(p)] += 1
    np.testing.assert_array_equal(overlap.intersection, expected)
    np.testing.assert_array_equal(overlap.gt_pixels, expected[1:].sum(axis=1))
    np.testing.assert_array_equal(overlap.pred_pixels, expected[:, 1:].sum(axis=0))


@pytest.mark.parametrize('bad', [np.uint32(2 ** 24), np.int32(-1), np.int64(2 ** 40), np.uint64(2 ** 63)])
def test_ids_outside_the_24_bit_range_are_named(bad):
    good = np.zeros((2, 3), np.asarray(bad).dtype)
    wrong = good.copy()
    wrong[1, 2] = bad
    with pytest.raises(ValueError, match=r'Image x: ground truth id map values must lie in \[0, 16777216\)'):
        compute_overlap('x', wrong, [], good, [], CATEGORIES)
    with pytest.raises(ValueError, match=r'Image x: prediction id map values must lie in \[0, 16777216\)'):
        compute_overlap('x', good, [], wrong, [], CATEGORIES)

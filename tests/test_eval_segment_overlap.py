"""compute_overlap: intersections against a counting loop written here, and id maps outside the 24-bit range.

Every test runs on both counting paths: numba's compiled pass (when installed) and the numpy fallback.
"""

import numpy as np
import pytest

from evaluation import segment_overlap
from evaluation.segment_overlap import compute_overlap

CATEGORIES = {1: {'id': 1}, 2: {'id': 2}}


@pytest.fixture(autouse=True, params=['numba', 'numpy'])
def counting_path(request, monkeypatch):
    if request.param == 'numba' and segment_overlap.numba is None:
        pytest.skip('numba is not installed')
    if request.param == 'numpy':
        monkeypatch.setattr(segment_overlap, '_count_pairs_compiled', None)
    assert (segment_overlap._count_pairs_compiled is not None) == (request.param == 'numba')
    return request.param


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


@pytest.mark.parametrize('dtypes', [(np.uint32, np.uint32), (np.int32, np.int64), (np.int64, np.uint16)])
def test_runs_of_equal_pairs_are_counted_whole(dtypes):
    # Long horizontal runs that change in gt and prediction at different places, as in real id maps.
    rng = np.random.default_rng(1)
    gt_ids = np.repeat(rng.choice([0, 9, 40], size=(6, 10)), rng.integers(1, 9, 10), axis=1).astype(dtypes[0])
    pred_ids = np.repeat(rng.choice([0, 3, 11], size=(6, 7)), 1, axis=1)
    pred_ids = np.resize(np.repeat(pred_ids, 5, axis=1), gt_ids.shape).astype(dtypes[1])
    gt_segments = [{'id': 9, 'category_id': 1}, {'id': 40, 'category_id': 2}]
    pred_segments = [{'id': 11, 'category_id': 2}, {'id': 3, 'category_id': 1}]
    overlap = compute_overlap('x', gt_ids, gt_segments, pred_ids, pred_segments, CATEGORIES)
    expected = np.zeros((3, 3), np.int64)
    for g, p in zip(gt_ids.ravel().tolist(), pred_ids.ravel().tolist()):
        expected[[0, 9, 40].index(g), [0, 11, 3].index(p)] += 1
    np.testing.assert_array_equal(overlap.intersection, expected)


def test_an_id_missing_from_the_json_is_named_on_either_path():
    gt_ids = np.array([[0, 5, 5, 6]], np.uint32)
    pred_ids = np.array([[7, 7, 7, 7]], np.uint32)
    with pytest.raises(ValueError, match=r'segment ids \[6\] are in the ground truth PNG but not in its JSON'):
        compute_overlap('x', gt_ids, [{'id': 5, 'category_id': 1}], pred_ids, [{'id': 7, 'category_id': 1}],
                        CATEGORIES)

"""Panoptic-DeepLab post-processing: hand-worked cases, a numpy reference, the targets round trip, XLA, multi-scale."""

import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf

from deeplab_axial import common
from deeplab_axial.data import targets
from deeplab_axial.model.post_processor import panoptic_deeplab as pdl
from deeplab_axial.model.post_processor.panoptic_deeplab import PostProcessor


def _one_hot_probs(semantic, num_classes, on=1.0):
    off = (1.0 - on) / (num_classes - 1)
    return np.where(np.eye(num_classes, dtype=bool)[semantic], on, off).astype(np.float32)


def _run(pp, probs, heatmap, offsets):
    out = pp({common.PRED_SEMANTIC_PROBS_KEY: tf.constant(probs), common.PRED_CENTER_HEATMAP_KEY: tf.constant(heatmap),
              common.PRED_OFFSET_MAP_KEY: tf.constant(offsets)})
    return {k: v.numpy() for k, v in out.items()}


def _peaks_heatmap():
    heat = np.zeros((1, 7, 7), np.float32)
    heat[0, 1, 1], heat[0, 1, 2], heat[0, 5, 5], heat[0, 3, 3], heat[0, 5, 1] = 0.9, 0.5, 0.3, 0.05, 0.6
    return heat


def test_find_centers_threshold_nms_and_top_k():
    heat = tf.constant(_peaks_heatmap())
    kwargs = dict(center_threshold=0.1, nms_kernel=3)
    # (1, 2) = 0.5 is suppressed by its neighbour 0.9; (3, 3) = 0.05 is below the threshold.
    centers, scores, valid = pdl.find_instance_centers(heat, keep_k_centers=5, **kwargs)
    np.testing.assert_array_equal(centers.numpy()[0, :3], [[1, 1], [5, 1], [5, 5]])
    np.testing.assert_allclose(scores.numpy()[0], [0.9, 0.6, 0.3, 0.0, 0.0])
    np.testing.assert_array_equal(valid.numpy()[0], [True, True, True, False, False])
    # More centers than k: the highest two are kept.
    centers, scores, valid = pdl.find_instance_centers(heat, keep_k_centers=2, **kwargs)
    np.testing.assert_array_equal(centers.numpy()[0], [[1, 1], [5, 1]])
    assert valid.numpy().all()
    # A 1x1 kernel suppresses nothing.
    _, _, valid = pdl.find_instance_centers(heat, keep_k_centers=5, center_threshold=0.1, nms_kernel=1)
    assert valid.numpy().sum() == 4


def test_more_centers_than_top_k_pixels_join_kept_centers_ties_to_higher_score():
    pp = PostProcessor(num_classes=3, label_divisor=100, ignore_label=0, thing_classes=(1,), nms_kernel=3,
                       keep_k_centers=2)
    probs = _one_hot_probs(np.ones((1, 7, 7), np.int64), 3)
    out = _run(pp, probs, _peaks_heatmap(), np.zeros((1, 7, 7, 2), np.float32))
    inst = out[common.PRED_INSTANCE_KEY][0]
    assert inst[5, 5] == 2  # squared distance 32 to (1, 1), 16 to (5, 1)
    assert inst[3, 3] == 1  # tie (8 and 8): the higher-scoring center wins
    assert inst[0, 6] == 1 and inst[6, 0] == 2
    assert set(np.unique(inst)) == {1, 2}
    for chunk_size in (1, 2, 16):  # the same answer however many centers a loop step compares, eager and compiled
        centers, _, valid = pdl.find_instance_centers(tf.constant(_peaks_heatmap()), center_threshold=0.1,
                                                      nms_kernel=3, keep_k_centers=2)
        fn = tf.function(lambda c, v, o: pdl.group_pixels(c, v, o, chunk_size=chunk_size), jit_compile=True)
        for group in (fn, lambda c, v, o: pdl.group_pixels(c, v, o, chunk_size=chunk_size)):
            np.testing.assert_array_equal(group(centers, valid, tf.zeros([1, 7, 7, 2])).numpy()[0], inst)
    expected_centers = np.zeros((7, 7), np.float32)
    expected_centers[1, 1], expected_centers[5, 1] = 0.9, 0.6
    np.testing.assert_allclose(out[common.PRED_INSTANCE_CENTER_KEY][0], expected_centers)


def _touching_instances_case():
    """1 x 4 x 6, classes 0 void (the ignore label), 1 and 2 things, 3 and 4 stuff, divisor 100."""
    semantic = np.array([[3, 3, 3, 3, 4, 4],
                         [1, 1, 2, 1, 1, 1],
                         [1, 1, 1, 1, 1, 1],
                         [0, 0, 3, 3, 3, 3]])[np.newaxis]
    heat = np.zeros((1, 4, 6), np.float32)
    heat[0, 1, 1], heat[0, 2, 4] = 0.8, 0.6
    offsets = np.zeros((1, 4, 6, 2), np.float32)
    yy, xx = np.mgrid[0:4, 0:6]
    left = xx <= 2
    offsets[0, ..., 0] = np.where(left, 1 - yy, 2 - yy)
    offsets[0, ..., 1] = np.where(left, 1 - xx, 4 - xx)
    return semantic, _one_hot_probs(semantic, 5, on=0.6), heat, offsets


@pytest.mark.parametrize('stuff_area_limit', [2, 3])
def test_touching_instances_vote_stuff_limit_and_scores(stuff_area_limit):
    semantic, probs, heat, offsets = _touching_instances_case()
    pp = PostProcessor(num_classes=5, label_divisor=100, ignore_label=0, thing_classes=(1, 2), nms_kernel=3,
                       keep_k_centers=4, stuff_area_limit=stuff_area_limit)
    out = _run(pp, probs, heat, offsets)
    stuff4 = 400 if stuff_area_limit == 2 else 0  # class 4 has exactly 2 pixels: kept at limit 2, void at 3
    expected = np.array([[300, 300, 300, 300, stuff4, stuff4],
                         [101, 101, 101, 102, 102, 102],
                         [101, 101, 101, 102, 102, 102],
                         [0, 0, 300, 300, 300, 300]])
    np.testing.assert_array_equal(out[common.PRED_PANOPTIC_KEY][0], expected)
    np.testing.assert_array_equal(out[common.PRED_SEMANTIC_KEY], semantic)  # the raw argmax, (1, 2) stays class 2
    np.testing.assert_array_equal(out[common.PRED_INSTANCE_KEY][0], expected % 100)
    # Instance 1 (class 1 by 5 votes to 1): 0.8 x mean(0.6 x 5, 0.1) ; instance 2: 0.6 x 0.6.
    scores = out[common.PRED_INSTANCE_SCORES_KEY][0]
    np.testing.assert_allclose(scores[1, 0], 0.8 * (0.6 * 5 + 0.1) / 6, rtol=1e-5)
    np.testing.assert_allclose(scores[2, 5], 0.36, rtol=1e-5)
    assert np.all(scores[0] == 0) and np.all(scores[3] == 0)


def test_no_centers_makes_thing_pixels_void():
    semantic, probs, _, offsets = _touching_instances_case()
    pp = PostProcessor(num_classes=5, label_divisor=100, ignore_label=0, thing_classes=(1, 2), keep_k_centers=4)
    out = _run(pp, probs, np.zeros((1, 4, 6), np.float32), offsets)
    pan = out[common.PRED_PANOPTIC_KEY][0]
    assert np.all(pan[1:3] == 0) and pan[0, 0] == 300 and pan[0, 5] == 400
    assert np.all(out[common.PRED_INSTANCE_KEY] == 0) and np.all(out[common.PRED_INSTANCE_SCORES_KEY] == 0)


def test_image_smaller_than_top_k_pads_with_invalid_centers():
    heat = np.zeros((1, 3, 3), np.float32)
    heat[0, 1, 1] = 0.7

    def find(h):
        return pdl.find_instance_centers(h, center_threshold=0.1, nms_kernel=3, keep_k_centers=20)

    unknown_size = tf.function(find, input_signature=[tf.TensorSpec([None, None, None], tf.float32)])
    for fn in (find, unknown_size):
        centers, scores, valid = fn(tf.constant(heat))
        assert centers.shape == (1, 20, 2) and scores.shape == (1, 20)
        np.testing.assert_array_equal(centers.numpy()[0, 0], [1, 1])
        np.testing.assert_array_equal(valid.numpy()[0], [True] + [False] * 19)


def test_bad_options_raise():
    with pytest.raises(ValueError, match='keep_k_centers'):
        PostProcessor(num_classes=5, label_divisor=256, ignore_label=0, thing_classes=(1,), keep_k_centers=400)
    with pytest.raises(ValueError, match='thing classes'):
        PostProcessor(num_classes=5, label_divisor=256, ignore_label=0, thing_classes=(7,))


def _numpy_post_process(probs, heat, offsets, divisor, ignore, things, threshold, kernel, k, stuff_limit):
    """Straightforward per-image, per-instance reference of the documented semantics."""
    b, h, w, c = probs.shape
    out = {key: [] for key in ('pan', 'inst', 'score')}
    for i in range(b):
        sem = probs[i].argmax(-1)
        hm = np.where(heat[i] > threshold, heat[i], 0.0)
        pooled = scipy.ndimage.maximum_filter(hm, size=kernel, mode='constant', cval=-np.inf)
        peaks = np.where((hm == pooled) & (hm > 0), hm, 0.0).reshape(-1)
        order = np.argsort(-peaks, kind='stable')[:k]
        centers = [(j // w, j % w, peaks[j]) for j in order if peaks[j] > 0]
        yy, xx = np.mgrid[0:h, 0:w]
        ty, tx = yy + offsets[i, ..., 0], xx + offsets[i, ..., 1]
        inst = np.zeros((h, w), np.int64)
        if centers:
            d = np.stack([(ty - cy) ** 2 + (tx - cx) ** 2 for cy, cx, _ in centers])
            inst = d.argmin(0) + 1
        thing = np.isin(sem, things)
        inst = np.where(thing, inst, 0)
        pan = np.full((h, w), ignore * divisor)
        score = np.zeros((h, w))
        for n in range(1, len(centers) + 1):
            mask = inst == n
            if not mask.any():
                continue
            cls = np.bincount(sem[mask], minlength=c).argmax()
            pan[mask] = cls * divisor + n
            score[mask] = centers[n - 1][2] * probs[i][mask][:, cls].mean()
        for cls in range(c):
            mask = (sem == cls) & ~thing
            if cls != ignore and mask.sum() >= max(stuff_limit, 1):
                pan[mask] = cls * divisor
        out['pan'].append(pan)
        out['inst'].append(np.where(pan == ignore * divisor, 0, pan % divisor))
        out['score'].append(score)
    return {key: np.stack(v) for key, v in out.items()}


def test_matches_numpy_reference_on_random_outputs(rng):
    b, h, w, c = 2, 13, 17, 6
    things = (2, 3, 4)
    for trial in range(3):
        probs = rng.dirichlet(np.ones(c), size=(b, h, w)).astype(np.float32)
        heat = scipy.ndimage.gaussian_filter(rng.random((b, h, w)), sigma=(0, 1, 1)).astype(np.float32) * 2 - 0.7
        offsets = rng.normal(scale=4.0, size=(b, h, w, 2)).astype(np.float32)
        kernel, k, limit = [3, 5, 1][trial], [4, 8, 3][trial], [0, 10, 25][trial]
        pp = PostProcessor(num_classes=c, label_divisor=1000, ignore_label=0, thing_classes=things,
                           center_threshold=0.1, nms_kernel=kernel, keep_k_centers=k, stuff_area_limit=limit)
        got = _run(pp, probs, heat, offsets)
        ref = _numpy_post_process(probs, heat, offsets, 1000, 0, things, 0.1, kernel, k, limit)
        np.testing.assert_array_equal(got[common.PRED_PANOPTIC_KEY], ref['pan'])
        np.testing.assert_array_equal(got[common.PRED_INSTANCE_KEY], ref['inst'])
        np.testing.assert_allclose(got[common.PRED_INSTANCE_SCORES_KEY], ref['score'], rtol=1e-5, atol=1e-7)
        compiled = tf.function(pp, jit_compile=True)({common.PRED_SEMANTIC_PROBS_KEY: probs,
                                                      common.PRED_CENTER_HEATMAP_KEY: heat,
                                                      common.PRED_OFFSET_MAP_KEY: offsets})
        np.testing.assert_array_equal(compiled[common.PRED_PANOPTIC_KEY].numpy(), ref['pan'])


def _segments(panoptic, ignore_value):
    return {v: panoptic == v for v in np.unique(panoptic) if v != ignore_value}


def _panoptic_quality(gt, pred, divisor, ignore_value):
    """Tiny PQ over all classes together: IoU > 0.5 matches of same-class segments."""
    gt_segs, pred_segs = _segments(gt, ignore_value), _segments(pred, ignore_value)
    iou_sum, matched = 0.0, 0
    for g, gm in gt_segs.items():
        for p, pm in pred_segs.items():
            if g // divisor != p // divisor:
                continue
            iou = (gm & pm).sum() / (gm | pm).sum()
            if iou > 0.5:
                iou_sum, matched = iou_sum + iou, matched + 1
    fp, fn = len(pred_segs) - matched, len(gt_segs) - matched
    return iou_sum / (matched + 0.5 * fp + 0.5 * fn)


def test_round_trip_targets_as_perfect_predictions_give_pq_one(rng):
    divisor, ignore, things, c = 100, 0, (1, 2), 5
    h, w = 40, 48
    for _ in range(2):
        pan = np.full((h, w), 3 * divisor, np.int32)
        pan[30:, :20] = 4 * divisor
        pan[:4, 40:] = 0  # void
        # Non-overlapping rectangles of random size on a 4 x 4 grid of 10 x 12 cells: distinct centres.
        iid = 0
        for gy in range(4):
            for gx in range(4):
                if rng.random() < 0.3:
                    continue
                iid += 1
                y0, x0 = gy * 10 + rng.integers(0, 3), gx * 12 + rng.integers(0, 3)
                y1, x1 = y0 + rng.integers(2, 8), x0 + rng.integers(2, 10)
                pan[y0:y1, x0:x1] = rng.choice(things) * divisor + iid
        t = targets.generate_panoptic_targets(pan, label_divisor=divisor, ignore_label=ignore, thing_classes=things)
        pp = PostProcessor(num_classes=c, label_divisor=divisor, ignore_label=ignore, thing_classes=things,
                           nms_kernel=7, keep_k_centers=20)
        out = _run(pp, _one_hot_probs(t[common.GT_SEMANTIC_KEY].numpy(), c)[np.newaxis],
                   t[common.GT_INSTANCE_CENTER_KEY].numpy()[np.newaxis],
                   t[common.GT_INSTANCE_REGRESSION_KEY].numpy()[np.newaxis])
        pred = out[common.PRED_PANOPTIC_KEY][0]
        assert _panoptic_quality(pan, pred, divisor, ignore * divisor) == 1.0
        # Same segments exactly, up to instance renumbering.
        pairs = set(zip(pan.reshape(-1).tolist(), pred.reshape(-1).tolist()))
        assert len(pairs) == len(np.unique(pan)) == len(np.unique(pred))


def test_dynamic_batch_and_size_in_graph_mode(rng, constant_offset_model):
    """As in an exported serving signature: batch, height and width unknown when tracing."""
    images = tf.constant(rng.uniform(0, 255, (2, 15, 19, 3)), tf.float32)
    pp = PostProcessor(num_classes=3, label_divisor=100, ignore_label=0, thing_classes=(1,), keep_k_centers=5)

    def infer(x):
        return pp(constant_offset_model(x))

    traced = tf.function(infer, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    got, want = traced(images), infer(images)
    for key in (common.PRED_PANOPTIC_KEY, common.PRED_INSTANCE_KEY):
        np.testing.assert_array_equal(got[key].numpy(), want[key].numpy())
    np.testing.assert_allclose(got[common.PRED_INSTANCE_CENTER_KEY], want[common.PRED_INSTANCE_CENTER_KEY], rtol=1e-6)

"""In-memory evaluation (what the trainer calls): hand-computed values and summaries, batches, and merging across
workers."""

import os
import subprocess
import sys

import numpy as np
import pytest

from deeplab_axial.data import dataset
from evaluation import metrics as metric_table
from evaluation.cityscapes_instance_ap import average_precision
from evaluation.panoptic_evaluator import PanopticEvaluator
from evaluation.synthetic_panoptic import random_panoptic_pair

SYNTHETIC = dataset.get('synthetic_panoptic')  # contiguous: 1 disc, 2 square, 3 triangle (things), 4 sky, 5 grass
DIV = SYNTHETIC.panoptic_label_divisor
VOID, DISC, SKY, WALL = 0, 1, 4, 6


def _pan(rows):
    return np.array(rows, np.int32)


def _hand_example():
    """A 4x4 image: a disc (6 pixels), sky and void; the prediction's disc takes 7 pixels, 2 of them on void."""
    d1, sky, void = DISC * DIV + 1, SKY * DIV, VOID * DIV
    gt = _pan([[d1, d1, sky, sky], [d1, d1, sky, sky], [d1, d1, sky, sky], [void, void, sky, sky]])
    d5 = DISC * DIV + 5
    pred = _pan([[d5, d5, d5, sky], [d5, d5, sky, sky], [sky, sky, sky, sky], [d5, d5, sky, sky]])
    return gt, pred


def test_hand_computed_pq_and_miou():
    evaluator = PanopticEvaluator.from_descriptor(SYNTHETIC, ['pq', 'miou'])
    evaluator.update(*_hand_example())
    result = evaluator.result()
    # disc: 7 predicted pixels, 2 on void, 4 shared with the 6 GT pixels: IoU = 4 / (7 + 6 - 4 - 2).
    # sky: 9 predicted, 8 GT, 7 shared: IoU = 7 / 10.
    disc_id, sky_id = SYNTHETIC.to_dataset_id(DISC), SYNTHETIC.to_dataset_id(SKY)
    assert result['pq']['per_class'][str(disc_id)]['pq'] == pytest.approx(4 / 7)
    assert result['pq']['per_class'][str(sky_id)]['pq'] == pytest.approx(0.7)
    assert result['pq']['All'] == pytest.approx({'pq': (4 / 7 + 0.7) / 2, 'sq': (4 / 7 + 0.7) / 2, 'rq': 1.0,
                                                 'n': 2})
    assert result['pq']['Things']['pq'] == pytest.approx(4 / 7)
    assert result['pq']['Stuff']['pq'] == pytest.approx(0.7)
    # Semantic: disc tp 4, fn 2 (predicted sky), fp 1 (on GT sky); sky tp 7, fn 1, fp 2; void GT ignored.
    assert result['miou']['per_class'] == pytest.approx({str(disc_id): 4 / 7, str(sky_id): 7 / 10})
    assert result['miou']['mIoU'] == pytest.approx((4 / 7 + 0.7) / 2)


def test_summaries_carry_deeplab2s_tags_with_hand_computed_values():
    gt, pred = _hand_example()
    evaluator = PanopticEvaluator.from_descriptor(SYNTHETIC)
    evaluator.update(gt, pred)
    # PQ: disc IoU 4 / 7 (a thing; its 2 pixels on void leave the union), sky 7 / 10 (stuff), both matched (as
    # above). Mask AP: COCO's IoU keeps those pixels in the union, 4 / 9 < 0.5: the disc matches nothing.
    result = evaluator.result()
    assert metric_table.summaries(result) == pytest.approx({
        'evaluation/pq/PQ': (4 / 7 + 0.7) / 2, 'evaluation/pq/SQ': (4 / 7 + 0.7) / 2, 'evaluation/pq/RQ': 1.0,
        'evaluation/pq/PQ_Things': 4 / 7, 'evaluation/pq/SQ_Things': 4 / 7, 'evaluation/pq/RQ_Things': 1.0,
        'evaluation/pq/PQ_Stuff': 0.7, 'evaluation/pq/SQ_Stuff': 0.7, 'evaluation/pq/RQ_Stuff': 1.0,
        'evaluation/pq/TP': 1.0, 'evaluation/pq/FN': 0.0, 'evaluation/pq/FP': 0.0,
        'evaluation/ap/AP_Mask': 0.0, 'evaluation/ap/AP50_Mask': 0.0, 'evaluation/ap/AP75_Mask': 0.0,
        'evaluation/iou/IoU': (4 / 7 + 0.7) / 2,
    })
    # A disc on 4 of the 6 GT disc pixels and nothing else: IoU 4 / 6 under either rule.
    d5, sky, void = DISC * DIV + 5, SKY * DIV, VOID * DIV
    inside = _pan([[d5, d5, sky, sky], [d5, d5, sky, sky], [sky, sky, sky, sky], [void, void, sky, sky]])
    evaluator = PanopticEvaluator.from_descriptor(SYNTHETIC, ['ap'])
    evaluator.update(gt, inside)
    summaries = metric_table.summaries(evaluator.result())
    assert summaries == pytest.approx({'evaluation/ap/AP_Mask': 0.4, 'evaluation/ap/AP50_Mask': 1.0,
                                       'evaluation/ap/AP75_Mask': 0.0})  # matched at 0.5 .. 0.65 of 0.5 .. 0.95


def test_miou_from_semantic_prediction():
    d1, sky, void = DISC * DIV + 1, SKY * DIV, VOID * DIV
    gt = _pan([[d1, d1, sky, sky], [void, void, sky, sky]])
    panoptic_pred = _pan([[void] * 4, [void] * 4])  # an empty panoptic prediction ...
    semantic_pred = _pan([[DISC, SKY, SKY, SKY], [SKY, SKY, VOID, SKY]])  # ... but a semantic one
    evaluator = PanopticEvaluator.from_descriptor(SYNTHETIC, ['pq', 'miou'])
    evaluator.update(gt, panoptic_pred, semantic_pred=semantic_pred)
    result = evaluator.result()
    # disc: tp 1, fn 1; sky: tp 3, fn 1 (void predicted), fp 1; void GT pixels ignored.
    disc_id, sky_id = SYNTHETIC.to_dataset_id(DISC), SYNTHETIC.to_dataset_id(SKY)
    assert result['miou']['per_class'] == pytest.approx({str(disc_id): 1 / 2, str(sky_id): 3 / 5})
    assert result['pq']['All']['pq'] == 0.0  # PQ still comes from the panoptic prediction


def test_crowd_absorbs_predictions_covering_more_than_half():
    crowd, wall, d1 = DISC * DIV, WALL * DIV, DISC * DIV + 1
    gt = _pan([[crowd] * 4, [wall] * 4])
    evaluator = PanopticEvaluator.from_descriptor(SYNTHETIC, ['pq'])
    evaluator.update(gt, _pan([[d1, d1, d1, wall], [wall] * 4]))  # disc entirely on crowd: not a FP
    result = evaluator.result()['pq']
    assert result['All'] == pytest.approx({'pq': 0.8, 'sq': 0.8, 'rq': 1.0, 'n': 1})
    assert result['Things']['n'] == 0

    evaluator = PanopticEvaluator.from_descriptor(SYNTHETIC, ['pq'])
    evaluator.update(gt, _pan([[d1, d1, d1, wall], [d1, d1, d1, wall]]))  # exactly half on crowd: a FP
    per_class = evaluator.result()['pq']['per_class']
    disc, wall_c = per_class[str(SYNTHETIC.to_dataset_id(DISC))], per_class[str(SYNTHETIC.to_dataset_id(WALL))]
    assert (disc['tp'], disc['fp'], disc['fn']) == (0, 1, 0)
    assert (wall_c['tp'], wall_c['fp'], wall_c['fn']) == (0, 1, 1)  # IoU 1 / 5
    # deeplab2's TP, FN, FP summaries: the means over the classes with tp + fp + fn > 0 (disc and wall).
    summaries = metric_table.summaries(evaluator.result())
    assert (summaries['evaluation/pq/TP'], summaries['evaluation/pq/FP'], summaries['evaluation/pq/FN']) == (
        0.0, 1.0, 0.5)


def test_batches_and_merged_workers_equal_one_stream():
    rng = np.random.default_rng(5)
    pairs = [random_panoptic_pair(rng, SYNTHETIC, 40, 56, 12) for _ in range(6)]
    single = PanopticEvaluator.from_descriptor(SYNTHETIC)
    for gt, pred, scores in pairs:
        single.update(gt, pred, scores)
    workers = [PanopticEvaluator.from_descriptor(SYNTHETIC) for _ in range(2)]
    gts, preds, scores = (np.stack(x) for x in zip(*pairs))
    workers[0].update(gts[:4], preds[:4], scores[:4])  # a batch of 4
    workers[1].update(gts[4:], preds[4:], scores[4:])
    workers[0].merge(workers[1])
    merged, expected = workers[0].result(), single.result()
    assert workers[0].num_images == 6
    assert merged['ap'] == expected['ap'] and merged['miou'] == expected['miou']
    for split in ('All', 'Things', 'Stuff'):
        assert merged['pq'][split] == pytest.approx(expected['pq'][split], abs=1e-12)


def test_update_rejects_mismatched_shapes_and_merge_rejects_other_metrics():
    evaluator = PanopticEvaluator.from_descriptor(SYNTHETIC)
    with pytest.raises(ValueError, match='shape'):
        evaluator.update(np.zeros((4, 4), np.int32), np.zeros((4, 5), np.int32))
    with pytest.raises(ValueError, match='metrics'):
        evaluator.merge(PanopticEvaluator.from_descriptor(SYNTHETIC, ['pq']))
    with pytest.raises(ValueError, match='subset'):
        PanopticEvaluator.from_descriptor(SYNTHETIC, ['pq', 'bleu'])


def test_average_precision_by_hand():
    # Scores 0.9 (TP), 0.8 (FP), 0.7 (TP), one missed GT: 3 GT in all.
    # Distinct thresholds ascending 0.7, 0.8, 0.9: (P, R) = (2/3, 2/3), (1/2, 1/3), (1, 1/3), then (1, 0).
    # Step widths: 0.5 * (r0 - r1) ... with recall padded [r0, r0, r1, r2, 0, 0].
    ap = average_precision(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1]), hard_false_negatives=1)
    recall = [2 / 3, 1 / 3, 1 / 3, 0.0]
    precision = [2 / 3, 1 / 2, 1.0, 1.0]
    padded = [recall[0]] + recall + [0.0]
    expected = sum(p * 0.5 * (padded[i] - padded[i + 2]) for i, p in enumerate(precision))
    assert ap == pytest.approx(expected)
    assert average_precision(np.zeros(0), np.zeros(0), 3) == 0.0


def test_evaluation_imports_without_tensorflow():
    code = ('import sys, evaluation.evaluate, evaluation.panoptic_evaluator, deeplab_axial.data.coco_panoptic_format, '
            'deeplab_axial.atomic_files; sys.exit(int("tensorflow" in sys.modules or "keras" in sys.modules))')
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert subprocess.run([sys.executable, '-c', code], cwd=root, timeout=120).returncode == 0

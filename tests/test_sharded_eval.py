"""trainer/sharded_eval.py: per-worker overlaps merged in record order give one process's metrics exactly; summing
per-worker totals does not (PQ's float sums and AP's tie order change)."""

import numpy as np
import pytest

from deeplab_axial.data import dataset
from evaluation.panoptic_evaluator import PanopticEvaluator
from evaluation.synthetic_panoptic import random_panoptic_pair
from trainer import sharded_eval

_DESCRIPTOR = dataset.get('synthetic_panoptic')


def _images(seed: int, count: int):
    """(gt, pred, scores, semantic prediction) per image; scores are rounded to 0.1, so AP has ties."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        gt, pred, scores = random_panoptic_pair(rng, _DESCRIPTOR, 40, 56, 25)
        semantic = np.clip(pred // _DESCRIPTOR.panoptic_label_divisor, 0, _DESCRIPTOR.num_classes - 1)
        out.append((gt, pred, scores, semantic))
    return out


def _feed(evaluator, images, indices):
    for i in indices:
        gt, pred, scores, semantic = images[i]
        evaluator.update(gt, pred, scores, [f'image{i}'], semantic)


@pytest.mark.parametrize('num_workers,seed', [(2, 0), (3, 1), (4, 2)])
def test_merge_in_record_order_equals_one_process(num_workers, seed):
    images = _images(seed, 10)
    one = PanopticEvaluator.from_descriptor(_DESCRIPTOR)
    _feed(one, images, range(len(images)))
    # Worker w evaluates records w, w + W, ... (input_pipeline's evaluation sharding).
    recorders = [sharded_eval.OverlapRecorder.from_descriptor(_DESCRIPTOR) for _ in range(num_workers)]
    for w, recorder in enumerate(recorders):
        _feed(recorder, images, range(w, len(images), num_workers))
    merged = sharded_eval.merge_in_record_order(recorders)
    assert merged.num_images == len(images)
    assert merged.result() == one.result()


def test_summing_per_worker_totals_is_not_exact():
    """Control: PanopticEvaluator.merge of the workers' totals changes COCO AP (score ties ranked in another image
    order) and PQ's last bits, which is why the trainer replays overlaps instead."""
    images = _images(0, 9)
    one = PanopticEvaluator.from_descriptor(_DESCRIPTOR)
    _feed(one, images, range(9))
    totals = [PanopticEvaluator.from_descriptor(_DESCRIPTOR) for _ in range(2)]
    for w in range(2):
        _feed(totals[w], images, range(w, 9, 2))
    totals[0].merge(totals[1])
    expected, summed = one.result(), totals[0].result()
    assert summed['ap']['AP'] != expected['ap']['AP']
    assert summed['miou'] == expected['miou']  # integer counts: exact either way


def test_unevenly_sharded_workers_are_refused():
    images = _images(3, 5)
    recorders = [sharded_eval.OverlapRecorder.from_descriptor(_DESCRIPTOR) for _ in range(2)]
    _feed(recorders[0], images, [0, 2])
    _feed(recorders[1], images, [1, 3, 4])  # the second worker cannot hold more records than the first
    with pytest.raises(ValueError, match=r'\[2, 3\] images'):
        sharded_eval.merge_in_record_order(recorders)

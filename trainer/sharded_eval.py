"""Panoptic evaluation sharded over workers, with exactly the metrics of one process.

With W workers, worker w evaluates eval records w, w + W, w + 2W, ... (input_pipeline shards evaluation by record,
in file order), so a pass takes about 1/W of the time. PQ sums IoUs in floating point and AP ranks detections with
ties broken by image order, so merging per-worker totals would change the last bits. Instead each worker keeps the
`SegmentOverlap` of its images (a few counts per segment, not the pixels) and, after the pass, all workers exchange
them and add them to one `PanopticEvaluator` in the one-process order: record k is the (k // W)-th image of worker
k % W. Metrics computed from the semantic head instead (`SemanticMetric`: mIoU, an integer confusion matrix) are
summed over workers.
"""

from typing import Collection, List, Sequence, Tuple

from evaluation.metrics import SemanticMetric
from evaluation.panoptic_evaluator import PanopticEvaluator
from evaluation.segment_overlap import SegmentOverlap


class OverlapRecorder(PanopticEvaluator):
    """A PanopticEvaluator whose `add_overlap` keeps each image's overlap for `merge_in_record_order` instead of
    adding it up (the metrics that take a semantic prediction still accumulate it: `PanopticEvaluator.update`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.overlaps: List[Tuple[SegmentOverlap, Tuple[str, ...]]] = []

    def add_overlap(self, overlap: SegmentOverlap, skip: Collection[str] = ()) -> None:
        self.overlaps.append((overlap, tuple(skip)))
        self.num_images += 1


def merge_in_record_order(recorders: Sequence[OverlapRecorder]) -> PanopticEvaluator:
    """One evaluator holding every worker's images, added in the order one process reads the records.

    Args:
      recorders: one per worker, in worker order (worker w evaluated records w, w + W, ...).
    """
    first, count = recorders[0], len(recorders)
    merged = PanopticEvaluator(first.categories, first.metrics, first.descriptor)
    sizes = [len(r.overlaps) for r in recorders]
    if any(not sizes[w + 1] <= sizes[w] <= sizes[w + 1] + 1 for w in range(count - 1)):
        raise ValueError(f'Workers evaluated {sizes} images; a record-sharded pass gives each worker the same number, '
                         'the first ones one more')
    for k in range(sum(sizes)):
        merged.add_overlap(*recorders[k % count].overlaps[k // count])
    for name, accumulator in merged.accumulators.items():
        if isinstance(accumulator, SemanticMetric):
            for recorder in recorders:
                accumulator.merge(recorder.accumulators[name])
    return merged

"""Mean IoU from a confusion matrix, as cityscapesscripts' pixel-level evaluation computes it.

Rows are GT classes, columns predicted classes plus one last column for "anything else" (void or a class outside
the evaluated set). Void GT pixels are left out. Per class, IoU = tp / (tp + fp + fn) with fn = the rest of its row
(predicting void on a valid pixel is a miss) and fp = the rest of its column over valid GT rows; classes with an
empty denominator are left out of the mean. The metric table's 'miou' (evaluation/metrics.py).
"""

from typing import Dict, Mapping

import numpy as np

from evaluation.segment_overlap import SegmentOverlap


class MeanIoU:
    """Mergeable confusion-matrix accumulator.

    Args:
      categories: dataset category id -> {...}: the evaluated classes.
    """

    def __init__(self, categories: Mapping[int, dict]):
        self.class_ids = np.array(sorted(categories), dtype=np.int64)
        n = len(self.class_ids)
        self.confusion = np.zeros((n, n + 1), np.int64)

    def _slots(self, ids: np.ndarray) -> np.ndarray:
        """Class ids -> row/column index; unknown ids -> the last column."""
        slot = np.searchsorted(self.class_ids, ids)
        slot = np.minimum(slot, len(self.class_ids))
        known = slot < len(self.class_ids)
        known[known] = self.class_ids[slot[known]] == ids[known]
        return np.where(known, slot, len(self.class_ids))

    def add_semantic(self, semantic_gt: np.ndarray, semantic_pred: np.ndarray) -> None:
        """Accumulates two semantic maps of one image (dataset category ids); GT pixels outside the classes (void)
        are skipped."""
        gt = self._slots(np.asarray(semantic_gt).ravel().astype(np.int64))
        pred = self._slots(np.asarray(semantic_pred).ravel().astype(np.int64))
        n = len(self.class_ids)
        valid = gt < n
        counts = np.bincount(gt[valid] * (n + 1) + pred[valid], minlength=n * (n + 1))
        self.confusion += counts.reshape(n, n + 1)

    def add(self, overlap: SegmentOverlap) -> None:
        """Accumulates one image from its segment overlap: a pixel's class is its segment's category."""
        n = len(self.class_ids)
        gt_slot = np.concatenate([[n], self._slots(overlap.gt_category)])
        pred_slot = np.concatenate([[n], self._slots(overlap.pred_category)])
        rows, cols = np.nonzero(overlap.intersection)
        keep = gt_slot[rows] < n
        np.add.at(self.confusion, (gt_slot[rows[keep]], pred_slot[cols[keep]]),
                  overlap.intersection[rows[keep], cols[keep]])

    def merge(self, other: 'MeanIoU') -> None:
        if not np.array_equal(self.class_ids, other.class_ids):
            raise ValueError('Cannot merge MeanIoU accumulators over different classes')
        self.confusion += other.confusion

    def result(self) -> Dict:
        """{'mIoU': mean over classes with tp + fp + fn > 0, 'per_class': {'class id': IoU}} (absent classes left
        out)."""
        n = len(self.class_ids)
        tp = np.diag(self.confusion[:, :n]).astype(np.float64)
        fn = self.confusion.sum(axis=1) - tp
        fp = self.confusion[:, :n].sum(axis=0) - tp
        denominator = tp + fp + fn
        present = denominator > 0
        iou = np.where(present, tp / np.maximum(denominator, 1), np.nan)
        per_class = {str(c): float(v) for c, v in zip(self.class_ids, iou) if not np.isnan(v)}
        return {'mIoU': float(np.mean(iou[present])) if present.any() else 0.0, 'per_class': per_class}

    @staticmethod
    def summaries(result: Dict) -> Dict[str, float]:
        """deeplab2's tag."""
        return {'evaluation/iou/IoU': result['mIoU']}

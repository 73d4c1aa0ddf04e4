"""Cityscapes instance-level AP of the thing segments of panoptic predictions (cityscapesscripts' rules).

For each thing class and IoU threshold t in 0.5:0.05:0.95 (IoU = intersection / plain union): a GT instance counts
when it is not crowd and has at least `min_region_size` pixels; a detection with IoU > t against one is a true
positive (panoptic segments never overlap, so there is at most one); a GT without one is a miss. A detection that
has IoU > t with no same-class GT region at all (crowd and small ones included) is a false positive unless the
share of its pixels on void, on same-class crowd and on same-class small GT exceeds t. Precision/recall are taken at
every distinct score and AP integrates them as cityscapesscripts does; AP averages classes and thresholds (classes
without GT left out), AP50 is the t = 0.5 column.
"""

from typing import Dict, List, Mapping

import numpy as np

from evaluation.segment_overlap import SegmentOverlap

OVERLAPS = np.arange(0.5, 1.0, 0.05)
MIN_REGION_SIZE = 100


def average_precision(scores: np.ndarray, is_true: np.ndarray, hard_false_negatives: int) -> float:
    """cityscapesscripts' AP: precision/recall at each distinct score, integrated with half-step widths.

    Args:
      scores: [n] detection scores (true positives and counted false positives).
      is_true: [n] 1 for true positives, 0 for false positives.
      hard_false_negatives: GT instances no detection matched.
    """
    if scores.size == 0:
        return 0.0
    order = np.argsort(scores)
    sorted_scores = scores[order]
    cumulative = np.cumsum(is_true[order].astype(np.float64))
    _, first = np.unique(sorted_scores, return_index=True)
    n_true = cumulative[-1]
    below = np.concatenate([[0.0], cumulative])[first]  # true positives with a lower score
    tp = n_true - below
    fp = scores.size - first - tp
    fn = below + hard_false_negatives
    precision = np.append(tp / (tp + fp), 1.0)
    recall = np.append(tp / (tp + fn), 0.0)
    padded = np.concatenate([[recall[0]], recall, [0.0]])
    step = 0.5 * (padded[:-2] - padded[2:])
    return float(np.dot(precision, step))


class CityscapesInstanceAP:
    """Mergeable accumulator of Cityscapes instance AP.

    Args:
      categories: dataset category id -> {'isthing': 0/1, ...}; the thing categories are the evaluated classes.
      min_region_size: GT instances smaller than this are ignored (cityscapesscripts: 100 pixels).
    """

    def __init__(self, categories: Mapping[int, dict], min_region_size: int = MIN_REGION_SIZE):
        self.thing_ids = sorted(c for c, info in categories.items() if info.get('isthing', 0))
        self.min_region_size = min_region_size
        self._detections: List[np.ndarray] = []  # per image [n, 6]: category, score, pixels, iou, any_iou, ignored
        self._gt_counts = np.zeros(len(self.thing_ids), np.int64)

    def add(self, overlap: SegmentOverlap) -> None:
        things = np.array(self.thing_ids, np.int64)
        inter = overlap.intersection[1:, 1:].astype(np.float64)
        gt_pixels = overlap.gt_pixels.astype(np.float64)
        gt_cat = overlap.gt_category
        gt_thing = np.isin(gt_cat, things)
        valid = gt_thing & ~overlap.gt_iscrowd & (overlap.gt_pixels >= self.min_region_size)
        self._gt_counts += np.array([np.count_nonzero(valid & (gt_cat == c)) for c in self.thing_ids], np.int64)

        d = np.nonzero(np.isin(overlap.pred_category, things))[0]
        pred_pixels = overlap.pred_pixels[d].astype(np.float64)
        inter = inter[:, d]
        same = (gt_cat[:, None] == overlap.pred_category[d][None, :]) & gt_thing[:, None]
        union = gt_pixels[:, None] + pred_pixels[None, :] - inter
        iou = np.where(same & (inter > 0), inter / np.maximum(union, 1.0), 0.0)
        best_valid = np.where(valid[:, None], iou, 0.0).max(axis=0, initial=0.0)
        best_any = iou.max(axis=0, initial=0.0)
        # Ignored pixels: void, plus same-class crowd, plus same-class small GT (crowd that is small counts twice,
        # as in cityscapesscripts).
        small = overlap.gt_pixels < self.min_region_size
        weight = (overlap.gt_iscrowd.astype(np.float64) + small)[:, None] * same
        ignored = overlap.intersection[0, 1:][d] + (weight * inter).sum(axis=0)
        self._detections.append(np.stack([overlap.pred_category[d].astype(np.float64), overlap.pred_score[d],
                                          pred_pixels, best_valid, best_any, ignored], axis=1))

    def merge(self, other: 'CityscapesInstanceAP') -> None:
        if self.thing_ids != other.thing_ids or self.min_region_size != other.min_region_size:
            raise ValueError('Cannot merge CityscapesInstanceAP accumulators with different settings')
        self._detections.extend(other._detections)
        self._gt_counts += other._gt_counts

    def per_class_ap(self) -> np.ndarray:
        """[num thing classes, num thresholds] AP; NaN for a class without GT."""
        detections = np.concatenate(self._detections) if self._detections else np.zeros((0, 6))
        ap = np.full((len(self.thing_ids), OVERLAPS.size), np.nan)
        for k, c in enumerate(self.thing_ids):
            if self._gt_counts[k] == 0:
                continue
            det = detections[detections[:, 0] == c]
            if det.shape[0] == 0:
                ap[k] = 0.0
                continue
            _, score, pixels, best_valid, best_any, ignored = det.T
            for t, threshold in enumerate(OVERLAPS):
                true_positive = best_valid > threshold
                false_positive = (best_any <= threshold) & (ignored / pixels <= threshold)
                keep = true_positive | false_positive
                misses = int(self._gt_counts[k] - np.count_nonzero(true_positive))
                ap[k, t] = average_precision(score[keep], true_positive[keep], misses)
        return ap

    def result(self) -> Dict[str, float]:
        """{'AP', 'AP50', 'per_class': {category id: {'AP', 'AP50'}}}; 0.0 where no class has GT."""
        ap = self.per_class_ap()
        has_gt = ~np.isnan(ap[:, 0])
        out = {'AP': float(np.mean(ap[has_gt])) if has_gt.any() else 0.0,
               'AP50': float(np.mean(ap[has_gt, 0])) if has_gt.any() else 0.0}
        out['per_class'] = {int(c): {'AP': float(np.mean(ap[k])), 'AP50': float(ap[k, 0])}
                            for k, c in enumerate(self.thing_ids) if has_gt[k]}
        return out

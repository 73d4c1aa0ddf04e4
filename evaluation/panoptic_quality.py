"""Panoptic quality (PQ = SQ * RQ, Kirillov et al. 2019) with the rules of panopticapi and cityscapesscripts.

Per image and category: a GT and a predicted segment of the same category match when IoU > 0.5, where the union
leaves out the predicted pixels on void. Crowd GT segments never match; an unmatched prediction is no false positive
when more than half of it lies on void plus the crowd region of its category (the official tools take the last crowd
segment of that category listed in the JSON). Unmatched non-crowd GT segments are false negatives. Class averages
run over the classes with tp + fp + fn > 0, for All, Things and Stuff. The metric table's 'pq' (evaluation/metrics.py).
"""

from typing import Dict, Mapping

import numpy as np

from evaluation.segment_overlap import SegmentOverlap


class PanopticQuality:
    """Mergeable PQ accumulator over images (one `SegmentOverlap` each); its state is four arrays.

    Args:
      categories: dataset category id -> {'isthing': 0/1, ...} (the GT JSON's categories).
    """

    def __init__(self, categories: Mapping[int, dict]):
        self.category_ids = np.array(sorted(categories), dtype=np.int64)
        self.isthing = np.array([bool(categories[c].get('isthing', 0)) for c in self.category_ids])
        n = len(self.category_ids)
        self.iou = np.zeros(n, np.float64)
        self.tp = np.zeros(n, np.int64)
        self.fp = np.zeros(n, np.int64)
        self.fn = np.zeros(n, np.int64)

    def _slots(self, category: np.ndarray, image_name: str) -> np.ndarray:
        slot = np.searchsorted(self.category_ids, category)
        slot = np.minimum(slot, max(len(self.category_ids) - 1, 0))
        if category.size and not np.array_equal(self.category_ids[slot], category):
            bad = np.setdiff1d(category, self.category_ids)
            raise ValueError(f'Image {image_name}: category ids {bad.tolist()} are not among the evaluated '
                             f'categories {self.category_ids.tolist()}')
        return slot

    def add(self, overlap: SegmentOverlap) -> None:
        """Accumulates one image."""
        inter = overlap.intersection
        name = overlap.image_name
        gt_cat, pred_cat = overlap.gt_category, overlap.pred_category
        pred_on_void = inter[0, 1:]
        same = gt_cat[:, None] == pred_cat[None, :]
        union = overlap.gt_area[:, None] + overlap.pred_pixels[None, :] - inter[1:, 1:] - pred_on_void[None, :]
        with np.errstate(divide='ignore', invalid='ignore'):
            iou = np.where(same & ~overlap.gt_iscrowd[:, None] & (inter[1:, 1:] > 0),
                           inter[1:, 1:] / np.maximum(union, 1), 0.0)
        match = iou > 0.5
        gt_matched = match.any(axis=1)
        pred_matched = match.any(axis=0)
        gi, pi = np.nonzero(match)
        np.add.at(self.iou, self._slots(gt_cat[gi], name), iou[gi, pi])
        np.add.at(self.tp, self._slots(gt_cat[gi], name), 1)

        fn = ~gt_matched & ~overlap.gt_iscrowd
        np.add.at(self.fn, self._slots(gt_cat[fn], name), 1)

        # The crowd region of each category: the last crowd segment of that category in JSON order.
        crowd_row = {int(c): i for i, c in enumerate(gt_cat) if overlap.gt_iscrowd[i]}
        ignored = pred_on_void.astype(np.float64).copy()
        for j, c in enumerate(pred_cat):
            row = crowd_row.get(int(c))
            if row is not None:
                ignored[j] += inter[row + 1, j + 1]
        fp = ~pred_matched & ~(ignored / overlap.pred_pixels > 0.5)
        np.add.at(self.fp, self._slots(pred_cat[fp], name), 1)

    def merge(self, other: 'PanopticQuality') -> None:
        """Adds another accumulator's counts (same categories), e.g. from a parallel worker."""
        if not np.array_equal(self.category_ids, other.category_ids):
            raise ValueError('Cannot merge PanopticQuality accumulators over different categories')
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn

    def _average(self, select: np.ndarray) -> Dict[str, float]:
        tp, fp, fn, iou = self.tp[select], self.fp[select], self.fn[select], self.iou[select]
        present = tp + fp + fn > 0
        n = int(present.sum())
        if n == 0:
            return {'pq': 0.0, 'sq': 0.0, 'rq': 0.0, 'n': 0}
        tp, fp, fn, iou = tp[present], fp[present], fn[present], iou[present]
        denominator = tp + 0.5 * fp + 0.5 * fn
        pq = iou / denominator
        sq = np.where(tp > 0, iou / np.maximum(tp, 1), 0.0)
        rq = tp / denominator
        # Python sums in category order, as the official tools add them up.
        return {'pq': sum(pq.tolist()) / n, 'sq': sum(sq.tolist()) / n, 'rq': sum(rq.tolist()) / n, 'n': n}

    def result(self) -> Dict[str, dict]:
        """{'All'|'Things'|'Stuff': {pq, sq, rq, n}, 'per_class': {'category id': {pq, sq, rq, tp, fp, fn}}}."""
        everything = np.ones(len(self.category_ids), bool)
        out = {'All': self._average(everything), 'Things': self._average(self.isthing),
               'Stuff': self._average(~self.isthing)}
        per_class = {}
        for k, c in enumerate(self.category_ids.tolist()):
            tp, fp, fn, iou = int(self.tp[k]), int(self.fp[k]), int(self.fn[k]), float(self.iou[k])
            denominator = tp + 0.5 * fp + 0.5 * fn
            per_class[str(c)] = {'pq': iou / denominator if denominator else 0.0,
                                 'sq': iou / tp if tp else 0.0,
                                 'rq': tp / denominator if denominator else 0.0,
                                 'tp': tp, 'fp': fp, 'fn': fn}
        out['per_class'] = per_class
        return out

    @staticmethod
    def summaries(result: Dict[str, dict]) -> Dict[str, float]:
        """deeplab2's tags: PQ, SQ, RQ (All, and _Things / _Stuff) and TP, FN, FP, the means over the classes with
        tp + fp + fn > 0 as deeplab2 reports them."""
        tags = {f'evaluation/pq/{metric.upper()}{suffix}': result[part][metric]
                for part, suffix in (('All', ''), ('Things', '_Things'), ('Stuff', '_Stuff'))
                for metric in ('pq', 'sq', 'rq')}
        present = [c for c in result['per_class'].values() if c['tp'] + c['fp'] + c['fn'] > 0]
        for count in ('tp', 'fn', 'fp'):
            tags[f'evaluation/pq/{count.upper()}'] = sum(c[count] for c in present) / max(len(present), 1)
        return tags


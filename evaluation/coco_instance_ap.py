"""COCO mask AP of the thing segments of panoptic predictions, scored by pycocotools' COCOeval.

Each thing segment is one detection (score from `score`, default 1.0); GT thing segments are the annotations, crowd
ones with iscrowd = 1, exactly as panopticapi's panoptic-to-detection converter makes them. Because panoptic
segments come with their pixel intersections already counted, the mask IoUs are computed from those counts with
the rule of pycocotools' `maskUtils.iou` (union = detection area for crowd GT) instead of encoding and comparing
RLE masks; matching, accumulation and the 12 summary numbers are COCOeval's own.
"""

import contextlib
import io
from typing import Dict, List, Mapping

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from evaluation.segment_overlap import SegmentOverlap

COCO_AP_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')


class _OverlapCOCOeval(COCOeval):
    """COCOeval whose IoUs come from stored pixel intersections (same numbers as maskUtils.iou on the masks)."""

    def __init__(self, coco_gt: COCO, coco_dt: COCO, intersections: List[np.ndarray]):
        super().__init__(coco_gt, coco_dt, iouType='bbox')  # 'bbox' keeps _prepare from building RLEs.
        self._intersections = intersections

    def computeIoU(self, imgId, catId):  # noqa: N802 (COCOeval's name)
        gt = self._gts[imgId, catId]
        dt = self._dts[imgId, catId]
        if not gt or not dt:
            return []
        order = np.argsort([-d['score'] for d in dt], kind='mergesort')
        dt = [dt[i] for i in order][:self.params.maxDets[-1]]
        inter = self._intersections[imgId][np.ix_([d['row'] for d in dt], [g['row'] for g in gt])].astype(np.float64)
        dt_area = np.array([d['area'] for d in dt], np.float64)[:, None]
        gt_pixels = np.array([g['pixels'] for g in gt], np.float64)[None, :]
        crowd = np.array([bool(g['iscrowd']) for g in gt])[None, :]
        union = np.where(crowd, dt_area, dt_area + gt_pixels - inter)
        return np.where(inter > 0, inter / np.where(inter > 0, union, 1.0), 0.0)


class CocoInstanceAP:
    """Mergeable accumulator of COCO mask AP over images.

    Args:
      categories: dataset category id -> {'isthing': 0/1, ...}; only thing categories are evaluated.
    """

    def __init__(self, categories: Mapping[int, dict]):
        self.thing_ids = sorted(c for c, info in categories.items() if info.get('isthing', 0))
        self._images: List[dict] = []

    def add(self, overlap: SegmentOverlap) -> None:
        """Keeps the thing segments of one image and their intersections."""
        things = np.array(self.thing_ids, np.int64)
        g = np.nonzero(np.isin(overlap.gt_category, things))[0]
        d = np.nonzero(np.isin(overlap.pred_category, things))[0]
        self._images.append({
            'gt_category': overlap.gt_category[g], 'gt_iscrowd': overlap.gt_iscrowd[g],
            'gt_area': overlap.gt_area[g], 'gt_pixels': overlap.gt_pixels[g],
            'dt_category': overlap.pred_category[d], 'dt_score': overlap.pred_score[d],
            'dt_area': overlap.pred_pixels[d], 'intersection': overlap.intersection[np.ix_(g + 1, d + 1)].T})

    def merge(self, other: 'CocoInstanceAP') -> None:
        if self.thing_ids != other.thing_ids:
            raise ValueError('Cannot merge CocoInstanceAP accumulators over different categories')
        self._images.extend(other._images)

    def result(self) -> Dict[str, float]:
        """The 12 COCO numbers (pycocotools' `stats`; -1 where a range has no GT), or zeros with no GT."""
        gt_anns, dt_anns = [], []
        for i, image in enumerate(self._images):
            for row in range(len(image['gt_category'])):
                gt_anns.append({'id': len(gt_anns) + 1, 'image_id': i, 'row': row,
                                'category_id': int(image['gt_category'][row]),
                                'iscrowd': int(image['gt_iscrowd'][row]), 'area': float(image['gt_area'][row]),
                                'pixels': int(image['gt_pixels'][row]), 'bbox': [0, 0, 0, 0]})
            for row in range(len(image['dt_category'])):
                dt_anns.append({'id': len(dt_anns) + 1, 'image_id': i, 'row': row,
                                'category_id': int(image['dt_category'][row]),
                                'score': float(image['dt_score'][row]), 'area': float(image['dt_area'][row]),
                                'iscrowd': 0, 'bbox': [0, 0, 0, 0]})
        if not gt_anns:
            return {name: 0.0 for name in COCO_AP_NAMES}
        images = [{'id': i} for i in range(len(self._images))]
        categories = [{'id': c} for c in self.thing_ids]
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO()
            coco_gt.dataset = {'images': images, 'annotations': gt_anns, 'categories': categories}
            coco_gt.createIndex()
            coco_dt = COCO()
            coco_dt.dataset = {'images': images, 'annotations': dt_anns, 'categories': categories}
            coco_dt.createIndex()
            evaluator = _OverlapCOCOeval(coco_gt, coco_dt, [image['intersection'] for image in self._images])
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        return {name: float(v) for name, v in zip(COCO_AP_NAMES, evaluator.stats)}

"""One entry point over all metrics, for in-memory predictions (the trainer) and for files (the CLI).

Both uses go through the same per-image `SegmentOverlap`: in memory, a panoptic map is first split into segments
the way `write_coco_panoptic` would write it, so evaluating arrays and evaluating the files written from them give
the same numbers. Accumulators are mergeable, so replicas or worker processes can each fill one and merge.
"""

from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from deeplab_axial.data.coco_panoptic_format import categories_from_descriptor, panoptic_to_segments
from deeplab_axial.data.dataset import DatasetDescriptor
from evaluation.cityscapes_instance_ap import CityscapesInstanceAP
from evaluation.coco_instance_ap import CocoInstanceAP
from evaluation.mean_iou import MeanIoU
from evaluation.panoptic_quality import PanopticQuality
from evaluation.segment_overlap import SegmentOverlap, compute_overlap

METRICS = ('pq', 'ap', 'miou')


class PanopticEvaluator:
    """PQ, AP (COCO and Cityscapes) and mIoU accumulated over images.

    Args:
      categories: dataset category id -> {'isthing': 0/1, ...}, as in a COCO panoptic JSON.
      metrics: any of 'pq', 'ap', 'miou'.
      descriptor: needed only for `update` (in-memory panoptic maps).
    """

    def __init__(self, categories: Mapping[int, dict], metrics: Sequence[str] = METRICS,
                 descriptor: Optional[DatasetDescriptor] = None):
        unknown = sorted(set(metrics) - set(METRICS))
        if unknown or not metrics:
            raise ValueError(f'metrics must be a non-empty subset of {list(METRICS)}; received {list(metrics)}')
        self.categories = {int(k): dict(v) for k, v in categories.items()}
        self.metrics = tuple(m for m in METRICS if m in metrics)
        self.descriptor = descriptor
        self.num_images = 0
        self.pq = PanopticQuality(self.categories) if 'pq' in self.metrics else None
        self.coco_ap = CocoInstanceAP(self.categories) if 'ap' in self.metrics else None
        self.cityscapes_ap = CityscapesInstanceAP(self.categories) if 'ap' in self.metrics else None
        self.miou = MeanIoU(sorted(self.categories)) if 'miou' in self.metrics else None

    @classmethod
    def from_descriptor(cls, descriptor: DatasetDescriptor,
                        metrics: Sequence[str] = METRICS) -> 'PanopticEvaluator':
        """An evaluator over a dataset's classes (void excluded), with category ids from `to_dataset_id`."""
        categories = {c['id']: c for c in categories_from_descriptor(descriptor)}
        return cls(categories, metrics, descriptor)

    def _accumulators(self):
        return [a for a in (self.pq, self.coco_ap, self.cityscapes_ap, self.miou) if a is not None]

    def add_overlap(self, overlap: SegmentOverlap, with_miou: bool = True) -> None:
        """Accumulates one image given as a `SegmentOverlap` (mIoU too unless `with_miou` is False)."""
        for accumulator in self._accumulators():
            if with_miou or accumulator is not self.miou:
                accumulator.add(overlap)
        self.num_images += 1

    def update(self, panoptic_gt: np.ndarray, panoptic_pred: np.ndarray,
               instance_scores: Optional[np.ndarray] = None, image_names: Optional[Sequence[str]] = None,
               semantic_pred: Optional[np.ndarray] = None) -> None:
        """Accumulates in-memory panoptic maps, one image or a batch.

        Args:
          panoptic_gt: [height, width] or [batch, height, width] int, class * divisor + instance; void = ignore
            class, thing with instance 0 = crowd.
          panoptic_pred: same shape, same encoding.
          instance_scores: optional, same shape, float: each pixel carries its instance's score (for AP;
            default score 1.0).
          image_names: optional, one per image, for error messages.
          semantic_pred: optional, same shape, contiguous class ids (the semantic head's argmax): mIoU is then
            computed from it, as deeplab2 reports it, instead of from the panoptic prediction.
        """
        if self.descriptor is None:
            raise ValueError('update() needs a DatasetDescriptor; build the evaluator with from_descriptor()')
        panoptic_gt, panoptic_pred = np.asarray(panoptic_gt), np.asarray(panoptic_pred)
        if panoptic_gt.shape != panoptic_pred.shape or panoptic_gt.ndim not in (2, 3):
            raise ValueError('panoptic_gt and panoptic_pred must share a [height, width] or [batch, height, width] '
                             f'shape; received {panoptic_gt.shape} and {panoptic_pred.shape}')
        if semantic_pred is not None and np.shape(semantic_pred) != panoptic_gt.shape:
            raise ValueError(f'semantic_pred must have the panoptic shape {panoptic_gt.shape}; received '
                             f'{np.shape(semantic_pred)}')
        if panoptic_gt.ndim == 2:
            panoptic_gt, panoptic_pred = panoptic_gt[None], panoptic_pred[None]
            instance_scores = None if instance_scores is None else np.asarray(instance_scores)[None]
            semantic_pred = None if semantic_pred is None else np.asarray(semantic_pred)[None]
        use_semantic = semantic_pred is not None and self.miou is not None
        for b in range(panoptic_gt.shape[0]):
            name = image_names[b] if image_names is not None else f'#{self.num_images}'
            gt_ids, gt_segments = panoptic_to_segments(panoptic_gt[b], self.descriptor)
            pred_ids, pred_segments = panoptic_to_segments(
                panoptic_pred[b], self.descriptor, None if instance_scores is None else instance_scores[b])
            self.add_overlap(compute_overlap(str(name), gt_ids, gt_segments, pred_ids, pred_segments,
                                             self.categories), with_miou=not use_semantic)
            if use_semantic:
                self.miou.add_semantic(self._dataset_ids(panoptic_gt[b] // self.descriptor.panoptic_label_divisor),
                                       self._dataset_ids(np.asarray(semantic_pred[b])))

    def _dataset_ids(self, semantic: np.ndarray) -> np.ndarray:
        """Contiguous class ids -> dataset category ids; void and out-of-range ids -> -1 (not evaluated)."""
        d = self.descriptor
        lut = np.array([d.to_dataset_id(c) if c != d.ignore_label else -1 for c in range(d.num_classes)], np.int64)
        inside = (semantic >= 0) & (semantic < d.num_classes)
        return np.where(inside, lut[np.clip(semantic, 0, d.num_classes - 1)], -1)

    def merge(self, other: 'PanopticEvaluator') -> None:
        """Adds another evaluator's images (same categories and metrics)."""
        if self.metrics != other.metrics:
            raise ValueError(f'Cannot merge evaluators of metrics {self.metrics} and {other.metrics}')
        for mine, theirs in zip(self._accumulators(), other._accumulators()):
            mine.merge(theirs)
        self.num_images += other.num_images

    def result(self) -> Dict[str, dict]:
        """{'pq': {...}, 'ap': {...}, 'miou': {...}} for the requested metrics (the CLI's JSON layout)."""
        out = {}
        if self.pq is not None:
            pq = self.pq.result()
            pq['per_class'] = {str(c): {k: v[k] for k in ('pq', 'sq', 'rq', 'tp', 'fp', 'fn')}
                               for c, v in pq['per_class'].items()}
            out['pq'] = pq
        if self.coco_ap is not None:
            ap = self.coco_ap.result()
            cityscapes = self.cityscapes_ap.result()
            ap['cityscapes_AP'] = cityscapes['AP']
            ap['cityscapes_AP50'] = cityscapes['AP50']
            out['ap'] = ap
        if self.miou is not None:
            miou = self.miou.result()
            miou['per_class'] = {str(c): v for c, v in miou['per_class'].items()}
            out['miou'] = miou
        return out

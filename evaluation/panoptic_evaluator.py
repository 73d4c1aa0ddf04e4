"""One entry point over all metrics, for in-memory predictions (the trainer) and for files (the CLI).

Both uses go through the same per-image `SegmentOverlap`: in memory, a panoptic map is first split into segments
the way `write_coco_panoptic` would write it, so evaluating arrays and evaluating the files written from them give
the same numbers. Accumulators are mergeable, so replicas or worker processes can each fill one and merge.
"""

from typing import Collection, Dict, Mapping, Optional, Sequence

import numpy as np

from deeplab_axial.data.coco_panoptic_format import categories_from_descriptor, panoptic_to_segments
from deeplab_axial.data.dataset import DatasetDescriptor
from evaluation.metrics import METRICS, Metric, SemanticMetric
from evaluation.segment_overlap import SegmentOverlap, compute_overlap


class PanopticEvaluator:
    """The metrics of the table (evaluation/metrics.py: PQ, AP of COCO and Cityscapes, mIoU, ...) over images.

    Args:
      categories: dataset category id -> {'isthing': 0/1, ...}, as in a COCO panoptic JSON.
      metrics: names in `METRICS`; None = all of them.
      descriptor: needed only for `update` (in-memory panoptic maps).
    """

    def __init__(self, categories: Mapping[int, dict], metrics: Optional[Sequence[str]] = None,
                 descriptor: Optional[DatasetDescriptor] = None):
        metrics = tuple(METRICS) if metrics is None else tuple(metrics)
        unknown = sorted(set(metrics) - set(METRICS))
        if unknown or not metrics:
            raise ValueError(f'metrics must be a non-empty subset of {list(METRICS)}; received {list(metrics)}')
        self.categories = {int(k): dict(v) for k, v in categories.items()}
        self.metrics = tuple(m for m in METRICS if m in metrics)
        self.descriptor = descriptor
        self.num_images = 0
        self.accumulators: Dict[str, Metric] = {name: METRICS[name](self.categories) for name in self.metrics}

    @classmethod
    def from_descriptor(cls, descriptor: DatasetDescriptor,
                        metrics: Optional[Sequence[str]] = None) -> 'PanopticEvaluator':
        """An evaluator over a dataset's classes (void excluded), with category ids from `to_dataset_id`."""
        categories = {c['id']: c for c in categories_from_descriptor(descriptor)}
        return cls(categories, metrics, descriptor)

    def add_overlap(self, overlap: SegmentOverlap, skip: Collection[str] = ()) -> None:
        """Accumulates one image given as a `SegmentOverlap` into every metric except those named in `skip` (the
        ones that took this image's semantic prediction instead)."""
        for name, accumulator in self.accumulators.items():
            if name not in skip:
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
          semantic_pred: optional, same shape, contiguous class ids (the semantic head's argmax): the metrics that
            can (`SemanticMetric`: mIoU) are then computed from it, as deeplab2 reports them, instead of from the
            panoptic prediction.
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
        semantic = [] if semantic_pred is None else [
            name for name, accumulator in self.accumulators.items() if isinstance(accumulator, SemanticMetric)]
        for b in range(panoptic_gt.shape[0]):
            name = image_names[b] if image_names is not None else f'#{self.num_images}'
            gt_ids, gt_segments = panoptic_to_segments(panoptic_gt[b], self.descriptor)
            pred_ids, pred_segments = panoptic_to_segments(
                panoptic_pred[b], self.descriptor, None if instance_scores is None else instance_scores[b])
            self.add_overlap(compute_overlap(str(name), gt_ids, gt_segments, pred_ids, pred_segments,
                                             self.categories), skip=semantic)
            if semantic:
                semantic_gt = self._dataset_ids(panoptic_gt[b] // self.descriptor.panoptic_label_divisor)
                semantic_ids = self._dataset_ids(np.asarray(semantic_pred[b]))
                for metric in semantic:
                    self.accumulators[metric].add_semantic(semantic_gt, semantic_ids)

    def _dataset_ids(self, semantic: np.ndarray) -> np.ndarray:
        """Contiguous class ids -> dataset category ids; void and out-of-range ids -> -1 (not evaluated)."""
        d = self.descriptor
        lut = np.array([d.to_dataset_id(c) if c != d.ignore_label else -1 for c in range(d.num_classes)], np.int64)
        inside = (semantic >= 0) & (semantic < d.num_classes)
        return np.where(inside, lut[np.clip(semantic, 0, d.num_classes - 1)], -1)

    def merge(self, other: 'PanopticEvaluator') -> None:
        """Adds another evaluator's images (same categories and metrics), e.g. from a worker process."""
        if self.metrics != other.metrics:
            raise ValueError(f'Cannot merge evaluators of metrics {self.metrics} and {other.metrics}')
        for name, accumulator in self.accumulators.items():
            accumulator.merge(other.accumulators[name])
        self.num_images += other.num_images

    def result(self) -> Dict[str, dict]:
        """{metric name: its result} for the evaluated metrics (the CLI's JSON layout; `metrics.summaries` turns it
        into TensorBoard scalars)."""
        return {name: accumulator.result() for name, accumulator in self.accumulators.items()}

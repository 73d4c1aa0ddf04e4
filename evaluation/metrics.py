"""The metric table: name -> streaming accumulator. `PanopticEvaluator`, the evaluation CLI (`--metrics`) and the
trainer's summaries read it.

A metric is a class following `Metric`, built from the evaluated categories (dataset category id -> {'isthing', ...}):
it takes one image at a time as a `SegmentOverlap` (the per-image counts every metric is computed from), merges with
another of its kind (worker processes, sharded evaluation; its state is plain arrays and lists, so it pickles), and
gives its numbers as a JSON-able dict (`result`: the CLI's output under the metric's name) and as TensorBoard
scalars (`summaries`: deeplab2's tag names where deeplab2 has the metric). A metric that can also score a semantic
prediction directly (the trainer's mIoU of the semantic head, as deeplab2 reports it) follows `SemanticMetric`.

Adding a metric is one module with such a class and one line in `METRICS`.
"""

from typing import Dict, Mapping, Protocol, Type, runtime_checkable

import numpy as np

from evaluation.instance_ap import InstanceAP
from evaluation.mean_iou import MeanIoU
from evaluation.panoptic_quality import PanopticQuality
from evaluation.segment_overlap import SegmentOverlap


@runtime_checkable
class Metric(Protocol):
    """A streaming accumulator over images; built as `cls(categories)`."""

    def add(self, overlap: SegmentOverlap) -> None:
        """Accumulates one image."""

    def merge(self, other: 'Metric') -> None:
        """Adds the images of another accumulator of the same class and categories."""

    def result(self) -> dict:
        """The numbers over every image added, JSON-able."""

    @staticmethod
    def summaries(result: dict) -> Dict[str, float]:
        """TensorBoard tag -> value of a `result`."""


@runtime_checkable
class SemanticMetric(Metric, Protocol):
    """A metric that can take an image's semantic maps instead of its overlap."""

    def add_semantic(self, semantic_gt: np.ndarray, semantic_pred: np.ndarray) -> None:
        """Accumulates one image's semantic maps in dataset category ids (-1: not evaluated)."""


# The metrics, in the order results and summaries list them.
METRICS: Dict[str, Type[Metric]] = {
    'pq': PanopticQuality,
    'ap': InstanceAP,
    'miou': MeanIoU,
}


def summaries(results: Mapping[str, dict]) -> Dict[str, float]:
    """The TensorBoard scalars of an evaluator's `result()` ({metric name: its result})."""
    return {tag: value for name, result in results.items() for tag, value in METRICS[name].summaries(result).items()}

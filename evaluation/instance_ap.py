"""Mask AP of the thing segments by COCO's rules and by Cityscapes' from one accumulation: the metric table's 'ap'
(evaluation/metrics.py)."""

from typing import Dict, Mapping

from evaluation.cityscapes_instance_ap import CityscapesInstanceAP
from evaluation.coco_instance_ap import CocoInstanceAP
from evaluation.segment_overlap import SegmentOverlap


class InstanceAP:
    """COCO mask AP (pycocotools' 12 numbers) and Cityscapes instance AP / AP50, mergeable.

    Args:
      categories: dataset category id -> {'isthing': 0/1, ...}; the thing categories are evaluated.
    """

    def __init__(self, categories: Mapping[int, dict]):
        self.coco = CocoInstanceAP(categories)
        self.cityscapes = CityscapesInstanceAP(categories)

    def add(self, overlap: SegmentOverlap) -> None:
        self.coco.add(overlap)
        self.cityscapes.add(overlap)

    def merge(self, other: 'InstanceAP') -> None:
        self.coco.merge(other.coco)
        self.cityscapes.merge(other.cityscapes)

    def result(self) -> Dict[str, float]:
        """The 12 COCO numbers (AP, AP50, AP75, APs, ..., ARl) plus cityscapes_AP and cityscapes_AP50."""
        ap = self.coco.result()
        cityscapes = self.cityscapes.result()
        ap['cityscapes_AP'] = cityscapes['AP']
        ap['cityscapes_AP50'] = cityscapes['AP50']
        return ap

    @staticmethod
    def summaries(result: Dict[str, float]) -> Dict[str, float]:
        """deeplab2's AP_Mask and ours for AP50 and AP75."""
        return {'evaluation/ap/AP_Mask': result['AP'], 'evaluation/ap/AP50_Mask': result['AP50'],
                'evaluation/ap/AP75_Mask': result['AP75']}

"""Mask AP of the thing segments by COCO's rules and by Cityscapes' from one accumulation: the metric table's 'ap'
(evaluation/metrics.py)."""

from typing import Dict, Mapping

from evaluation.cityscapes_instance_ap import CityscapesInstanceAP
from evaluation.coco_instance_ap import COCO_AP_NAMES, CocoInstanceAP
from evaluation.segment_overlap import SegmentOverlap


# deeplab2's summary names of the 12 COCO numbers (COCO_AP_NAMES' order).
DEEPLAB2_AP_TAGS = ('AP_Mask', 'AP_Mask_@IoU=0.5', 'AP_Mask_@IoU=0.75', 'AP_Mask_small', 'AP_Mask_medium',
                    'AP_Mask_large', 'AR_Mask_maxdets=1', 'AR_Mask_maxdets=10', 'AR_Mask_maxdets=100', 'AR_Mask_small',
                    'AR_Mask_medium', 'AR_Mask_large')


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
        """The 12 COCO numbers under deeplab2's tags (deeplab2 writes the 11 after AP_Mask with
        evaluator_options.detailed_ap_metrics; they are always written here)."""
        return {f'evaluation/ap/{tag}': result[name] for name, tag in zip(COCO_AP_NAMES, DEEPLAB2_AP_TAGS)}

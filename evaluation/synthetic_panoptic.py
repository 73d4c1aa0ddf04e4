"""Random panoptic GT / prediction pairs with every hard case, for checking evaluators against the official tools.

GT: a Voronoi partition into regions, each void, stuff, a thing instance or a thing crowd region; some classes never
appear in GT. Prediction: the same partition with moved seeds (so boundaries shift and IoUs spread around 0.5), some
classes swapped (also to classes absent from GT), some instances merged, some regions void, optionally an empty
prediction; scores are rounded so that ties occur.
"""

import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from deeplab_axial.data.coco_panoptic_format import categories_from_descriptor, write_coco_panoptic, write_panoptic_json
from deeplab_axial.data.dataset import DatasetDescriptor


def _voronoi(seeds: np.ndarray, height: int, width: int, cell: int) -> np.ndarray:
    """[height, width] region index of the nearest seed, computed on a grid of `cell`-pixel blocks."""
    gh, gw = -(-height // cell), -(-width // cell)
    ys = (np.arange(gh) + 0.5) * cell
    xs = (np.arange(gw) + 0.5) * cell
    best = np.full((gh, gw), np.inf)
    region = np.zeros((gh, gw), np.int32)
    for k, (y, x, weight) in enumerate(seeds):
        d = ((ys[:, None] - y) ** 2 + (xs[None, :] - x) ** 2) * weight
        closer = d < best
        best[closer] = d[closer]
        region[closer] = k
    return np.repeat(np.repeat(region, cell, 0), cell, 1)[:height, :width]


def random_panoptic_pair(rng: np.random.Generator, descriptor: DatasetDescriptor, height: int, width: int,
                         num_segments: int = 30, empty_prediction: bool = False
                         ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One random (panoptic_gt, panoptic_pred, instance_scores), each [height, width], in the in-memory encoding."""
    divisor, ignore = descriptor.panoptic_label_divisor, descriptor.ignore_label
    things = set(descriptor.thing_classes)
    classes = [c for c in range(descriptor.num_classes) if c != ignore]
    # The last class never appears in GT, so predictions of it are always unmatched.
    gt_classes = classes[:-1] if len(classes) > 2 else classes
    cell = max(1, min(height, width) // 64)
    seeds = np.stack([rng.uniform(0, height, num_segments), rng.uniform(0, width, num_segments),
                      rng.uniform(0.3, 3.0, num_segments)], axis=1)
    gt_regions = _voronoi(seeds, height, width, cell)
    moved = seeds.copy()
    moved[:, :2] += rng.normal(0, 0.15 * np.sqrt(height * width / num_segments), (num_segments, 2))
    pred_regions = _voronoi(moved, height, width, cell)

    gt_values = np.zeros(num_segments, np.int64)
    pred_values = np.zeros(num_segments, np.int64)
    pred_scores = np.zeros(num_segments, np.float32)
    next_instance = 1
    for k in range(num_segments):
        c = int(rng.choice(gt_classes))
        if rng.random() < 0.08:
            gt_values[k] = ignore * divisor
        elif c in things:
            crowd = rng.random() < 0.12
            gt_values[k] = c * divisor + (0 if crowd else next_instance)
            next_instance += not crowd
        else:
            gt_values[k] = c * divisor
        pc = c if rng.random() < 0.8 else int(rng.choice(classes))
        if empty_prediction or rng.random() < 0.05:
            pred_values[k] = ignore * divisor
        elif pc in things:
            earlier = [v for v in pred_values[:k] if v // divisor == pc and v % divisor > 0]
            if earlier and rng.random() < 0.15:
                pred_values[k] = earlier[-1]  # merged with an earlier instance of its class
            else:
                pred_values[k] = pc * divisor + k + 1
        else:
            pred_values[k] = pc * divisor
    for value in np.unique(pred_values):
        if value // divisor in things and value % divisor > 0:
            pred_scores[pred_values == value] = np.round(rng.uniform(0.05, 1.0), 1)
    panoptic_gt = gt_values[gt_regions].astype(np.int32)
    panoptic_pred = pred_values[pred_regions].astype(np.int32)
    return panoptic_gt, panoptic_pred, pred_scores[pred_regions]


def write_panoptic_dataset(root: str, descriptor: DatasetDescriptor,
                           pairs: Sequence[Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]]) -> dict:
    """Writes GT and predictions in COCO panoptic format under `root`.

    Returns:
      {'gt_json', 'gt_folder', 'pred_json', 'pred_folder'} paths.
    """
    paths = {'gt_json': os.path.join(root, 'gt.json'), 'gt_folder': os.path.join(root, 'gt'),
             'pred_json': os.path.join(root, 'pred.json'), 'pred_folder': os.path.join(root, 'pred')}
    gt_annotations: List[dict] = []
    pred_annotations: List[dict] = []
    for i, (gt, pred, scores) in enumerate(pairs):
        name = f'image_{i:05d}.png'
        gt_annotations.append(write_coco_panoptic(gt, descriptor, os.path.join(paths['gt_folder'], name), i))
        pred_annotations.append(write_coco_panoptic(pred, descriptor, os.path.join(paths['pred_folder'], name), i,
                                                    instance_scores=scores))
    categories = categories_from_descriptor(descriptor)
    write_panoptic_json(paths['gt_json'], gt_annotations, categories)
    write_panoptic_json(paths['pred_json'], pred_annotations, categories)
    return paths

"""Per-image overlap between ground-truth and predicted segments: the one pass every metric is computed from.

Each id map is turned into slots (1 = void, 2.. = position in the JSON segment list, 0 = an id the JSON lacks)
with one gather from a per-thread table over the 24-bit id space, and a single `np.bincount` over
gt_slot * (n_pred + 2) + pred_slot gives every intersection. Unknown ids land in row / column 0, so checking them
costs nothing extra (a sorted-search mapping would instead put them silently on a neighbour). This replaces the
`np.unique` over a 64-bit key that dominates panopticapi's time, with the same counts.
"""

import dataclasses
import threading
from typing import Dict, Sequence

import numpy as np

from evaluation.coco_panoptic_format import MAX_SEGMENT_ID, VOID_ID


@dataclasses.dataclass
class SegmentOverlap:
    """Everything the metrics need from one image.

    Row / column 0 of `intersection` is void (pixels of no segment); rows 1.. follow `gt`, columns 1.. follow `pred`,
    in the JSON order of each `segments_info`.

    Attributes:
      image_name: for error messages and per-image bookkeeping.
      gt_category: [n_gt] int64 dataset category ids.
      gt_iscrowd: [n_gt] bool.
      gt_area: [n_gt] int64, the JSON `area` where given (what panopticapi uses), else the pixel count.
      gt_pixels: [n_gt] int64 pixel counts in the PNG.
      pred_category: [n_pred] int64.
      pred_score: [n_pred] float64 (`score`, default 1.0).
      pred_pixels: [n_pred] int64 pixel counts in the PNG.
      intersection: [n_gt + 1, n_pred + 1] int64 pixel counts.
    """

    image_name: str
    gt_category: np.ndarray
    gt_iscrowd: np.ndarray
    gt_area: np.ndarray
    gt_pixels: np.ndarray
    pred_category: np.ndarray
    pred_score: np.ndarray
    pred_pixels: np.ndarray
    intersection: np.ndarray


class _IdTable(threading.local):
    """A per-thread lookup table over the whole 24-bit id space: segment id -> 1-based slot, 0 = not in the JSON.

    Reused across images (only the entries of the current segments are set and then cleared), so an image costs one
    gather per id map instead of a search.
    """

    def __init__(self):
        self.table = np.zeros(MAX_SEGMENT_ID, np.uint16)


_TABLE = _IdTable()


def _slots(id_map: np.ndarray, segments: Sequence[dict], image_name: str, role: str) -> np.ndarray:
    """[height, width] segment ids -> [height * width] uint16 slots: 0 unknown, 1 void, 2 + JSON position."""
    ids = np.array([s['id'] for s in segments], dtype=np.int64)
    if ids.size + 2 > np.iinfo(np.uint16).max:
        raise ValueError(f'Image {image_name}: {ids.size} {role} segments; at most 65533 are supported')
    if ids.size and (ids.min() <= VOID_ID or ids.max() >= MAX_SEGMENT_ID):
        raise ValueError(f'Image {image_name}: {role} segment ids must lie in [1, {MAX_SEGMENT_ID}); received '
                         f'{ids.min()}..{ids.max()}')
    flat = id_map.ravel()
    out_of_range = ValueError(f'Image {image_name}: {role} id map values must lie in [0, {MAX_SEGMENT_ID})')
    if flat.size and flat.dtype.kind == 'i' and flat.min() < 0:  # np.take would read negative ids from the end
        raise out_of_range
    table = _TABLE.table
    table[VOID_ID] = 1
    table[ids] = np.arange(2, ids.size + 2, dtype=np.uint16)
    try:
        return np.take(table, flat)  # checks the upper bound on the way
    except IndexError:
        raise out_of_range from None
    finally:
        table[ids] = 0


def _unknown_ids(id_map: np.ndarray, segments: Sequence[dict]) -> list:
    known = np.array([VOID_ID] + [s['id'] for s in segments], dtype=np.int64)
    present = np.unique(id_map)
    return present[~np.isin(present, known)][:10].tolist()


def compute_overlap(image_name: str, gt_ids: np.ndarray, gt_segments: Sequence[dict], pred_ids: np.ndarray,
                    pred_segments: Sequence[dict], categories: Dict[int, dict]) -> SegmentOverlap:
    """Intersections of every GT segment with every predicted segment of one image.

    Args:
      image_name: names the image in errors.
      gt_ids, pred_ids: [height, width] integer segment-id maps (0 = void).
      gt_segments, pred_segments: the `segments_info` lists (dicts with id, category_id; GT iscrowd and area;
        predictions an optional score).
      categories: dataset category id -> category dict; predicted categories must be in it.

    Raises:
      ValueError: sizes differ, an id is in a PNG but not in its JSON, a predicted JSON segment is absent from the
        PNG, or a predicted category is unknown.
    """
    if gt_ids.shape != pred_ids.shape:
        raise ValueError(f'Image {image_name}: the prediction PNG is {pred_ids.shape[1]}x{pred_ids.shape[0]} '
                         f'(width x height) but the ground truth is {gt_ids.shape[1]}x{gt_ids.shape[0]}')
    for s in pred_segments:
        if s['category_id'] not in categories:
            raise ValueError(f'Image {image_name}: predicted segment {s["id"]} has unknown category_id '
                             f'{s["category_id"]}')
    gt_slot = _slots(gt_ids, gt_segments, image_name, 'ground truth')
    pred_slot = _slots(pred_ids, pred_segments, image_name, 'prediction')
    n_gt, n_pred = len(gt_segments) + 2, len(pred_segments) + 2
    # np.bincount takes intp (any other dtype costs one more copy): the key is written as intp in two passes.
    key = np.multiply(gt_slot, n_pred, dtype=np.intp)
    key += pred_slot
    counts = np.bincount(key, minlength=n_gt * n_pred).reshape(n_gt, n_pred)
    for role, id_map, segments, unknown in (('ground truth', gt_ids, gt_segments, counts[0].sum()),
                                             ('prediction', pred_ids, pred_segments, counts[:, 0].sum())):
        if unknown:
            raise ValueError(f'Image {image_name}: segment ids {_unknown_ids(id_map, segments)} are in the {role} '
                             'PNG but not in its JSON segments_info')
    intersection = counts[1:, 1:]
    pred_pixels = intersection[:, 1:].sum(axis=0)
    missing = [pred_segments[i]['id'] for i in np.nonzero(pred_pixels == 0)[0]]
    if missing:
        raise ValueError(f'Image {image_name}: predicted segment ids {missing[:10]} are in the JSON but not in the '
                         'PNG')
    gt_pixels = intersection[1:, :].sum(axis=1)
    gt_area = np.array([s.get('area', p) for s, p in zip(gt_segments, gt_pixels)], dtype=np.int64)
    return SegmentOverlap(
        image_name=image_name,
        gt_category=np.array([s['category_id'] for s in gt_segments], dtype=np.int64),
        gt_iscrowd=np.array([bool(s.get('iscrowd', 0)) for s in gt_segments], dtype=bool),
        gt_area=gt_area,
        gt_pixels=gt_pixels.astype(np.int64),
        pred_category=np.array([s['category_id'] for s in pred_segments], dtype=np.int64),
        pred_score=np.array([float(s.get('score', 1.0)) for s in pred_segments], dtype=np.float64),
        pred_pixels=pred_pixels.astype(np.int64),
        intersection=intersection.astype(np.int64))

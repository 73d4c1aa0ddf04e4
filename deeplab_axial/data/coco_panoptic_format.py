"""COCO panoptic format: PNG id maps (id = R + 256 * G + 65536 * B) plus a JSON `segments_info` list per image.

The reader checks what the official tools check (and a little more), so bad files stop with an error that names the
image and the problem. The writer turns the in-memory convention (panoptic = class * divisor + instance, void =
ignore_label class, thing with instance 0 = crowd) into this format; every file is written to a temporary name and
renamed (`atomic_files`), so an interrupted run never leaves a file that looks complete. The PNGs are encoded and
decoded by `panoptic_png`. Evaluation, prediction and the trainer's saved predictions read and write through these
two modules, the converters read their PNGs with `panoptic_png` too.
"""

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from deeplab_axial import atomic_files
from deeplab_axial.data.dataset import DatasetDescriptor
from deeplab_axial.data.panoptic_png import MAX_PACKED_ID, write_panoptic_png

# Segment id 0 is void in both COCO and Cityscapes panoptic PNGs.
VOID_ID = 0
MAX_SEGMENT_ID = MAX_PACKED_ID


def categories_from_descriptor(descriptor: DatasetDescriptor) -> List[dict]:
    """The COCO `categories` list of a descriptor: one entry per class except void, with dataset ids."""
    things = set(descriptor.thing_classes)
    return [{'id': int(descriptor.to_dataset_id(c)), 'name': descriptor.class_names[c],
             'isthing': int(c in things), 'color': list(descriptor.colormap[c])}
            for c in range(descriptor.num_classes) if c != descriptor.ignore_label]


def panoptic_to_segments(panoptic: np.ndarray, descriptor: DatasetDescriptor,
                         instance_scores: Optional[np.ndarray] = None) -> Tuple[np.ndarray, List[dict]]:
    """Splits an in-memory panoptic map into a segment-id map and its `segments_info`.

    Args:
      panoptic: [height, width] int, class * divisor + instance.
      descriptor: the dataset (divisor, ignore label, thing classes, dataset ids).
      instance_scores: optional [height, width] float, each pixel carrying its instance's score; thing segments get
        `score` = the mean over the segment.

    Returns:
      ids: [height, width] uint32, segment id per pixel (panoptic + 1), 0 on void.
      segments: dicts with id, category_id (dataset id), iscrowd (thing class with instance 0), area, bbox
        [x, y, width, height] and, for thing segments when scores are given, score.
    """
    panoptic = np.asarray(panoptic)
    if panoptic.ndim != 2:
        raise ValueError(f'panoptic must be [height, width]; received shape {panoptic.shape}')
    divisor = descriptor.panoptic_label_divisor
    values, inverse, areas = np.unique(panoptic.ravel(), return_inverse=True, return_counts=True)
    classes = values // divisor
    instances = values % divisor
    keep = (classes != descriptor.ignore_label) & (classes >= 0) & (classes < descriptor.num_classes)
    seg_ids = np.where(keep, values + 1, VOID_ID).astype(np.int64)
    if seg_ids.size and seg_ids.max() >= MAX_SEGMENT_ID:
        raise ValueError(f'panoptic value {int(seg_ids.max()) - 1} does not fit a 24-bit COCO segment id')
    ids = seg_ids[inverse].reshape(panoptic.shape).astype(np.uint32)

    things = set(descriptor.thing_classes)
    index = np.nonzero(keep)[0]
    rows = np.arange(panoptic.shape[0])
    cols = np.arange(panoptic.shape[1])
    inverse = inverse.reshape(panoptic.shape)
    score_sums = None
    if instance_scores is not None:
        score_sums = np.bincount(inverse.ravel(), weights=np.asarray(instance_scores, np.float64).ravel(),
                                 minlength=values.size)
    # Bounding boxes from per-segment row/column ranges.
    row_hits = np.zeros((values.size, panoptic.shape[0]), bool)
    col_hits = np.zeros((values.size, panoptic.shape[1]), bool)
    row_hits[inverse, rows[:, None]] = True
    col_hits[inverse, cols[None, :]] = True
    segments = []
    for i in index:
        c = int(classes[i])
        ys = rows[row_hits[i]]
        xs = cols[col_hits[i]]
        segment = {'id': int(seg_ids[i]), 'category_id': int(descriptor.to_dataset_id(c)),
                   'iscrowd': int(c in things and instances[i] == 0), 'area': int(areas[i]),
                   'bbox': [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]}
        if score_sums is not None and c in things:
            segment['score'] = float(score_sums[i] / areas[i])
        segments.append(segment)
    return ids, segments


def write_coco_panoptic(panoptic: np.ndarray, descriptor: DatasetDescriptor, png_path: str,
                        image_id, instance_scores: Optional[np.ndarray] = None) -> dict:
    """Writes one in-memory panoptic map as a COCO panoptic PNG (atomically) and returns its annotation entry.

    Args:
      panoptic: [height, width] int, class * divisor + instance.
      descriptor: the dataset.
      png_path: where the PNG goes; its base name becomes `file_name`.
      image_id: the image's id in the JSON.
      instance_scores: optional [height, width] per-pixel instance scores (adds `score` to thing segments).

    Returns:
      {'image_id', 'file_name', 'segments_info'}, ready for `write_panoptic_json`.
    """
    ids, segments = panoptic_to_segments(panoptic, descriptor, instance_scores)
    write_panoptic_png(png_path, ids)
    return {'image_id': image_id, 'file_name': os.path.basename(png_path), 'segments_info': segments}


def write_panoptic_json(path: str, annotations: Sequence[dict], categories: Sequence[dict],
                        images: Optional[Sequence[dict]] = None) -> None:
    """Writes a COCO panoptic JSON (atomically); `images` defaults to one entry per annotation."""
    if images is None:
        images = [{'id': a['image_id'], 'file_name': os.path.splitext(a['file_name'])[0] + '.jpg'}
                  for a in annotations]
    atomic_files.write_json(path, {'images': list(images), 'annotations': list(annotations),
                             'categories': list(categories)})


def load_panoptic_json(path: str, role: str) -> dict:
    """Loads a COCO panoptic JSON and checks its structure.

    Args:
      path: the JSON file.
      role: 'ground truth' or 'prediction', for error messages.

    Returns:
      The parsed JSON with `annotations_by_image`: image id -> annotation.

    Raises:
      ValueError: missing file or keys, a duplicate image id, a duplicate or reserved (0) segment id.
    """
    if not os.path.isfile(path):
        raise ValueError(f'The {role} JSON {path} does not exist')
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f'The {role} JSON {path} is not valid JSON: {e}') from None
    if not isinstance(data, dict) or not isinstance(data.get('annotations'), list):
        raise ValueError(f'The {role} JSON {path} has no "annotations" list')
    if 'categories' in data:
        _check_categories(data['categories'], path, role)
    by_image: Dict = {}
    for ann in data['annotations']:
        _check_annotation(ann, path, role)
        image_id = ann['image_id']
        if image_id in by_image:
            raise ValueError(f'The {role} JSON {path}: image id {image_id!r} appears twice')
        seen = set()
        for segment in ann['segments_info']:
            _check_segment(segment, image_id, role)
            if segment['id'] == VOID_ID:
                raise ValueError(f'Image {image_id!r} ({role}): segment id 0 is reserved for void')
            if segment['id'] in seen:
                raise ValueError(f'Image {image_id!r} ({role}): segment id {segment["id"]} appears twice in JSON')
            seen.add(segment['id'])
        by_image[image_id] = ann
    data['annotations_by_image'] = by_image
    return data


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_categories(categories, path: str, role: str) -> None:
    if not isinstance(categories, list) or not all(isinstance(c, dict) and _is_int(c.get('id')) for c in categories):
        raise ValueError(f'The {role} JSON {path}: "categories" must be a list of objects with an integer "id"')


def _check_annotation(ann, path: str, role: str) -> None:
    """An annotation is an object with an integer or string image_id, a string file_name and a segments_info list."""
    if not isinstance(ann, dict):
        raise ValueError(f'The {role} JSON {path}: an annotation is not an object: {str(ann)[:200]}')
    for key in ('image_id', 'file_name', 'segments_info'):
        if key not in ann:
            raise ValueError(f'The {role} JSON {path}: an annotation has no {key!r}: {str(ann)[:200]}')
    if not (_is_int(ann['image_id']) or isinstance(ann['image_id'], str)):
        raise ValueError(f'The {role} JSON {path}: image_id {ann["image_id"]!r} is not an integer or a string')
    if not isinstance(ann['file_name'], str):
        raise ValueError(f'Image {ann["image_id"]!r} ({role}): file_name {ann["file_name"]!r} is not a string')
    if not isinstance(ann['segments_info'], list):
        raise ValueError(f'Image {ann["image_id"]!r} ({role}): segments_info is not a list: '
                         f'{str(ann["segments_info"])[:200]}')


# Segment keys the metrics read, and the types they must have.
_SEGMENT_FIELDS = (('id', _is_int, 'an integer'), ('category_id', _is_int, 'an integer'),
                   ('iscrowd', lambda v: isinstance(v, (int, bool)), '0 or 1'), ('area', _is_number, 'a number'),
                   ('score', _is_number, 'a number'))


def _check_segment(segment, image_id, role: str) -> None:
    if not isinstance(segment, dict):
        raise ValueError(f'Image {image_id!r} ({role}): a segments_info entry is not an object: {str(segment)[:200]}')
    if 'id' not in segment or 'category_id' not in segment:
        raise ValueError(f'Image {image_id!r} ({role}): a segment lacks "id" or "category_id": {segment}')
    for key, is_valid, expected in _SEGMENT_FIELDS:
        if key in segment and not is_valid(segment[key]):
            raise ValueError(f'Image {image_id!r} ({role}): segment {segment.get("id")!r} has {key} '
                             f'{segment[key]!r}; expected {expected}')

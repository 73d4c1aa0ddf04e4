"""Panoptic maps to the COCO panoptic format (PNG of segment ids + one JSON), as panopticapi reads it.

Segment ids are encoded in the PNG as id = R + 256 * G + 256^2 * B. Category ids are the dataset's official ids
(descriptor.to_dataset_id), so the files score against the official ground truth unchanged.
"""

from typing import List, Tuple

import numpy as np

from deeplab_axial.data.dataset import DatasetDescriptor


def categories(descriptor: DatasetDescriptor) -> List[dict]:
    """The "categories" block of a COCO panoptic JSON (void excluded)."""
    things = set(descriptor.thing_classes)
    return [{'id': descriptor.to_dataset_id(c), 'name': descriptor.class_names[c], 'isthing': int(c in things),
             'color': list(descriptor.colormap[c])}
            for c in range(descriptor.num_classes) if c != descriptor.ignore_label]


def panoptic_to_coco(panoptic: np.ndarray, descriptor: DatasetDescriptor) -> Tuple[np.ndarray, List[dict]]:
    """Converts one panoptic map.

    Args:
      panoptic: [height, width] integer panoptic labels (semantic * divisor + instance).
      descriptor: the dataset of the labels.

    Returns:
      rgb: [height, width, 3] uint8 segment-id image (0 = void).
      segments_info: one dict per segment: id, category_id, iscrowd (a thing class with instance 0), area, bbox
        [x, y, width, height].
    """
    if panoptic.ndim != 2:
        raise ValueError(f'`panoptic` must be [height, width]. Received shape: {panoptic.shape}')
    things = set(descriptor.thing_classes)
    labels, inverse, areas = np.unique(panoptic, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(panoptic.shape)
    bounds = _label_bounds(inverse, len(labels))
    segment_of_label = np.zeros(len(labels), np.int64)
    segments_info = []
    for i, label in enumerate(labels.tolist()):
        semantic, instance = divmod(label, descriptor.panoptic_label_divisor)
        if semantic == descriptor.ignore_label:
            continue
        if not 0 <= semantic < descriptor.num_classes:
            raise ValueError(f'Panoptic label {label} has semantic class {semantic}, outside '
                             f'[0, {descriptor.num_classes}) of dataset {descriptor.name!r}')
        segment_id = len(segments_info) + 1
        segment_of_label[i] = segment_id
        row_min, row_max, col_min, col_max = bounds[i].tolist()
        segments_info.append({
            'id': segment_id,
            'category_id': int(descriptor.to_dataset_id(semantic)),
            'iscrowd': int(semantic in things and instance == 0),
            'area': int(areas[i]),
            'bbox': [col_min, row_min, col_max - col_min + 1, row_max - row_min + 1],
        })
    ids = segment_of_label[inverse]
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    return rgb, segments_info


def _label_bounds(inverse: np.ndarray, num_labels: int) -> np.ndarray:
    """[num_labels, 4] (row_min, row_max, col_min, col_max) of each label index of an [height, width] map, in one
    pass over the pixels (a mask per label would cost num_labels passes)."""
    height, width = inverse.shape
    flat = inverse.ravel()
    rows = np.repeat(np.arange(height), width)
    cols = np.tile(np.arange(width), height)
    bounds = np.empty((num_labels, 4), np.int64)
    bounds[:, 0], bounds[:, 1] = height, -1
    bounds[:, 2], bounds[:, 3] = width, -1
    np.minimum.at(bounds[:, 0], flat, rows)
    np.maximum.at(bounds[:, 1], flat, rows)
    np.minimum.at(bounds[:, 2], flat, cols)
    np.maximum.at(bounds[:, 3], flat, cols)
    return bounds

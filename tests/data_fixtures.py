"""Builders of tiny raw datasets in their true on-disk layouts, shared by the tests/test_data_*.py files."""

import io
import json
import os
from typing import Dict, List

import numpy as np
from PIL import Image


def write_image(path: str, array: np.ndarray, fmt: str) -> bytes:
    """Saves `array` as JPEG or PNG at `path` and returns the file's bytes."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    with open(path, 'wb') as f:
        f.write(buf.getvalue())
    return buf.getvalue()


def packed_png(segment_ids: np.ndarray) -> np.ndarray:
    """COCO/Cityscapes panoptic PNG colours: id = R + 256 G + 65536 B, written out by hand."""
    ids = segment_ids.astype(np.int64)
    return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], -1).astype(np.uint8)


# COCO ids used below: person 1 and car 3 are things, 200 (wall-other-merged, the last category) is stuff.
# Contiguous ids by sorted position among all 133 COCO categories: 1 -> 1, 3 -> 3, 200 -> 133 (hand-checked).
COCO_PERSON, COCO_CAR, COCO_WALL = 1, 3, 200
CONTIGUOUS = {COCO_PERSON: 1, COCO_CAR: 3, COCO_WALL: 133}


def coco_layout(root: str, categories: List[dict]) -> Dict[str, dict]:
    """Writes a 3-image COCO panoptic 2017 tree; returns per image name its source bytes and expected label."""
    rng = np.random.default_rng(0)
    h, w = 12, 16
    expected = {}
    splits = {'train': [], 'val': []}
    # Image 1 (train, jpeg): wall top; two persons, a crowd of cars and void below.
    seg1 = np.zeros((h, w), np.int64)
    seg1[:6] = 100000
    seg1[6:, 0:4] = 2000001
    seg1[6:, 4:8] = 2000002
    seg1[6:, 8:12] = 3000000
    info1 = [{'id': 100000, 'category_id': COCO_WALL, 'iscrowd': 0},
             {'id': 2000001, 'category_id': COCO_PERSON, 'iscrowd': 0},
             {'id': 2000002, 'category_id': COCO_PERSON, 'iscrowd': 0},
             {'id': 3000000, 'category_id': COCO_CAR, 'iscrowd': 1}]
    pan1 = np.zeros((h, w), np.int32)
    pan1[:6] = 133 * 256
    pan1[6:, 0:4] = 1 * 256 + 1
    pan1[6:, 4:8] = 1 * 256 + 2
    pan1[6:, 8:12] = 3 * 256 + 0
    splits['train'].append(('000000000001', 'jpg', seg1, info1, pan1))
    # Image 2 (train, png): a car instance and a person instance; instance ids restart per image.
    seg2 = np.full((h, w), 100000, np.int64)
    seg2[2:8, 2:8] = 3000001
    seg2[4:10, 9:14] = 2000005
    info2 = [{'id': 3000001, 'category_id': COCO_CAR, 'iscrowd': 0},
             {'id': 2000005, 'category_id': COCO_PERSON, 'iscrowd': 0},
             {'id': 100000, 'category_id': COCO_WALL, 'iscrowd': 0}]
    pan2 = np.full((h, w), 133 * 256, np.int32)
    pan2[2:8, 2:8] = 3 * 256 + 1
    pan2[4:10, 9:14] = 1 * 256 + 1
    splits['train'].append(('000000000002', 'png', seg2, info2, pan2))
    # Image 3 (val): one person on void.
    seg3 = np.zeros((h, w), np.int64)
    seg3[3:9, 3:9] = 7
    splits['val'].append(('000000000003', 'jpg', seg3, [{'id': 7, 'category_id': COCO_PERSON, 'iscrowd': 0}],
                          np.where(seg3 == 7, 1 * 256 + 1, 0).astype(np.int32)))
    image_id = 0
    for split, entries in splits.items():
        images, annotations = [], []
        for name, fmt, seg, info, pan in entries:
            image_id += 1
            image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            data = write_image(os.path.join(root, f'{split}2017', f'{name}.{fmt}'), image,
                               'JPEG' if fmt == 'jpg' else 'PNG')
            write_image(os.path.join(root, 'annotations', f'panoptic_{split}2017', f'{name}.png'),
                        packed_png(seg), 'PNG')
            images.append({'id': image_id, 'file_name': f'{name}.{fmt}', 'height': h, 'width': w})
            annotations.append({'image_id': image_id, 'file_name': f'{name}.png', 'segments_info': info})
            expected[name] = {'split': split, 'image_bytes': data, 'format': 'jpeg' if fmt == 'jpg' else 'png',
                              'image': image, 'panoptic': pan}
        with open(os.path.join(root, 'annotations', f'panoptic_{split}2017.json'), 'w') as f:
            json.dump({'images': images, 'annotations': annotations, 'categories': categories}, f)
    return expected

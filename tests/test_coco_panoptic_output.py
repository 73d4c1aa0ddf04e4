"""Tests of the panoptic map -> COCO panoptic (PNG ids + segments_info) conversion used by predict."""

import numpy as np
import pytest
from panopticapi.utils import rgb2id

from deeplab_axial.data import dataset
from deeplab_axial.inference import coco_panoptic_output

COCO = dataset.get('coco_panoptic')  # contiguous 1 = person (id 1, thing); void 0; divisor 256.


def test_segments_have_official_ids_areas_boxes_and_crowd_flags():
    sky = COCO.class_names.index('sky-other-merged')
    panoptic = np.zeros((6, 8), np.int32)  # void everywhere ...
    panoptic[0:2, :] = sky * 256  # ... sky on the top two rows
    panoptic[2:5, 1:3] = 1 * 256 + 1  # person 1: rows 2-4, cols 1-2
    panoptic[3:6, 5:8] = 1 * 256 + 2  # person 2: rows 3-5, cols 5-7
    panoptic[5, 0] = 1 * 256  # person crowd pixel
    rgb, segments = coco_panoptic_output.panoptic_to_coco(panoptic, COCO)
    ids = rgb2id(rgb)
    assert (ids == 0).sum() == (panoptic == 0).sum()
    by_label = {}
    for label in (sky * 256, 257, 258, 256):
        segment_ids = np.unique(ids[panoptic == label])
        assert segment_ids.size == 1 and segment_ids[0] != 0
        by_label[label] = next(s for s in segments if s['id'] == segment_ids[0])
    assert len(segments) == 4 and len({s['id'] for s in segments}) == 4
    assert by_label[sky * 256]['category_id'] == 187  # COCO's sparse id of sky-other-merged
    assert by_label[sky * 256] | {'id': 0} == {'id': 0, 'category_id': 187, 'iscrowd': 0, 'area': 16,
                                               'bbox': [0, 0, 8, 2]}
    assert by_label[257]['bbox'] == [1, 2, 2, 3] and by_label[257]['area'] == 6
    assert by_label[258]['bbox'] == [5, 3, 3, 3] and by_label[258]['category_id'] == 1
    assert by_label[256]['iscrowd'] == 1 and by_label[256]['bbox'] == [0, 5, 1, 1]
    assert by_label[257]['iscrowd'] == 0


def test_categories_exclude_void_and_use_official_ids():
    categories = coco_panoptic_output.categories(COCO)
    assert len(categories) == 133
    assert categories[0] == {'id': 1, 'name': 'person', 'isthing': 1, 'color': list(COCO.colormap[1])}
    assert sum(c['isthing'] for c in categories) == 80


def test_out_of_range_class_is_an_error():
    with pytest.raises(ValueError, match='semantic class 200'):
        coco_panoptic_output.panoptic_to_coco(np.full((2, 2), 200 * 256, np.int32), COCO)

"""Dataset descriptors: COCO id mapping, Cityscapes facts, user descriptors and their errors."""

import pytest

from deeplab_axial.data import dataset


def test_coco_maps_133_sparse_ids_to_contiguous_with_void_zero():
    coco = dataset.get('coco_panoptic')
    assert coco.num_classes == 134 and coco.ignore_label == 0 and coco.panoptic_label_divisor == 256
    assert len(coco.thing_classes) == 80 and len(coco.stuff_classes) == 53
    assert coco.to_dataset_id(1) == 1 and coco.class_names[1] == 'person'
    assert coco.to_dataset_id(133) == 200  # the last COCO panoptic category id


def test_cityscapes_things_are_train_ids_11_to_18():
    cs = dataset.get('cityscapes_panoptic')
    assert cs.thing_classes == tuple(range(11, 19)) and cs.ignore_label == 255
    assert cs.to_dataset_id(13) == 26  # car


def test_synthetic_keeps_gaps_in_ids():
    syn = dataset.get('synthetic_panoptic')
    assert syn.dataset_ids == (0, 1, 3, 7, 92, 118, 160)
    assert syn.thing_classes == (1, 2, 3) and syn.stuff_classes == (4, 5, 6)


def test_unknown_name_lists_registered_names():
    with pytest.raises(KeyError, match='cityscapes_panoptic'):
        dataset.get('nope')


def test_user_descriptor_from_dict_and_errors():
    d = dataset.DatasetDescriptor.from_dict(dict(
        name='mine', splits_to_sizes={'train': 2}, num_classes=3, ignore_label=255, panoptic_label_divisor=1000,
        class_has_instances_list=[2], colormap=[[0, 0, 0], [1, 1, 1], [2, 2, 2]], class_names=['a', 'b', 'c']))
    assert d.thing_classes == (2,) and d.stuff_classes == (0, 1)
    with pytest.raises(ValueError, match='colour|colormap'):
        dataset.DatasetDescriptor.from_dict(dict(
            name='bad', splits_to_sizes={}, num_classes=3, ignore_label=255, panoptic_label_divisor=1000,
            class_has_instances_list=[], colormap=[], class_names=['a', 'b', 'c']))
    with pytest.raises(ValueError, match='num_clases'):
        dataset.DatasetDescriptor.from_dict({'num_clases': 3})

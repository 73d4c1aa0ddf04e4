"""Dataset descriptors: what every part of the pipeline needs to know about a dataset, in one registry.

A descriptor fixes the label encoding (panoptic = semantic * panoptic_label_divisor + instance), the ignore label,
the thing classes and the colour map. In-memory panoptic maps follow one convention everywhere (targets, losses,
post-processing, evaluation): pixels whose semantic class is `ignore_label` are void, and a pixel of a thing class
with instance id 0 belongs to that class's crowd region.

A user's own dataset needs no code edit: a config may carry a `dataset_descriptor` block, turned into a
`DatasetDescriptor` with `from_dict` and added with `register`.
"""

import dataclasses
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

_COCO_CATEGORIES_FILE = os.path.join(os.path.dirname(__file__), 'coco_panoptic_categories.json')


@dataclasses.dataclass(frozen=True)
class DatasetDescriptor:
    """Static facts about one dataset.

    Attributes:
      name: registry name.
      splits_to_sizes: number of examples per split.
      num_classes: number of semantic classes the model predicts, void included where void is a class (COCO: 134).
      ignore_label: semantic label of void pixels; never a thing class.
      panoptic_label_divisor: panoptic = semantic * divisor + instance.
      class_has_instances_list: the thing classes (contiguous ids).
      colormap: one RGB triple per contiguous class id.
      class_names: one name per contiguous class id.
      dataset_ids: per contiguous id, the id the official tools use (COCO's sparse category id); None = identity.
      task: 'panoptic' or 'classification'.
    """

    name: str
    splits_to_sizes: Dict[str, int]
    num_classes: int
    ignore_label: int
    panoptic_label_divisor: int
    class_has_instances_list: Tuple[int, ...]
    colormap: Tuple[Tuple[int, int, int], ...]
    class_names: Tuple[str, ...]
    dataset_ids: Optional[Tuple[int, ...]] = None
    task: str = 'panoptic'

    def __post_init__(self):
        if self.task not in ('panoptic', 'classification'):
            raise ValueError(f'DatasetDescriptor {self.name!r}: `task` must be "panoptic" or "classification". '
                             f'Received: {self.task!r}')
        if self.task == 'panoptic':
            if len(self.class_names) != self.num_classes or len(self.colormap) != self.num_classes:
                raise ValueError(
                    f'DatasetDescriptor {self.name!r}: `class_names` and `colormap` need {self.num_classes} '
                    f'entries (num_classes). Received: {len(self.class_names)} and {len(self.colormap)}')
            if self.ignore_label in self.class_has_instances_list:
                raise ValueError(f'DatasetDescriptor {self.name!r}: `ignore_label` {self.ignore_label} cannot be a '
                                 'thing class')
            bad = [c for c in self.class_has_instances_list if not 0 <= c < self.num_classes]
            if bad:
                raise ValueError(f'DatasetDescriptor {self.name!r}: thing classes {bad} are outside '
                                 f'[0, {self.num_classes})')

    @property
    def is_panoptic(self) -> bool:
        return self.task == 'panoptic'

    @property
    def thing_classes(self) -> Tuple[int, ...]:
        return tuple(self.class_has_instances_list)

    @property
    def stuff_classes(self) -> Tuple[int, ...]:
        things = set(self.class_has_instances_list)
        return tuple(c for c in range(self.num_classes) if c not in things and c != self.ignore_label)

    def to_dataset_id(self, contiguous_id: int) -> int:
        """The official tools' category id of a contiguous class id."""
        return contiguous_id if self.dataset_ids is None else self.dataset_ids[contiguous_id]

    @classmethod
    def from_dict(cls, d: dict) -> 'DatasetDescriptor':
        """Builds a descriptor from plain values (a config block or JSON)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f'Unknown dataset descriptor fields {unknown}; expected some of {sorted(fields)}')
        d = dict(d)
        d['class_has_instances_list'] = tuple(d.get('class_has_instances_list', ()))
        d['colormap'] = tuple(tuple(int(v) for v in c) for c in d.get('colormap', ()))
        d['class_names'] = tuple(d.get('class_names', ()))
        if d.get('dataset_ids') is not None:
            d['dataset_ids'] = tuple(d['dataset_ids'])
        return cls(**d)


def coco_categories() -> List[dict]:
    """The 133 COCO panoptic categories (sparse id, name, isthing, color), in annotation-file order."""
    with open(_COCO_CATEGORIES_FILE) as f:
        return json.load(f)


def descriptor_from_coco_categories(name: str, categories: Sequence[dict],
                                    splits_to_sizes: Dict[str, int]) -> DatasetDescriptor:
    """A COCO-format descriptor: categories sorted by id map to contiguous 1..N, and 0 is void (ignore)."""
    cats = sorted(categories, key=lambda c: c['id'])
    return DatasetDescriptor(
        name=name,
        splits_to_sizes=dict(splits_to_sizes),
        num_classes=len(cats) + 1,
        ignore_label=0,
        panoptic_label_divisor=256,
        class_has_instances_list=tuple(i + 1 for i, c in enumerate(cats) if c['isthing']),
        colormap=((0, 0, 0),) + tuple(tuple(c['color']) for c in cats),
        class_names=('void',) + tuple(c['name'] for c in cats),
        dataset_ids=(0,) + tuple(c['id'] for c in cats),
    )


_CITYSCAPES_NAMES = ('road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light', 'traffic sign',
                     'vegetation', 'terrain', 'sky', 'person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle',
                     'bicycle')
_CITYSCAPES_COLORS = ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
                      (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
                      (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
                      (0, 80, 100), (0, 0, 230), (119, 11, 32))
# Cityscapes label ids of the 19 train ids (what cityscapesscripts' evaluation expects).
_CITYSCAPES_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)

# The synthetic dataset (deeplab_axial.data.synthetic) in COCO panoptic format: sparse ids with gaps on purpose,
# so the id mapping is exercised exactly as on COCO.
SYNTHETIC_CATEGORIES = (
    {'id': 1, 'name': 'disc', 'isthing': 1, 'color': [220, 20, 60]},
    {'id': 3, 'name': 'square', 'isthing': 1, 'color': [0, 0, 142]},
    {'id': 7, 'name': 'triangle', 'isthing': 1, 'color': [250, 170, 30]},
    {'id': 92, 'name': 'sky', 'isthing': 0, 'color': [70, 130, 180]},
    {'id': 118, 'name': 'grass', 'isthing': 0, 'color': [107, 142, 35]},
    {'id': 160, 'name': 'wall', 'isthing': 0, 'color': [102, 102, 156]},
)

_REGISTRY: Dict[str, DatasetDescriptor] = {}


def register(descriptor: DatasetDescriptor, overwrite: bool = False) -> DatasetDescriptor:
    """Adds a descriptor to the registry; a second one under the same name needs `overwrite=True`."""
    if descriptor.name in _REGISTRY and not overwrite:
        raise ValueError(f'Dataset {descriptor.name!r} is already registered')
    _REGISTRY[descriptor.name] = descriptor
    return descriptor


def get(name: str) -> DatasetDescriptor:
    """Looks a dataset up by name; the error lists the names that exist."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f'Unknown dataset {name!r}. Registered datasets: {sorted(_REGISTRY)}') from None


def names() -> List[str]:
    return sorted(_REGISTRY)


register(DatasetDescriptor(
    name='cityscapes_panoptic',
    splits_to_sizes={'train': 2975, 'val': 500, 'test': 1525},
    num_classes=19,
    ignore_label=255,
    panoptic_label_divisor=1000,
    class_has_instances_list=tuple(range(11, 19)),
    colormap=_CITYSCAPES_COLORS,
    class_names=_CITYSCAPES_NAMES,
    dataset_ids=_CITYSCAPES_LABEL_IDS,
))
register(descriptor_from_coco_categories('coco_panoptic', coco_categories(),
                                         {'train': 118287, 'val': 5000, 'test': 20288}))
register(descriptor_from_coco_categories('synthetic_panoptic', SYNTHETIC_CATEGORIES, {'train': 64, 'val': 16}))
register(DatasetDescriptor(
    name='imagenet', splits_to_sizes={'train': 1281167, 'validation': 50000}, num_classes=1000, ignore_label=-1,
    panoptic_label_divisor=0, class_has_instances_list=(), colormap=(), class_names=(), task='classification'))
register(DatasetDescriptor(
    name='synthetic_classification', splits_to_sizes={'train': 256, 'validation': 64}, num_classes=6,
    ignore_label=-1, panoptic_label_divisor=0, class_has_instances_list=(), colormap=(), class_names=(),
    task='classification'))

"""TFDS sources: `coco/2017_panoptic` as an alternative to our COCO TFRecords, and `imagenet2012`.

Needs `pip install tensorflow-datasets` (extra 'tfds'), imported only when a 'tfds:' file_pattern is used.

COCO panoptic through TFDS: `panoptic_image` is the official PNG (segment id = R + 256G + 65536B) and
`panoptic_objects` lists the segments in annotation-file order with `label` = index of the category in the
annotation file's category list (COCO's file lists them sorted by id, so label + 1 is our contiguous class id) and
`is_crowd`. The panoptic label is built in-graph with the converter's rules (running instance ids per thing class
in segment order; crowd and stuff get instance 0; pixels of no segment are void).
"""

from typing import Callable, Dict, Optional

import tensorflow as tf

from deeplab_axial import common
from deeplab_axial.data import dataset as dataset_lib


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError('A "tfds:" file_pattern needs tensorflow-datasets: pip install "deeplab_axial[tfds]"') from e
    return tfds


def check_prepared(name: str, split: str, data_dir: Optional[str], data_dir_field: str = 'tfds_data_dir') -> None:
    """Checks, without reading or downloading anything, that TFDS dataset `name` is prepared in `data_dir` (None: TFDS's
    default folder) and has `split`.

    Raises:
      ValueError naming the dataset, the split and the folder, and saying how to prepare it (`tfds build`) or where
      to point `data_dir_field` (the config field, or flag, that sets the folder).
    """
    try:
        tfds = _tfds()
    except ImportError as e:
        raise ValueError(str(e)) from None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(f'TFDS has no dataset {name!r} (see the TFDS catalog for the names)') from None
    folder = builder.data_dir_root
    if not builder.is_prepared():
        raise ValueError(f'TFDS dataset {name} (split {split!r}) is not prepared in {folder}: prepare it with '
                         f'`tfds build {name} --data_dir {folder}` (some datasets need their archives downloaded by '
                         f'hand first, see the TFDS catalog), or set {data_dir_field} to the folder where it is '
                         'prepared')
    try:
        builder.info.splits[split]  # Also reads sub-splits such as 'train[:10%]'.
    except (KeyError, ValueError):
        raise ValueError(f'TFDS dataset {name} in {folder} has no split {split!r}; its splits: '
                         f'{sorted(builder.info.splits)}') from None


def load(name: str, split: str, data_dir: Optional[str], shuffle_files: bool, seed: Optional[int],
         input_context: Optional[tf.distribute.InputContext] = None) -> tf.data.Dataset:
    """The TFDS dataset `name` (already prepared under `data_dir`; nothing is downloaded).

    With an `input_context`, TFDS gives each input pipeline its own subset of the files.
    """
    tfds = _tfds()
    read_config = tfds.ReadConfig(shuffle_seed=seed, input_context=input_context)
    return tfds.load(name, split=split, data_dir=data_dir, shuffle_files=shuffle_files, download=False,
                     read_config=read_config)


def coco_panoptic_label(panoptic_image: tf.Tensor, segment_ids: tf.Tensor, labels: tf.Tensor,
                        is_crowd: tf.Tensor, descriptor: dataset_lib.DatasetDescriptor) -> tf.Tensor:
    """[H, W, 3] uint8 COCO panoptic PNG + segment list -> [H, W] int32 panoptic label.

    Args:
      segment_ids: [N] int64 segment ids of the PNG; labels: [N] 0-based category index; is_crowd: [N] bool.
    """
    divisor = descriptor.panoptic_label_divisor
    rgb = tf.cast(panoptic_image, tf.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    semantic = tf.cast(labels, tf.int32) + 1
    num_classes = descriptor.num_classes
    thing_table = tf.scatter_nd([[c] for c in descriptor.thing_classes],
                                tf.ones([len(descriptor.thing_classes)], tf.bool), [num_classes])
    counted = tf.gather(thing_table, semantic) & ~tf.cast(is_crowd, tf.bool)
    one_hot = tf.one_hot(semantic, num_classes, dtype=tf.int32) * tf.cast(counted, tf.int32)[:, tf.newaxis]
    running = tf.gather(tf.cumsum(one_hot, axis=0), semantic, axis=1, batch_dims=1)
    instance = tf.where(counted, running, 0)
    values = tf.concat([[descriptor.ignore_label * divisor], semantic * divisor + instance], axis=0)
    # Position of each pixel's id in [void] + segment_ids; 0 (void) where the id is listed nowhere.
    keys = tf.concat([[tf.constant(-1, tf.int64)], tf.cast(segment_ids, tf.int64)], axis=0)
    match = tf.equal(ids[..., tf.newaxis], keys)
    index = tf.argmax(tf.cast(match, tf.int32), axis=-1, output_type=tf.int32)
    return tf.gather(values, index)


def decoder(name: str, descriptor: dataset_lib.DatasetDescriptor) -> Callable[[Dict], Dict[str, tf.Tensor]]:
    """fn(TFDS example) -> the decoded-example dict the input pipeline expects."""
    if name.startswith('coco/') and 'panoptic' in name:
        def decode_coco(example):
            objects = example['panoptic_objects']
            panoptic = coco_panoptic_label(example['panoptic_image'], objects['id'], objects['label'],
                                           objects['is_crowd'], descriptor)
            file_name = tf.strings.regex_replace(example['image/filename'], r'\.[^.]*$', '')
            return {common.IMAGE: example['image'], 'panoptic': panoptic, common.IMAGE_NAME: file_name}
        return decode_coco
    if descriptor.is_panoptic:
        raise ValueError(f'TFDS dataset {name!r} is not a supported panoptic source; use coco/2017_panoptic or '
                         'convert the data to TFRecords')
    return lambda example: {common.IMAGE: example['image'], 'label': tf.cast(example['label'], tf.int32)}

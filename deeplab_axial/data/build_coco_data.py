r"""Converts COCO panoptic (2017 layout) to sharded TFRecords.

Input layout (as downloaded from cocodataset.org):
  {coco_root}/annotations/panoptic_{split}2017.json
  {coco_root}/annotations/panoptic_{split}2017/*.png
  {coco_root}/{split}2017/*.jpg
The synthetic dataset (`deeplab_axial.data.synthetic`) uses the same layout.

Labels: COCO category ids, sorted, map to contiguous 1..N; 0 is void (= ignore_label). A non-crowd thing segment
gets a running instance id 1, 2, ... per class in JSON order; crowd segments and stuff keep instance 0 (a thing
pixel with instance 0 is that class's crowd region). panoptic = class * 256 + instance.

Every image is decoded in full (by the input pipeline's decoder) and every panoptic PNG read before a shard is
written, so a truncated or corrupt file stops the conversion with an error naming it. --validate checks converted
records instead (see record_check.py).

Usage:
  python -m deeplab_axial.data.build_coco_data --coco_root=/data/coco --output_dir=/data/coco/tfrecord
  python -m deeplab_axial.data.build_coco_data --validate --output_dir=/data/coco/tfrecord
"""

import json
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence, Set

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

from deeplab_axial import io_errors
from deeplab_axial.data import data_utils
from deeplab_axial.data import dataset
from deeplab_axial.data import panoptic_png
from deeplab_axial.data import record_check
from deeplab_axial.data import shard_writer

_LABEL_DIVISOR = 256
_IGNORE_LABEL = 0


def coco_id_mapping(categories: Sequence[dict]) -> Dict[int, int]:
    """COCO (sparse) category id -> contiguous class id in 1..N, by sorted id (as `dataset.py` does)."""
    return {c['id']: i + 1 for i, c in enumerate(sorted(categories, key=lambda c: c['id']))}


def load_json(path: str) -> dict:
    """Reads an annotation JSON (tf.io.gfile); errors name the file."""
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f'Missing annotation file: {path}')
    with tf.io.gfile.GFile(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f'{path} is not valid JSON: {e}') from e


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_segment(segment) -> bool:
    return (isinstance(segment, dict) and _is_int(segment.get('id')) and _is_int(segment.get('category_id'))
            and isinstance(segment.get('iscrowd', 0), int))


def check_annotations(annotations, json_path: str) -> None:
    """Raises ValueError naming the JSON and the entry unless `annotations` is a list of objects with image_id, a
    string file_name and a segments_info list of objects with integer id and category_id (optional iscrowd)."""
    if not isinstance(annotations, list):
        raise ValueError(f'{json_path}: "annotations" is not a list')
    for ann in annotations:
        if not (isinstance(ann, dict) and 'image_id' in ann and isinstance(ann.get('file_name'), str)
                and isinstance(ann.get('segments_info'), list) and all(map(_is_segment, ann['segments_info']))):
            raise ValueError(f'{json_path}: an annotation is not an object with "image_id", a string "file_name" and '
                             'a "segments_info" list of objects with integer "id" and "category_id": '
                             f'{str(ann)[:200]}')


def panoptic_label_from_png(png_path: str, segments_info: Sequence[dict], id_mapping: Dict[int, int],
                            thing_ids: set, label_divisor: int, ignore_label: int) -> np.ndarray:
    """Reads one panoptic PNG (id = R + 256G + 65536B) and returns the [H, W] int32 panoptic label.

    Raises:
      ValueError naming `png_path` when the PNG and its segments_info disagree or a category is unknown.
    """
    if not tf.io.gfile.exists(png_path):
        raise FileNotFoundError(f'Missing panoptic PNG: {png_path}')
    with tf.io.gfile.GFile(png_path, 'rb') as f:
        data = f.read()
    try:
        segment_ids = panoptic_png.decode_panoptic_png(data)
    except ValueError as e:
        raise ValueError(f'Panoptic PNG {png_path}: {e}') from None
    present = set(np.unique(segment_ids).tolist()) - {0}
    listed = {s['id'] for s in segments_info}
    if present - listed:
        raise ValueError(f'{png_path}: segment ids {sorted(present - listed)} are in the PNG but not in the JSON '
                         'segments_info')
    if listed - present:
        raise ValueError(f'{png_path}: segment ids {sorted(listed - present)} are in the JSON segments_info but '
                         'not in the PNG')
    panoptic = np.full(segment_ids.shape, ignore_label * label_divisor, np.int32)
    next_instance: Dict[int, int] = {}
    for segment in segments_info:
        category = segment['category_id']
        if category not in id_mapping:
            raise ValueError(f'{png_path}: segment {segment["id"]} has unknown category_id {category}; known ids: '
                             f'{sorted(id_mapping)}')
        semantic = id_mapping[category]
        instance = 0
        if category in thing_ids and not segment.get('iscrowd', 0):
            instance = next_instance.get(semantic, 0) + 1
            next_instance[semantic] = instance
            if instance >= label_divisor:
                raise ValueError(f'{png_path}: more than {label_divisor - 1} instances of category {category}')
        panoptic[segment_ids == segment['id']] = semantic * label_divisor + instance
    return panoptic


def panoptic_example(image_path: str, png_path: str, name: str, segments_info: Sequence[dict],
                     id_mapping: Dict[int, int], thing_ids: Set[int], label_divisor: int,
                     ignore_label: int) -> tf.train.Example:
    """One image and its panoptic PNG (see `panoptic_label_from_png`) as a TFExample; their sizes must agree."""
    image_data, image_format, height, width = data_utils.read_image_for_record(image_path)
    panoptic = panoptic_label_from_png(png_path, segments_info, id_mapping, thing_ids, label_divisor, ignore_label)
    if panoptic.shape != (height, width):
        raise ValueError(f'{png_path}: size {panoptic.shape} differs from image {image_path} size '
                         f'{(height, width)}')
    return data_utils.create_panoptic_example(image_data, image_format, name, height, width, panoptic)


def convert_split(coco_root: str, output_dir: str, split: str, num_shards: int = 1000, num_workers: int = 4,
                  dataset_name: Optional[str] = None) -> List[str]:
    """Converts split `split` ('train' or 'val') of a COCO-layout panoptic dataset; returns the shard paths.

    Args:
      dataset_name: optional registered descriptor whose `dataset_ids` the JSON categories must match (catches
        converting one dataset with another's class list).
    """
    json_path = os.path.join(coco_root, 'annotations', f'panoptic_{split}2017.json')
    data = load_json(json_path)
    for key in ('images', 'annotations', 'categories'):
        if key not in data:
            raise ValueError(f'{json_path}: missing top-level key {key!r}')
    id_mapping = coco_id_mapping(data['categories'])
    if dataset_name:
        expected = dataset.get(dataset_name).dataset_ids[1:]
        if tuple(sorted(id_mapping)) != tuple(expected):
            raise ValueError(f'{json_path}: category ids {sorted(id_mapping)} differ from dataset '
                             f'{dataset_name!r} ids {list(expected)}')
    thing_ids = {c['id'] for c in data['categories'] if c.get('isthing')}
    if not isinstance(data['images'], list):
        raise ValueError(f'{json_path}: "images" is not a list')
    for image in data['images']:
        if not (isinstance(image, dict) and 'id' in image and isinstance(image.get('file_name'), str)):
            raise ValueError(f'{json_path}: an "images" entry is not an object with "id" and a string "file_name": '
                             f'{str(image)[:200]}')
    check_annotations(data['annotations'], json_path)
    images = {im['id']: im for im in data['images']}
    png_dir = os.path.join(coco_root, 'annotations', f'panoptic_{split}2017')
    image_dir = os.path.join(coco_root, f'{split}2017')
    items = []
    for ann in data['annotations']:
        if ann['image_id'] not in images:
            raise ValueError(f'{json_path}: annotation {ann["file_name"]} refers to unknown image_id '
                             f'{ann["image_id"]}')
        items.append((images[ann['image_id']], ann))

    def make_example(item):
        image_info, ann = item
        return panoptic_example(os.path.join(image_dir, image_info['file_name']),
                                os.path.join(png_dir, ann['file_name']), os.path.splitext(image_info['file_name'])[0],
                                ann['segments_info'], id_mapping, thing_ids, _LABEL_DIVISOR, _IGNORE_LABEL)

    return shard_writer.write_sharded_tfrecords(items, make_example, output_dir, split, num_shards, num_workers)


def _define_flags() -> None:
    flags.DEFINE_string('coco_root', None, 'COCO root holding annotations/ and {split}2017/ (not with --validate).')
    flags.DEFINE_string('output_dir', None, 'Where the TFRecord shards go (local or gs://).', required=True)
    flags.DEFINE_list('splits', ['train', 'val'], 'Splits to convert.')
    flags.DEFINE_integer('num_shards', 1000, 'Shards per split (capped at the number of images).')
    flags.DEFINE_integer('num_workers', 4, 'Shards converted in parallel.')
    flags.DEFINE_string('dataset_name', None, 'Optional registered dataset whose category ids the JSON must match.')
    flags.DEFINE_boolean('validate', False, 'Convert nothing: check that every record of the splits in --output_dir '
                         'decodes and has a consistent label (dataset --dataset_name, default coco_panoptic).')


def run_reporting_errors(run: Callable[[], int]) -> int:
    """Runs a converter's work; a fault of the input or of the file system (a full disk, a missing permission) is
    printed as one `error:` line naming the file, exit status 2, instead of a traceback."""
    try:
        return run()
    except (ValueError, FileNotFoundError) as e:  # our messages name the file, flag or field
        message = str(e)
    except (OSError, tf.errors.OpError) as e:
        message = io_errors.user_io_message(e)
        if message is None:
            raise
    print(f'error: {message}', file=sys.stderr)
    return 2


def main(argv: Sequence[str]) -> int:
    del argv
    f = flags.FLAGS
    if f.validate:
        return run_reporting_errors(lambda: record_check.validate_splits(
            f.output_dir, f.splits, f.dataset_name or 'coco_panoptic'))
    if not f.coco_root:
        print('error: --coco_root is required (unless --validate)', file=sys.stderr)
        return 2

    def convert() -> int:
        for split in f.splits:
            paths = convert_split(f.coco_root, f.output_dir, split, f.num_shards, f.num_workers, f.dataset_name)
            logging.info('%s: %d shards in %s', split, len(paths), f.output_dir)
        return 0

    return run_reporting_errors(convert)


if __name__ == '__main__':
    _define_flags()
    app.run(main)

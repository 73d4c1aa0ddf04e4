r"""Converts COCO panoptic (2017 layout) to sharded TFRecords.

Input layout (as downloaded from cocodataset.org):
  {coco_root}/annotations/panoptic_{split}2017.json
  {coco_root}/annotations/panoptic_{split}2017/*.png
  {coco_root}/{split}2017/*.jpg
The synthetic dataset (`deeplab_axial.data.synthetic`) uses the same layout.

Labels: COCO category ids, sorted, map to contiguous 1..N; 0 is void (= ignore_label). A non-crowd thing segment
gets a running instance id 1, 2, ... per class in JSON order; crowd segments and stuff keep instance 0 (a thing
pixel with instance 0 is that class's crowd region). panoptic = class * 256 + instance. With --treat_crowd_as_ignore
(the command line's default, as deeplab2's) crowd segments are void instead; `convert_split` keeps them unless told.

Every image is decoded in full (by the input pipeline's decoder) and every panoptic PNG read before a shard is
written, so a truncated or corrupt file stops the conversion with an error naming it. --validate checks converted
records instead (see record_check.py).

Usage:
  python -m deeplab_axial.data.build_coco_data --coco_root=/data/coco --output_dir=/data/coco/tfrecord
  python -m deeplab_axial.data.build_coco_data --validate --output_dir=/data/coco/tfrecord
"""

import json
import os
from typing import Dict, List, Optional, Sequence, Set, Tuple

from absl import app
from absl import flags
from absl import logging
import numpy as np

from deeplab_axial import cli
from deeplab_axial import lazy_module
from deeplab_axial.data import dataset
from deeplab_axial.data import panoptic_png

# Loaded on first use: --help answers before TensorFlow is imported.
tf = lazy_module.load('tensorflow')
data_utils = lazy_module.load('deeplab_axial.data.data_utils')
record_check = lazy_module.load('deeplab_axial.data.record_check')
shard_writer = lazy_module.load('deeplab_axial.data.shard_writer')

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


# The category id a crowd segment takes under `crowd_as_void`; no dataset uses it.
_VOID_CATEGORY = -1


def crowd_as_void(segments_info: Sequence[dict], id_mapping: Dict[int, int],
                  ignore_label: int) -> Tuple[List[dict], Dict[int, int]]:
    """deeplab2's treat_crowd_as_ignore: (segments_info with every crowd segment of the void class, the id mapping
    that maps that class to `ignore_label`)."""
    segments = [dict(s, category_id=_VOID_CATEGORY) if s.get('iscrowd') else s for s in segments_info]
    return segments, {**id_mapping, _VOID_CATEGORY: ignore_label}


def panoptic_example(image_path: str, png_path: str, name: str, segments_info: Sequence[dict],
                     id_mapping: Dict[int, int], thing_ids: Set[int], label_divisor: int,
                     ignore_label: int) -> 'tf.train.Example':
    """One image and its panoptic PNG (see `panoptic_label_from_png`) as a TFExample; their sizes must agree."""
    image_data, image_format, height, width = data_utils.read_image_for_record(image_path)
    panoptic = panoptic_label_from_png(png_path, segments_info, id_mapping, thing_ids, label_divisor, ignore_label)
    if panoptic.shape != (height, width):
        raise ValueError(f'{png_path}: size {panoptic.shape} differs from image {image_path} size '
                         f'{(height, width)}')
    return data_utils.create_panoptic_example(image_data, image_format, name, height, width, panoptic)


def convert_split(coco_root: str, output_dir: str, split: str, num_shards: int = 1000, num_workers: int = 4,
                  dataset_name: Optional[str] = None, treat_crowd_as_ignore: bool = False) -> List[str]:
    """Converts split `split` ('train' or 'val') of a COCO-layout panoptic dataset; returns the shard paths.

    Args:
      dataset_name: optional registered descriptor whose `dataset_ids` the JSON categories must match (catches
        converting one dataset with another's class list).
      treat_crowd_as_ignore: write crowd segments as void (deeplab2's flag) instead of crowd regions.
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
        segments, mapping = ann['segments_info'], id_mapping
        if treat_crowd_as_ignore:
            segments, mapping = crowd_as_void(segments, id_mapping, _IGNORE_LABEL)
        return panoptic_example(os.path.join(image_dir, image_info['file_name']),
                                os.path.join(png_dir, ann['file_name']), os.path.splitext(image_info['file_name'])[0],
                                segments, mapping, thing_ids, _LABEL_DIVISOR, _IGNORE_LABEL)

    return shard_writer.write_sharded_tfrecords(items, make_example, output_dir, split, num_shards, num_workers)


def _define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The command line's flags (in `flag_values`; a test reads their defaults from its own)."""
    define = {'flag_values': flag_values}
    flags.DEFINE_string('coco_root', None, 'COCO root holding annotations/ and {split}2017/ (not with --validate).',
                        **define)
    flags.DEFINE_string('output_dir', None, 'Where the TFRecord shards go (local or gs://).', required=True, **define)
    flags.DEFINE_list('splits', ['train', 'val'], 'Splits to convert.', **define)
    flags.DEFINE_integer('num_shards', 1000, 'Shards per split (capped at the number of images).', **define)
    flags.DEFINE_integer('num_workers', 4, 'Shards converted in parallel.', **define)
    flags.DEFINE_string('dataset_name', None, 'Optional registered dataset whose category ids the JSON must match.',
                        **define)
    flags.DEFINE_boolean('treat_crowd_as_ignore', True, "Write crowd segments as void (deeplab2's default); "
                         '--notreat_crowd_as_ignore keeps them as crowd regions (instance 0 of their class).', **define)
    flags.DEFINE_boolean('validate', False, 'Convert nothing: check that every record of the splits in --output_dir '
                         'decodes and has a consistent label (dataset --dataset_name, default coco_panoptic).',
                         **define)


def main(argv: Sequence[str]) -> int:
    del argv
    f = flags.FLAGS
    if f.validate:
        return cli.run_reporting_errors(lambda: record_check.validate_splits(
            f.output_dir, f.splits, f.dataset_name or 'coco_panoptic'))
    if not f.coco_root:
        cli.print_error('--coco_root is required (unless --validate)')
        return cli.EXIT_USER_ERROR

    def convert() -> int:
        for split in f.splits:
            paths = convert_split(f.coco_root, f.output_dir, split, f.num_shards, f.num_workers, f.dataset_name,
                                  f.treat_crowd_as_ignore)
            logging.info('%s: %d shards in %s', split, len(paths), f.output_dir)
        return 0

    return cli.run_reporting_errors(convert)


def run() -> None:
    """Console-script entry (`python -m deeplab_axial.data.build_coco_data` calls the same)."""
    _define_flags()
    app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
    run()

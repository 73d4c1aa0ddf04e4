r"""Converts Cityscapes panoptic (train ids) to sharded TFRecords.

Input layout: the official download plus the output of cityscapesscripts'
`csCreatePanopticImgs --use-train-id`:
  {cityscapes_root}/gtFine/cityscapes_panoptic_{split}_trainId.json
  {cityscapes_root}/gtFine/cityscapes_panoptic_{split}_trainId/{city}_{seq}_{frame}_gtFine_panoptic.png
  {cityscapes_root}/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png

Labels: 19 train ids, void = 255, panoptic = train_id * 1000 + instance. Thing classes (11..18) get running
instance ids 1, 2, ... per class in segment order; crowd thing segments ("group" regions) keep instance 0, the
project's crowd convention, or become void with --treat_crowd_as_ignore.

Images and PNGs are decoded in full before a shard is written (see build_coco_data); --validate checks converted
records instead.

Usage:
  python -m deeplab_axial.data.build_cityscapes_data --cityscapes_root=/data/cityscapes \
      --output_dir=/data/cityscapes/tfrecord
  python -m deeplab_axial.data.build_cityscapes_data --validate --output_dir=/data/cityscapes/tfrecord
"""

import os
from typing import List, Sequence

from absl import app
from absl import flags
from absl import logging

from deeplab_axial import cli
from deeplab_axial import lazy_module
from deeplab_axial.data import build_coco_data
from deeplab_axial.data import dataset

# Loaded on first use: --help answers before TensorFlow is imported.
record_check = lazy_module.load('deeplab_axial.data.record_check')
shard_writer = lazy_module.load('deeplab_axial.data.shard_writer')


def convert_split(cityscapes_root: str, output_dir: str, split: str, num_shards: int = 10, num_workers: int = 4,
                  treat_crowd_as_ignore: bool = False) -> List[str]:
    """Converts one split ('train', 'val'); returns the shard paths."""
    descriptor = dataset.get('cityscapes_panoptic')
    divisor, ignore = descriptor.panoptic_label_divisor, descriptor.ignore_label
    json_path = os.path.join(cityscapes_root, 'gtFine', f'cityscapes_panoptic_{split}_trainId.json')
    data = build_coco_data.load_json(json_path)
    if 'annotations' not in data:
        raise ValueError(f'{json_path}: missing top-level key "annotations"')
    build_coco_data.check_annotations(data['annotations'], json_path)
    png_dir = os.path.join(cityscapes_root, 'gtFine', f'cityscapes_panoptic_{split}_trainId')
    id_mapping = {c: c for c in range(descriptor.num_classes)}
    thing_ids = set(descriptor.thing_classes)
    expected = descriptor.splits_to_sizes.get(split)
    if expected is not None and expected != len(data['annotations']):
        logging.warning('%s lists %d images; the full Cityscapes %s split has %d', json_path,
                        len(data['annotations']), split, expected)

    def make_example(ann: dict):
        image_id = ann['image_id']
        city = image_id.split('_')[0]
        image_path = os.path.join(cityscapes_root, 'leftImg8bit', split, city, f'{image_id}_leftImg8bit.png')
        segments, mapping = ann['segments_info'], id_mapping
        if treat_crowd_as_ignore:
            segments, mapping = build_coco_data.crowd_as_void(segments, id_mapping, ignore)
        return build_coco_data.panoptic_example(image_path, os.path.join(png_dir, ann['file_name']), image_id,
                                                segments, mapping, thing_ids, divisor, ignore)

    return shard_writer.write_sharded_tfrecords(data['annotations'], make_example, output_dir, split, num_shards,
                                                num_workers)


def _define_flags() -> None:
    flags.DEFINE_string('cityscapes_root', None, 'Cityscapes root holding gtFine/ and leftImg8bit/ (not with '
                        '--validate).')
    flags.DEFINE_string('output_dir', None, 'Where the TFRecord shards go (local or gs://).', required=True)
    flags.DEFINE_list('splits', ['train', 'val'], 'Splits to convert.')
    flags.DEFINE_integer('num_shards', 10, 'Shards per split.')
    flags.DEFINE_integer('num_workers', 4, 'Shards converted in parallel.')
    flags.DEFINE_boolean('treat_crowd_as_ignore', False, 'Write crowd ("group") regions as void.')
    flags.DEFINE_boolean('validate', False, 'Convert nothing: check that every record of the splits in --output_dir '
                         'decodes and has a consistent Cityscapes label.')


def main(argv: Sequence[str]) -> int:
    del argv
    f = flags.FLAGS
    if f.validate:
        return cli.run_reporting_errors(lambda: record_check.validate_splits(
            f.output_dir, f.splits, 'cityscapes_panoptic'))
    if not f.cityscapes_root:
        cli.print_error('--cityscapes_root is required (unless --validate)')
        return cli.EXIT_USER_ERROR

    def convert() -> int:
        for split in f.splits:
            paths = convert_split(f.cityscapes_root, f.output_dir, split, f.num_shards, f.num_workers,
                                  f.treat_crowd_as_ignore)
            logging.info('%s: %d shards in %s', split, len(paths), f.output_dir)
        return 0

    return cli.run_reporting_errors(convert)


def run() -> None:
    """Console-script entry (`python -m deeplab_axial.data.build_cityscapes_data` calls the same)."""
    _define_flags()
    app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
    run()

r"""A small built-in dataset, written in the real COCO panoptic on-disk layout, that a tiny model learns quickly.

Panoptic images: stuff classes (`dataset.SYNTHETIC_CATEGORIES`: sky, grass, wall) fill horizontal bands with wavy
borders, each a distinct colour with mild stripe texture and noise; 1-4 thing instances (disc, square, triangle)
of distinct colours and a dark outline may overlap; some images add a crowd region (a cluster of small shapes of
one class marked iscrowd) and a void patch (segment id 0). Everything is drawn from one seed, so the same flags
give the same files. A classification set of shape classes is written as TPU-style ImageNet TFRecords
(`image/class/label` 1-based).

Usage:
  python -m deeplab_axial.data.synthetic --output_dir=/tmp/synthetic [--tfrecord_dir=/tmp/synthetic/tfrecord]
then train on `{tfrecord_dir}/train-*.tfrecord` with dataset 'synthetic_panoptic'.
"""

import io
import os
from typing import Dict, List, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging
import numpy as np
from PIL import Image

from deeplab_axial import atomic_files
from deeplab_axial.data import data_utils
from deeplab_axial.data import dataset
from deeplab_axial.data import panoptic_png

_THINGS = [c for c in dataset.SYNTHETIC_CATEGORIES if c['isthing']]
_STUFF = [c for c in dataset.SYNTHETIC_CATEGORIES if not c['isthing']]
# Shape classes of the classification set (0-based index; stored 1-based).
CLASSIFICATION_SHAPES = ('disc', 'square', 'triangle', 'ring', 'cross', 'bar')


def _shape_mask(kind: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    """Boolean mask of a shape centred at (cy, cx) with half-size r."""
    dy, dx = yy - cy, xx - cx
    if kind in ('disc', 'ring'):
        d2 = dy ** 2 + dx ** 2
        return (d2 <= r ** 2) & (d2 >= (0.55 * r) ** 2 if kind == 'ring' else True)
    if kind == 'square':
        return (np.abs(dy) <= r) & (np.abs(dx) <= r)
    if kind == 'triangle':  # apex up, base at cy + r.
        return (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    if kind == 'cross':
        w = 0.35 * r
        return ((np.abs(dy) <= r) & (np.abs(dx) <= w)) | ((np.abs(dx) <= r) & (np.abs(dy) <= w))
    if kind == 'bar':
        return (np.abs(dy) <= 0.3 * r) & (np.abs(dx) <= r)
    raise ValueError(f'Unknown shape {kind!r}')


def _textured(rng: np.random.Generator, colour: Sequence[int], shape: Tuple[int, int], yy, xx) -> np.ndarray:
    """A colour field with mild stripes and noise, [H, W, 3] float."""
    phase, freq = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.5)
    stripes = 10.0 * np.sin(freq * (yy + xx) + phase)[..., None]
    return np.asarray(colour, np.float32) + stripes + rng.normal(0, 6, shape + (3,))


def render_panoptic_example(rng: np.random.Generator, height: int, width: int
                            ) -> Tuple[np.ndarray, np.ndarray, List[dict]]:
    """Draws one image.

    Returns:
      image [height, width, 3] uint8, segment ids [height, width] int32 (0 = void) and COCO segments_info.
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.zeros((height, width, 3), np.float32)
    ids = np.zeros((height, width), np.int32)
    segments: List[dict] = []

    # Stuff: 2 or 3 bands with wavy borders, classes in random order.
    num_bands = int(rng.integers(2, 4))
    stuff = [_STUFF[i] for i in rng.permutation(len(_STUFF))[:num_bands]]
    cuts = np.sort(rng.uniform(0.25, 0.75, num_bands - 1)) * height
    band = np.zeros((height, width), np.int32)
    for cut in cuts:
        wave = cut + 4.0 * np.sin(xx / rng.uniform(8, 16) + rng.uniform(0, 2 * np.pi))
        band += (yy >= wave).astype(np.int32)
    for b, category in enumerate(stuff):
        mask = band == b
        if mask.any():
            segments.append({'id': len(segments) + 1, 'category_id': category['id'], 'iscrowd': 0})
            ids[mask] = segments[-1]['id']
            image[mask] = _textured(rng, category['color'], (height, width), yy, xx)[mask]

    scale = min(height, width)
    # Crowd: a cluster of small shapes of one thing class, one segment.
    if rng.random() < 0.25:
        category = _THINGS[int(rng.integers(len(_THINGS)))]
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        mask = np.zeros((height, width), bool)
        for _ in range(int(rng.integers(3, 6))):
            mask |= _shape_mask(category['name'], yy, xx, cy + rng.normal(0, 0.06 * scale),
                                cx + rng.normal(0, 0.06 * scale), 0.05 * scale)
        segments.append({'id': len(segments) + 1, 'category_id': category['id'], 'iscrowd': 1})
        ids[mask] = segments[-1]['id']
        image[mask] = _textured(rng, category['color'], (height, width), yy, xx)[mask]

    # Things: 1-4 reasonably large instances, later ones occlude earlier ones.
    for _ in range(int(rng.integers(1, 5))):
        category = _THINGS[int(rng.integers(len(_THINGS)))]
        r = rng.uniform(0.12, 0.22) * scale
        cy, cx = rng.uniform(r, height - r), rng.uniform(r, width - r)
        mask = _shape_mask(category['name'], yy, xx, cy, cx, r)
        inner = _shape_mask(category['name'], yy, xx, cy, cx, r - 1.5)
        segments.append({'id': len(segments) + 1, 'category_id': category['id'], 'iscrowd': 0})
        ids[mask] = segments[-1]['id']
        fill = _textured(rng, category['color'], (height, width), yy, xx)
        image[mask] = np.where(inner[..., None], fill, 0.35 * fill)[mask]

    # Void: a grey noisy patch that belongs to no class.
    if rng.random() < 0.3:
        h, w = int(rng.uniform(0.1, 0.2) * height), int(rng.uniform(0.1, 0.2) * width)
        y0, x0 = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
        ids[y0:y0 + h, x0:x0 + w] = 0
        image[y0:y0 + h, x0:x0 + w] = 128 + rng.normal(0, 40, (h, w, 3))

    kept = []
    for segment in segments:  # Drop fully occluded segments; fill area and bbox as COCO does.
        ys, xs = np.nonzero(ids == segment['id'])
        if len(ys):
            segment.update(area=int(len(ys)), bbox=[int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                                    int(ys.max() - ys.min() + 1)])
            kept.append(segment)
    return np.clip(image, 0, 255).astype(np.uint8), ids, kept


def write_panoptic_dataset(output_dir: str, num_train: int = 64, num_val: int = 16, height: int = 96,
                           width: int = 128, seed: int = 0) -> Dict[str, int]:
    """Writes train/val in COCO panoptic layout under `output_dir`; returns split sizes."""
    rng = np.random.default_rng(seed)
    categories = [dict(c, supercategory=c['name']) for c in dataset.SYNTHETIC_CATEGORIES]
    next_image_id = 1
    for split, count in (('train', num_train), ('val', num_val)):
        image_dir = os.path.join(output_dir, f'{split}2017')
        png_dir = os.path.join(output_dir, 'annotations', f'panoptic_{split}2017')
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(png_dir, exist_ok=True)
        images, annotations = [], []
        for _ in range(count):
            image, ids, segments = render_panoptic_example(rng, height, width)
            name = f'{next_image_id:012d}'
            Image.fromarray(image).save(os.path.join(image_dir, name + '.jpg'), quality=95)
            panoptic_png.write_panoptic_png(os.path.join(png_dir, name + '.png'), ids)
            images.append({'id': next_image_id, 'file_name': name + '.jpg', 'height': height, 'width': width})
            annotations.append({'image_id': next_image_id, 'file_name': name + '.png', 'segments_info': segments})
            next_image_id += 1
        atomic_files.write_json(os.path.join(output_dir, 'annotations', f'panoptic_{split}2017.json'),
                                {'images': images, 'annotations': annotations, 'categories': categories})
    return {'train': num_train, 'val': num_val}


def render_shape_image(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """One classification image: shape CLASSIFICATION_SHAPES[label] in a random colour on a textured background."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = _textured(rng, rng.integers(0, 256, 3), (size, size), yy, xx)
    r = rng.uniform(0.25, 0.4) * size
    mask = _shape_mask(CLASSIFICATION_SHAPES[label], yy, xx, rng.uniform(r, size - r), rng.uniform(r, size - r), r)
    image[mask] = _textured(rng, rng.integers(0, 256, 3), (size, size), yy, xx)[mask]
    return np.clip(image, 0, 255).astype(np.uint8)


def write_classification_dataset(output_dir: str, num_train: int = 256, num_val: int = 64, size: int = 64,
                                 seed: int = 0, num_shards: int = 2) -> Dict[str, int]:
    """Writes TPU-style ImageNet TFRecords `{train,validation}-XXXXX-of-YYYYY` (labels 1-based) of shape classes."""
    from deeplab_axial.data import shard_writer
    rng = np.random.default_rng(seed)
    for split, count in (('train', num_train), ('validation', num_val)):
        items = []
        for i in range(count):
            label = i % len(CLASSIFICATION_SHAPES)
            buf = io.BytesIO()
            Image.fromarray(render_shape_image(rng, label, size)).save(buf, format='JPEG', quality=95)
            items.append((f'{split}_{i:06d}', buf.getvalue(), label))
        shard_writer.write_sharded_tfrecords(
            items, lambda it: data_utils.create_classification_example(it[1], 'jpeg', it[0], size, size, it[2] + 1),
            output_dir, split, num_shards, num_workers=1)
    return {'train': num_train, 'validation': num_val}


def _define_flags() -> None:
    flags.DEFINE_string('output_dir', None, 'Where the COCO-layout panoptic dataset is written.', required=True)
    flags.DEFINE_string('tfrecord_dir', None, 'If set, also convert it with build_coco_data into this folder.')
    flags.DEFINE_string('classification_dir', None, 'If set, also write the shape classification TFRecords here.')
    flags.DEFINE_integer('num_train', 64, 'Training images.')
    flags.DEFINE_integer('num_val', 16, 'Validation images.')
    flags.DEFINE_integer('height', 96, 'Image height.')
    flags.DEFINE_integer('width', 128, 'Image width.')
    flags.DEFINE_integer('seed', 0, 'Random seed; the same seed writes the same files.')


def main(argv: Sequence[str]) -> int:
    del argv
    f = flags.FLAGS
    from deeplab_axial.data import build_coco_data

    def write() -> int:
        write_panoptic_dataset(f.output_dir, f.num_train, f.num_val, f.height, f.width, f.seed)
        logging.info('Wrote synthetic COCO-layout panoptic dataset to %s', f.output_dir)
        if f.tfrecord_dir:
            for split in ('train', 'val'):
                build_coco_data.convert_split(f.output_dir, f.tfrecord_dir, split, num_shards=4,
                                              dataset_name='synthetic_panoptic')
        if f.classification_dir:
            write_classification_dataset(f.classification_dir, seed=f.seed)
        return 0

    return build_coco_data.run_reporting_errors(write)  # a full disk: one error line naming the file


if __name__ == '__main__':
    _define_flags()
    app.run(main)

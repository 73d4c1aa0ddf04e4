r"""Panoptic input pipeline throughput at Cityscapes crop size, and converted size versus source size.

Writes a synthetic COCO-layout dataset at 1024x2048, converts it with build_coco_data, then times
  (a) decode only (parse + JPEG/PNG decode),
  (b) the full training pipeline: decode, random scale 0.5-2.0, pad, crop 1025x2049, flip, Panoptic-DeepLab
      targets (batch 1),
in the same process, and prints medians and their ratio. Sizes: source folder, our TFRecords, and what deeplab2's
raw-int32 labels would take for the same images.

  python benchmarks/input_pipeline.py [--num_images 8 --steps 24 --work_dir /tmp/bench_input]
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

from deeplab_axial.data import build_coco_data  # noqa: E402
from deeplab_axial.data import input_pipeline  # noqa: E402
from deeplab_axial.data import synthetic  # noqa: E402


def _folder_size(path: str, suffixes=None) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs
               if suffixes is None or f.endswith(suffixes))


def _time_per_example(ds: tf.data.Dataset, steps: int, warmup: int = 3):
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        next(it)
        times.append(time.perf_counter() - start)
    return statistics.median(times), sum(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--num_images', type=int, default=8)
    parser.add_argument('--steps', type=int, default=24)
    parser.add_argument('--work_dir', default='/tmp/bench_input')
    args = parser.parse_args()
    raw, records = os.path.join(args.work_dir, 'raw'), os.path.join(args.work_dir, 'tfrecord')
    height, width = 1024, 2048
    if not os.path.exists(os.path.join(raw, 'annotations', 'panoptic_train2017.json')):
        start = time.perf_counter()
        synthetic.write_panoptic_dataset(raw, num_train=args.num_images, num_val=1, height=height, width=width)
        print(f'wrote {args.num_images} synthetic {height}x{width} images in {time.perf_counter() - start:.1f}s')
    start = time.perf_counter()
    build_coco_data.convert_split(raw, records, 'train', num_shards=4, num_workers=2)
    print(f'conversion (resumable; 0 if already done): {time.perf_counter() - start:.1f}s')

    source = (_folder_size(os.path.join(raw, 'train2017')) +
              _folder_size(os.path.join(raw, 'annotations', 'panoptic_train2017')) +
              os.path.getsize(os.path.join(raw, 'annotations', 'panoptic_train2017.json')))
    converted = sum(os.path.getsize(p) for p in tf.io.gfile.glob(os.path.join(records, 'train-*')))
    raw_int32 = _folder_size(os.path.join(raw, 'train2017')) + args.num_images * height * width * 4
    print(f'source (images + panoptic PNGs + JSON): {source / 1e6:.2f} MB')
    print(f'converted TFRecords (PNG-packed labels): {converted / 1e6:.2f} MB  ratio to source {converted / source:.3f}')
    print(f'deeplab2 raw int32 labels would be:     {raw_int32 / 1e6:.2f} MB  ratio to source {raw_int32 / source:.3f}')

    pattern = os.path.join(records, 'train-*')
    decode_only = (tf.data.TFRecordDataset(tf.io.gfile.glob(pattern)).repeat()
                   .map(lambda r: input_pipeline.decode_panoptic_example(r, 256),
                        num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))
    options = input_pipeline.DataOptions(dataset='synthetic_panoptic', file_pattern=pattern, batch_size=1,
                                         crop_size=(1025, 2049), min_scale_factor=0.5, max_scale_factor=2.0,
                                         scale_factor_step_size=0.25, seed=0, shuffle_buffer_size=8)
    full = input_pipeline.build_dataset(options)
    decode_median, _ = _time_per_example(decode_only, args.steps)
    full_median, full_total = _time_per_example(full, args.steps)
    print(f'CPU cores visible: {os.cpu_count()}  TF {tf.__version__}')
    print(f'decode only:            median {decode_median * 1e3:8.1f} ms/example  '
          f'{1 / decode_median:6.2f} examples/s')
    print(f'train pipeline 1025x2049 (scale, crop, flip, targets): median {full_median * 1e3:8.1f} ms/example  '
          f'{1 / full_median:6.2f} examples/s (mean {args.steps / full_total:.2f} examples/s)')
    print(f'ratio train/decode time: {full_median / decode_median:.2f}')


if __name__ == '__main__':
    main()

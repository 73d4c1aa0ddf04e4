r"""Latency of the exported serving path: SavedModel signature with and without XLA, and the checkpoint runner.

Builds the tiny synthetic Axial-DeepLab (random weights) at its eval crop, saves a checkpoint the way the trainer
does, exports it twice (plain graph and --jit_compile), loads both with tf.saved_model.load and times, in this
process, `serving_default` on one uint8 image smaller than the crop (fit, model, post-processing, restore), plus
the checkpoint runner (`deeplab_axial.predict --config_file/--checkpoint` path) on the same image. Prints the
first-call time (tracing / XLA compilation), the median of the timed calls, and ratios against the plain export.

  python benchmarks/export_serving.py [--height 33 --width 49 --repeats 20 --work_dir /tmp/bench_export]
"""

import argparse
import os
import shutil
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from google.protobuf import text_format  # noqa: E402

from deeplab_axial import common, config_utils  # noqa: E402
from deeplab_axial.inference import checkpoint_runner, model_loader, saved_model_export  # noqa: E402
from deeplab_axial.model import builder  # noqa: E402

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', 'synthetic',
                      'axial_deeplab_tiny.textproto')


def _time(fn, repeats: int):
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--height', type=int, default=33)
    parser.add_argument('--width', type=int, default=49)
    parser.add_argument('--repeats', type=int, default=20)
    parser.add_argument('--work_dir', default='/tmp/bench_export')
    args = parser.parse_args()
    shutil.rmtree(args.work_dir, ignore_errors=True)
    os.makedirs(args.work_dir)

    config = model_loader.load_config(CONFIG, {'DATA_DIR': '/unused'})
    config_file = os.path.join(args.work_dir, 'config.textproto')
    with open(config_file, 'w') as f:
        f.write(text_format.MessageToString(config))
    descriptor = config_utils.validate(config)['eval']
    keras.utils.set_random_seed(0)
    model = builder.build_model(config, descriptor)
    model.build((None,) + model_loader.input_size(config) + (3,))
    step = tf.Variable(1, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(**dict(model.checkpoint_items, **{common.CKPT_GLOBAL_STEP: step}))
    prefix = checkpoint.save(os.path.join(args.work_dir, 'ckpt', 'ckpt'))

    image = np.random.default_rng(0).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    results = {}
    for name, jit in (('saved_model', False), ('saved_model_jit', True)):
        output = os.path.join(args.work_dir, name)
        saved_model_export.export(config, prefix, output, jit_compile=jit)
        signature = tf.saved_model.load(output).signatures['serving_default']
        results[name] = _time(lambda: signature(image=tf.constant(image)), args.repeats)
    runner = checkpoint_runner.build_runner(config_file, prefix)
    results['checkpoint_runner'] = _time(lambda: runner([image]), args.repeats)

    base = results['saved_model'][1]
    print(f'image {args.height}x{args.width}, model input {model_loader.input_size(config)}, '
          f'{args.repeats} timed calls each ({tf.config.list_physical_devices()[-1].device_type})')
    for name, (first, median) in results.items():
        print(f'{name:18s} first call {first:7.2f} s   median {1000 * median:8.1f} ms   '
              f'ratio vs saved_model {median / base:5.2f}')


if __name__ == '__main__':
    main()

"""Controller loop overhead: train steps per second of a small conv net for several `steps_per_loop` values.

Many steps inside one tf.function call amortise the Python round trip per call (the reason deeplab2/Orbit use
steps_per_loop, and what TPUs need). Prints the median steps/s of each setting over repeats and its ratio to
steps_per_loop=1, measured in this process on the same model and data.

  python benchmarks/bench_controller.py [--repeats 5] [--steps 60]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from deeplab_axial import common  # noqa: E402
from deeplab_axial.protos import trainer_pb2  # noqa: E402
from trainer import controller as controller_lib  # noqa: E402
from trainer import optimizer_builder  # noqa: E402
from trainer import train_step  # noqa: E402

_BATCH = 8


def _controller(steps_per_loop: int, model_dir: str) -> controller_lib.Controller:
    strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, size=(64, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 10, size=(64,)).astype(np.int32)
    dataset = tf.data.Dataset.from_tensor_slices({'x': images, 'y': labels}).repeat().batch(_BATCH).prefetch(2)
    with strategy.scope():
        model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(16, 3, strides=2, activation='relu'),
                                  keras.layers.Conv2D(32, 3, strides=2, activation='relu'),
                                  keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
        solver = trainer_pb2.SolverOptions(optimizer='radam', use_lookahead=True, training_number_of_steps=10000)
        optimizer = optimizer_builder.build_optimizer(solver)
        global_step = tf.Variable(0, dtype=tf.int64, trainable=False)

        def loss_fn(inputs):
            logits = model(inputs['x'] / 127.5 - 1.0, training=True)
            return {common.TOTAL_LOSS: keras.losses.sparse_categorical_crossentropy(inputs['y'], logits,
                                                                                    from_logits=True)}

        step = train_step.make_train_step_fn(loss_fn, model.trainable_variables, optimizer, _BATCH)
    return controller_lib.Controller(strategy, model_dir, global_step, {'model': model, 'optimizer': optimizer},
                                     train_step_fn=step, train_dataset=dataset, steps_per_loop=steps_per_loop,
                                     checkpoint_interval=10 ** 9, summary_interval=10 ** 9, global_batch_size=_BATCH)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--steps', type=int, default=60)
    args = parser.parse_args()
    results = {}
    for steps_per_loop in (1, 10, args.steps):
        with tempfile.TemporaryDirectory() as model_dir:
            controller = _controller(steps_per_loop, model_dir)
            controller.train(steps_per_loop)  # trace and warm up
            rates = []
            for r in range(args.repeats):
                start = time.perf_counter()
                controller.train(steps_per_loop + (r + 1) * args.steps)
                rates.append(args.steps / (time.perf_counter() - start))
            results[steps_per_loop] = statistics.median(rates)
    base = results[1]
    print(f'device: {tf.config.list_logical_devices()[0].device_type}, batch {_BATCH}, {args.steps} steps per '
          f'measurement, median of {args.repeats}')
    for steps_per_loop, rate in results.items():
        print(f'steps_per_loop={steps_per_loop:4d}: {rate:8.1f} steps/s  ({rate / base:.2f}x vs steps_per_loop=1)')


if __name__ == '__main__':
    main()

"""What one pass over the attention logits costs, against the whole model's matmul floor.

    python benchmarks/attention_passes.py [--model axial_deeplab_s] [--size 1025x2049] [--repeats 3]

Traces the model's inference forward for one [1, H, W, 3] input and takes the shape of every attention softmax's
input: the logits the attention cores compute, group by group (`axial_attention._sequence_groups`), padded blocks
and masked pairs included. Then times, in this process, one float32 softmax and one add over random tensors of
exactly those shapes (each group's op reading data that is in the cache, as in the model), and a 2048^3 float32
matmul. The floor is 2 x paper M-Adds / that matmul's FLOP/s (`model_forward.py`).

Any attention core built from TensorFlow ops writes every logit at least once per product that forms or reads it
(three similarity terms, two retrievals), sums the terms and runs the softmax: the printed pass times, times those
counts, bound such an implementation's attention time from below, whatever its layout.
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.model_forward import _matmul_gflops, _size  # noqa: E402
from deeplab_axial.model import registry  # noqa: E402
from deeplab_axial.model.layers.axial_attention import ATTENTION_SCOPE_PREFIX  # noqa: E402
from deeplab_axial.tools.model_stats import count_madds  # noqa: E402


def logit_shapes(model, height: int, width: int) -> list:
    """Static shapes of the inputs of every Softmax inside an attention core of the traced forward."""
    forward = tf.function(lambda x: model(x, training=False))
    graph = forward.get_concrete_function(tf.TensorSpec([1, height, width, 3], tf.float32)).graph
    # The batch is static, so the sequence groups are static ops of this graph (no loop bodies).
    return [tuple(op.inputs[0].shape.as_list()) for op in graph.get_operations()
            if op.type == 'Softmax' and ATTENTION_SCOPE_PREFIX in op.name]


def _median_seconds(fn, tensors, repeats: int) -> float:
    fn(tensors).numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(tensors).numpy()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='axial_deeplab_s')
    parser.add_argument('--size', default='1025x2049', type=_size, help='HxW input size')
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args()
    height, width = args.size
    model = registry.build_model(args.model)
    model.build((1, height, width, 3))
    shapes = logit_shapes(model, height, width)
    if not shapes:
        sys.exit(f'error: {args.model} traced no attention softmax')
    madds = count_madds(model, height, width)['madds']
    rng = np.random.default_rng(0)
    tensors = [tf.constant(rng.normal(size=shape).astype(np.float32)) for shape in shapes]
    elements = sum(int(np.prod(shape)) for shape in shapes)

    # One scalar out of each result keeps every op alive without copying its output back.
    softmax = tf.function(lambda ts: tf.add_n([tf.reshape(tf.nn.softmax(t), [-1])[0] for t in ts]))
    add = tf.function(lambda ts: tf.add_n([tf.reshape(t + t, [-1])[0] for t in ts]))
    softmax_s = _median_seconds(softmax, tensors, args.repeats)
    add_s = _median_seconds(add, tensors, args.repeats)
    gflops = statistics.median(_matmul_gflops(tf))
    floor = 2 * madds / (gflops * 1e9)
    with open('/proc/loadavg') as f:
        load = f.read().split()[0]
    print(f'{args.model} {height}x{width}: {len(shapes)} logit tensors, {elements / 1e9:.3f} G float32 logits '
          f'({elements * 4 / 2 ** 30:.2f} GiB); paper {madds / 1e9:.1f} GMAdds; matmul {gflops:.0f} GFLOP/s; '
          f'floor {floor:.2f} s; load {load}')
    print(f'one softmax over all logits: {softmax_s:.3f} s = {softmax_s / floor:.2f}x the floor')
    print(f'one add (read, write) over all logits: {add_s:.3f} s = {add_s / floor:.2f}x the floor')
    passes = 1 * softmax_s + 7 * add_s
    print(f'softmax + 7 add-like passes (5 products, 2 sums): {passes:.2f} s = {passes / floor:.2f}x the floor, '
          'before any convolution or layout change')


if __name__ == '__main__':
    main()

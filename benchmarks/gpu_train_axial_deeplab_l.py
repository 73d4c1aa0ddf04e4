"""Axial-DeepLab-L training on one GPU at crop 1025x1025 in mixed precision: images/s and peak GPU memory.

    python benchmarks/gpu_train_axial_deeplab_l.py [--policy mixed_float16|mixed_bfloat16|float32] [--batch 1]
        [--steps 40] [--jit_compile]
    # CPU smoke test of the same script (no GPU needed):
    python benchmarks/gpu_train_axial_deeplab_l.py --model axial_deeplab_tiny --crop 65 --steps 2

A short run (a few minutes on a GPU) of trainer/train_step.make_train_step_fn on random data: Panoptic-DeepLab
loss, RAdam + Lookahead, weight decay; under mixed_float16 the optimizer is a dynamic LossScaleOptimizer. The first
step (tracing, and XLA compilation with --jit_compile) is reported apart; images/s is the median over the rest.
Peak memory is tf.config.experimental.get_memory_info('GPU:0')['peak'] after the run (the process' peak RSS when
there is no GPU).
"""

import argparse
import os
import resource
import statistics
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

from benchmarks import train_step_lib  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', default='axial_deeplab_l', help='registry name of a panoptic model')
    parser.add_argument('--crop', type=int, default=1025, help='square crop size (k * 16 + 1)')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--steps', type=int, default=40, help='timed steps after the first')
    parser.add_argument('--policy', default='mixed_float16', choices=('mixed_float16', 'mixed_bfloat16', 'float32'))
    parser.add_argument('--jit_compile', action='store_true', help='XLA-compile the train step')
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error('--steps must be at least 1')
    gpus = tf.config.list_physical_devices('GPU')
    device = '/GPU:0' if gpus else '/CPU:0'
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    print(f'{args.model} crop {args.crop}x{args.crop} batch {args.batch} {args.policy} '
          f'jit_compile={args.jit_compile} on {device} ({gpus[0].name if gpus else "no GPU"})', flush=True)
    with tf.device(device):
        run_step, model = train_step_lib.make_train_step(args.model, args.batch, args.crop, args.jit_compile,
                                                         policy=args.policy)
        if gpus:
            tf.config.experimental.reset_memory_stats('GPU:0')
        first, times = train_step_lib.time_steps(run_step, args.steps)
    median = statistics.median(times)
    print(f'params: {model.count_params() / 1e6:.1f}M')
    print(f'first step (trace/compile): {first:.1f} s')
    print(f'step time median: {median:.3f} s over {len(times)} steps (min {min(times):.3f}, max {max(times):.3f})')
    print(f'images/s: {args.batch / median:.2f}')
    if gpus:
        peak = tf.config.experimental.get_memory_info('GPU:0')['peak']
        print(f'peak GPU memory: {peak / 2 ** 30:.2f} GiB')
    else:
        print(f'peak GPU memory: n/a (no GPU); peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.2f} GiB')


if __name__ == '__main__':
    main()

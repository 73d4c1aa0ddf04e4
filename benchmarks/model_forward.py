"""Whole-model speed against this CPU's matmul floor: Axial-DeepLab forward (inference) and training step.

    python benchmarks/model_forward.py [--models axial_deeplab_s,axial_deeplab_l] [--sizes 513x513,1025x2049]
        [--modes forward,train] [--repeats 3] [--core_dtype bfloat16]

Each (model, size, mode) runs in its own subprocess: build the model at [1, height, width, 3], one call for tracing,
then `--repeats` timed calls, with a 2048^3 float32 matmul timed in the same process before and after them (the
median of those is the ceiling the figures are divided by). `forward` is the model's inference call in a
tf.function (graph mode); `train` is trainer/train_step.make_train_step_fn (Panoptic-DeepLab loss, RAdam +
Lookahead, weight decay) on random data, batch 1.

Printed per case: the paper-comparable and executed multiply-adds (deeplab_axial.tools.model_stats: local
attention counted at m keys per query, or at the keys its blocks compute; strided blocks' attention counted at every
query, as deeplab2 computes it, or at the kept queries the inference forward computes), the median and best time,
and

  forward: floor multiple = time / (2 * paper M-Adds / matmul FLOP/s), i.e. how many times slower than a dense
           matmul doing the paper's arithmetic;
  train:   matmul fraction = (3 * 2 * paper M-Adds / time) / matmul FLOP/s (backward ~ 2 x forward),

and the peak resident memory over the process's size before the model was built (weights, activations, gradients,
optimizer slots). The machine is shared: the load average is printed with every case.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)

MODES = ('forward', 'train')


def _rss_bytes() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def _load() -> float:
    with open('/proc/loadavg') as f:
        return float(f.read().split()[0])


def _matmul_gflops(tf, repeats: int = 5) -> list:
    """GFLOP/s of each of `repeats` 2048^3 float32 matmuls (after a warm-up)."""
    a = tf.random.normal([2048, 2048])
    matmul = tf.function(lambda m: tf.matmul(m, m))
    matmul(a).numpy()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).numpy()
        rates.append(2 * 2048 ** 3 / (time.perf_counter() - start) / 1e9)
    return rates


def run_case(model_name: str, height: int, width: int, mode: str, repeats: int, core_dtype: str) -> dict:
    """Times one case in this process."""
    import numpy as np
    import tensorflow as tf

    from deeplab_axial import common
    from deeplab_axial.model import registry
    from deeplab_axial.tools.model_stats import count_madds

    overrides = {'core_dtype': core_dtype} if core_dtype else {}
    before = _rss_bytes()
    if mode == 'train':
        from benchmarks import train_step_lib
        run, model = train_step_lib.make_train_step(model_name, 1, (height, width), jit_compile=False, **overrides)

        def step():
            float(run()[common.TOTAL_LOSS])
    else:
        model = registry.build_model(model_name, **overrides)
        model.build((1, height, width, 3))
        images = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, height, width, 3)).astype(np.float32))
        forward = tf.function(lambda x: model(x, training=False))

        def step():
            tf.nest.map_structure(lambda t: t.numpy(), forward(images))
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    rates = _matmul_gflops(tf)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    rates += _matmul_gflops(tf)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    madds = count_madds(model, height, width)
    return dict(first=first, times=times, matmul_gflops=statistics.median(rates), peak_mib=peak / 2 ** 20,
                load=_load(), **madds)


def _size(text: str) -> tuple:
    parts = text.lower().split('x')
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f'expected HxW (e.g. 513x513). Received: {text!r}')
    return int(parts[0]), int(parts[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--models', default='axial_deeplab_s,axial_deeplab_l', help='comma-separated model names')
    parser.add_argument('--sizes', default='513x513,1025x2049', help='comma-separated HxW input sizes')
    parser.add_argument('--modes', default='forward,train', help=f'comma-separated subset of {list(MODES)}')
    parser.add_argument('--repeats', type=int, default=3, help='timed calls per case after the first')
    parser.add_argument('--core_dtype', default=None, choices=('bfloat16',),
                        help="the attention cores' product dtype (AxialAttention core_dtype); default float32")
    parser.add_argument('--case', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        name, size, mode = args.case.split(':')
        print('RESULT' + json.dumps(run_case(name, *_size(size), mode, args.repeats, args.core_dtype)))
        return
    models = [m.strip() for m in args.models.split(',') if m.strip()]
    try:
        sizes = [_size(s.strip()) for s in args.sizes.split(',') if s.strip()]
    except argparse.ArgumentTypeError as e:
        parser.error(f'--sizes: {e}')
    modes = [m.strip() for m in args.modes.split(',') if m.strip()]
    if set(modes) - set(MODES):
        parser.error(f'--modes: unknown {sorted(set(modes) - set(MODES))}; choose from {list(MODES)}')
    print(f'core dtype {args.core_dtype or "float32"}, {args.repeats} timed calls per case, {os.cpu_count()} CPUs')
    print(f'{"model":<16}{"size":>10}{"mode":>8}{"paper GMAdds":>13}{"executed":>10}{"s (median)":>11}'
          f'{"s (best)":>9}{"matmul GFLOP/s":>15}{"floor multiple / matmul fraction":>34}{"peak MiB":>9}'
          f'{"load":>6}')
    for name in models:
        for height, width in sizes:
            for mode in modes:
                command = [sys.executable, os.path.abspath(__file__), '--case', f'{name}:{height}x{width}:{mode}',
                           '--repeats', str(args.repeats)] + (['--core_dtype', args.core_dtype]
                                                               if args.core_dtype else [])
                proc = subprocess.run(command, cwd=_REPO, capture_output=True, text=True)
                lines = [line for line in proc.stdout.splitlines() if line.startswith('RESULT')]
                label = f'{name:<16}{f"{height}x{width}":>10}{mode:>8}'
                if proc.returncode != 0 or not lines:
                    reason = (proc.stderr.strip().splitlines() or [f'exit status {proc.returncode}'])[-1]
                    print(f'{label}  failed: {reason[:200]}', flush=True)
                    continue
                r = json.loads(lines[0][len('RESULT'):])
                median, best = statistics.median(r['times']), min(r['times'])
                flops = 2 * r['madds'] * (3 if mode == 'train' else 1)
                rate = r['matmul_gflops'] * 1e9
                if mode == 'forward':  # multiple of the floor: time / (flops / rate)
                    figure = f'{median * rate / flops:.2f}x / best {best * rate / flops:.2f}x'
                else:  # fraction of the matmul rate
                    figure = f'{flops / median / rate:.3f} / best {flops / best / rate:.3f}'
                print(f'{label}{r["madds"] / 1e9:>13.1f}{r["executed_madds"] / 1e9:>10.1f}{median:>11.2f}'
                      f'{best:>9.2f}{r["matmul_gflops"]:>15.0f}{figure:>34}{r["peak_mib"]:>9.0f}{r["load"]:>6.2f}',
                      flush=True)


if __name__ == '__main__':
    main()

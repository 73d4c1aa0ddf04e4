"""Benchmark of the axial-attention layer: forward + backward time, GFLOP/s and peak memory.

    python benchmarks/axial_attention.py [--repeats 5]

Cases (float32, training mode, timed inside tf.function(jit_compile=True) and, for the "no-XLA ratio" column, a
plain tf.function):
  global_56x56:   AxialAttention2D(filters=64) on [1, 56, 56, 128] (the first stage of Axial-ResNet-L at 224).
  global_1025:    AxialAttention (1-D, Dk 64, Dv 128) on [4, 1025, 128], span None.
  local65_1025:   the same with span 65 (blocks of at most 64 queries; `_block_size` takes 25).

Each case runs in its own subprocess. FLOPs = 3 x 2 x multiply-adds of the forward pass as model_stats counts them
(executed count, i.e. including the masked pairs of local blocks; backward ~ 2 x forward), counted on the
inference-mode graph: the small products that give the training-mode batch-norm moments (`attention_moments`) are
overhead of the timed step, not work credited to it.
Peak memory is measured in a second subprocess per case that runs the same step as a plain tf.function (no XLA:
XLA's compiler and its reused buffer pool would hide the step's own memory): the process's peak resident set size
(ru_maxrss) after one step minus its resident size just before it, i.e. the activations, gradients and workspace of
one forward + backward pass (plus graph tracing, a few MiB).
The same process measures a 2048^3 float32 matmul so every GFLOP/s figure has its ceiling next to it.

The layer is memory-bound and the matmul is not: on a shared machine, other tenants' memory traffic slows the layer
(by up to 2x here) and leaves the matmul as it is. So each ratio is printed twice: from the median time and from the
best time of the repeats (the speed of an uncontended step).
"""

import argparse
import json
import resource
import os
import subprocess
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CASES = ('global_56x56', 'global_1025', 'local65_1025')


def _rss_bytes() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')



def _seconds(step, repeats: int) -> tuple:
    """(median, best) of `repeats` timed calls after one warm-up call."""
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], min(times)


def run_case(case: str, repeats: int, measure: str) -> dict:
    """Runs one case in this process; measure 'time' (XLA, median of repeats) or 'memory' (one plain step)."""
    import tensorflow as tf

    from deeplab_axial.model.layers.axial_attention import AxialAttention, AxialAttention2D
    from deeplab_axial.tools.model_stats import op_madds

    if case == 'global_56x56':
        layer = AxialAttention2D(64)
        inputs = tf.random.normal([1, 56, 56, 128])
    else:
        layer = AxialAttention(64, 128, span=None if case == 'global_1025' else 65)
        inputs = tf.random.normal([4, 1025, 128])
    layer.build(inputs.shape)
    seed = tf.random.normal(layer.compute_output_shape(inputs.shape) if case == 'global_56x56'
                            else [4, 1025, 128])

    def forward_backward(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=True) * seed)
        grads = tape.gradient(loss, [x] + layer.trainable_weights)
        return [tf.convert_to_tensor(g) for g in grads]

    def runner(jit_compile: bool):
        step = tf.function(forward_backward, jit_compile=jit_compile)
        return lambda: [g.numpy() for g in step(inputs)]

    if measure == 'memory':
        run = runner(jit_compile=False)
        baseline = _rss_bytes()
        run()
        return dict(peak_mib=(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline) / 2 ** 20)
    forward = tf.function(lambda x: layer(x, training=False))
    madds = sum(op_madds(op) for op in forward.get_concrete_function(inputs).graph.get_operations())
    seconds, best = _seconds(runner(jit_compile=True), repeats)
    # Without XLA, TensorFlow's executor runs independent ops on both cores: on this CPU that is faster.
    graph_seconds, graph_best = _seconds(runner(jit_compile=False), repeats)

    a = tf.random.normal([2048, 2048])
    matmul = tf.function(lambda m: tf.matmul(m, m))
    matmul_seconds, _ = _seconds(lambda: matmul(a).numpy(), repeats)
    flops = 3 * 2 * madds
    return dict(case=case, seconds=seconds, gflops=flops / seconds / 1e9, best_gflops=flops / best / 1e9,
                graph_seconds=graph_seconds, graph_gflops=flops / graph_seconds / 1e9,
                graph_best_gflops=flops / graph_best / 1e9, matmul_gflops=2 * 2048 ** 3 / matmul_seconds / 1e9,
                forward_gmadds=madds / 1e9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--repeats', type=int, default=15, help='timed repetitions per case')
    parser.add_argument('--case', choices=CASES, help='run one case in this process (used by the driver)')
    parser.add_argument('--measure', choices=('time', 'memory'), default='time', help='with --case')
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.repeats, args.measure)))
        return
    results = {}
    for case in CASES:
        results[case] = {}
        for measure in ('time', 'memory'):
            out = subprocess.run([sys.executable, __file__, '--case', case, '--repeats', str(args.repeats),
                                  '--measure', measure], capture_output=True, text=True, check=True)
            results[case].update(json.loads(out.stdout.strip().splitlines()[-1]))
    print('fwd+bwd time and GFLOP/s as a fraction of the matmul GFLOP/s, with XLA and without (median / best)')
    print(f'{"case":<14} {"XLA ms":>7} {"no-XLA ms":>9} {"matmul GFLOP/s":>14} {"XLA ratio":>11} '
          f'{"no-XLA ratio":>12} {"peak MiB":>9}')
    for case, r in results.items():
        mm = r['matmul_gflops']
        print(f'{case:<14} {r["seconds"] * 1e3:>7.1f} {r["graph_seconds"] * 1e3:>9.1f} {mm:>14.1f} '
              f'{r["gflops"] / mm:>5.3f}/{r["best_gflops"] / mm:<5.3f} '
              f'{r["graph_gflops"] / mm:>6.3f}/{r["graph_best_gflops"] / mm:<5.3f} {r["peak_mib"]:>9.0f}')
    local, dense = results['local65_1025'], results['global_1025']
    print(f'local span 65 / global at length 1025: time {local["seconds"] / dense["seconds"]:.2f}, '
          f'peak memory {local["peak_mib"] / dense["peak_mib"]:.2f}')


if __name__ == '__main__':
    main()

"""Training-step throughput on this CPU: Axial-DeepLab-S at 513x513 and Axial-ResNet-S at 224x224, with and
without XLA (jit_compile), and the peak memory of each.

    python benchmarks/train_step.py [--steps 3] [--batch 1] [--cases deeplab_s_513,resnet_s_224] [--jit both]

Each (case, jit) runs in its own subprocess: build the model, one step for tracing/compilation (reported apart),
then `--steps` timed steps of trainer/train_step.make_train_step_fn (Panoptic-DeepLab loss or label-smoothed
cross-entropy, RAdam + Lookahead, weight decay) on random data. Prints the median images/s, the compile step, and
the peak RSS delta (ru_maxrss at the end minus the resident size before the model was built: weights, optimizer
slots, activations, gradients, XLA's compiler). The last column is the ratio of jit to no-jit images/s per case.
The default run takes about 14 minutes on the (loaded) 2-core development machine, mostly the first step of
Axial-DeepLab-S at 513x513 (tracing, XLA compilation); `--cases resnet_s_224` takes about 3.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)

CASES = {'deeplab_s_513': ('axial_deeplab_s', 513), 'resnet_s_224': ('axial_resnet_s', 224)}


def _rss_bytes() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def _child(case: str, jit: bool, steps: int, batch: int) -> None:
    import tensorflow as tf  # noqa: F401  (imported before the baseline RSS is taken)
    from benchmarks import train_step_lib
    model_name, crop = CASES[case]
    before = _rss_bytes()
    run_step, model = train_step_lib.make_train_step(model_name, batch, crop, jit_compile=jit)
    first, times = train_step_lib.time_steps(run_step, steps)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print('RESULT' + json.dumps({'first': first, 'times': times, 'params': model.count_params(),
                                 'peak_delta': peak - before}))


def _run_case(case: str, jit: bool, steps: int, batch: int) -> dict:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), '--child', case, '--child_jit', str(int(jit)),
                           '--steps', str(steps), '--batch', str(batch)], cwd=_REPO, capture_output=True,
                          text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith('RESULT')]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f'{case} jit={jit} failed:\n{proc.stderr[-3000:]}')
    return json.loads(lines[0][len('RESULT'):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--steps', type=int, default=3, help='timed steps after the compile step')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--cases', default=','.join(CASES), help=f'comma-separated subset of {list(CASES)}')
    parser.add_argument('--jit', choices=('both', 'on', 'off'), default='both')
    parser.add_argument('--child', help=argparse.SUPPRESS)
    parser.add_argument('--child_jit', type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, bool(args.child_jit), args.steps, args.batch)
        return
    cases = [c.strip() for c in args.cases.split(',') if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f'--cases: unknown {unknown}; choose from {list(CASES)}')
    jits = {'both': (False, True), 'on': (True,), 'off': (False,)}[args.jit]
    print(f'batch {args.batch}, {args.steps} timed steps per run, {os.cpu_count()} CPUs')
    print(f'{"case":<16}{"jit":<6}{"params":>10}{"compile s":>11}{"step s (median)":>17}{"images/s":>10}'
          f'{"peak RSS delta":>16}{"jit/no-jit":>12}')
    for case in cases:
        rates = {}
        for jit in jits:
            r = _run_case(case, jit, args.steps, args.batch)
            median = statistics.median(r['times'])
            rates[jit] = args.batch / median
            ratio = f'{rates[True] / rates[False]:.2f}x' if jit and False in rates else ''
            print(f'{case:<16}{"on" if jit else "off":<6}{r["params"] / 1e6:>9.1f}M{r["first"]:>11.1f}'
                  f'{median:>17.2f}{rates[jit]:>10.3f}{r["peak_delta"] / 2 ** 30:>13.2f} GiB{ratio:>12}',
                  flush=True)


if __name__ == '__main__':
    main()

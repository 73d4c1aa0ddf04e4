"""PQ evaluation speed: our CLI against panopticapi-lite and hotcoco on the same COCO panoptic files.

    python benchmarks/evaluation.py [--num_images 200] [--height 512] [--width 1024] [--repeats 3] [--cache_dir D]
                                    [--panopticapi_venv DIR]

Generates a synthetic set (about 30 segments per image, void, crowd, score ties; COCO's 133 categories), or reuses
it from --cache_dir, checks that the tools agree on PQ/SQ/RQ, and prints median wall and CPU times (this process and
its worker processes; CPU time separates a loaded machine from the cost) and ratios. The tools take turns in each
repeat, so a change of load hits all of them. Also times the full pq,ap,miou run of our CLI once.

panopticapi-lite runs twice. As pip installs it, in its own virtual environment (--panopticapi_venv, created with
`pip install panopticapi-lite` on first use): it declares numpy<2, so that is numpy 1.26, and this is the
comparison the speed target is stated against. And in this process, forced onto this environment's numpy 2 (the
test extra installs it with --no-deps): the same code runs about 3x faster there, because numpy 2 sorts with
AVX-512 and `np.unique` is panopticapi's main cost.
"""

import argparse
import contextlib
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import venv

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deeplab_axial.data import dataset  # noqa: E402
from evaluation import evaluate as cli  # noqa: E402
from evaluation.synthetic_panoptic import random_panoptic_pair, write_panoptic_dataset  # noqa: E402


def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished child processes."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _measure(fn, times):
    """Runs fn once, appends (wall s, CPU s) to `times`, returns its result."""
    start, cpu = time.perf_counter(), _cpu_seconds()
    result = fn()
    times.append((time.perf_counter() - start, _cpu_seconds() - cpu))
    return result


def _medians(times):
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


PANOPTICAPI_REQUIREMENT = 'panopticapi-lite==0.2.0'

# Run by the panopticapi-lite environment's interpreter: times pq_compute in there and prints one JSON line.
_PANOPTICAPI_RUN = textwrap.dedent('''
    import contextlib, io, json, resource, sys, time
    import numpy
    from panopticapi.evaluation import pq_compute
    def cpu():
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    start, start_cpu = time.perf_counter(), cpu()
    with contextlib.redirect_stdout(io.StringIO()):
        result = pq_compute(*sys.argv[1:5])
    print(json.dumps({'wall': time.perf_counter() - start, 'cpu': cpu() - start_cpu, 'numpy': numpy.__version__,
                      'result': {k: {m: float(v) for m, v in result[k].items() if m != 'n'}
                                 for k in ('All', 'Things', 'Stuff')}}))
''')


def _panopticapi_python(venv_dir):
    """The interpreter of a virtual environment holding panopticapi-lite with its declared dependencies."""
    python = os.path.join(venv_dir, 'bin', 'python')
    check = [python, '-c', 'import panopticapi.evaluation']
    if os.path.isfile(python) and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f'creating {venv_dir} with {PANOPTICAPI_REQUIREMENT} and its declared dependencies ...')
    venv.create(venv_dir, with_pip=True, clear=True)
    subprocess.run([python, '-m', 'pip', 'install', '--quiet', PANOPTICAPI_REQUIREMENT], check=True)
    subprocess.run(check, check=True)
    return python


def _dataset(root, args):
    """Writes the synthetic set under `root` unless a complete one is already there; returns its paths."""
    paths = {'gt_json': os.path.join(root, 'gt.json'), 'gt_folder': os.path.join(root, 'gt'),
             'pred_json': os.path.join(root, 'pred.json'), 'pred_folder': os.path.join(root, 'pred')}
    if os.path.isfile(paths['gt_json']) and os.path.isfile(paths['pred_json']):
        print(f'reusing the set in {root}')
        return paths
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    descriptor = dataset.get('coco_panoptic')
    pairs = (random_panoptic_pair(rng, descriptor, args.height, args.width, args.num_segments)
             for _ in range(args.num_images))
    paths = write_panoptic_dataset(root, descriptor, pairs)  # the JSONs come last: a complete set has them
    print(f'generated {args.num_images} images of {args.height}x{args.width} in {time.perf_counter() - start:.1f} s')
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--num_images', type=int, default=200)
    parser.add_argument('--height', type=int, default=512)
    parser.add_argument('--width', type=int, default=1024)
    parser.add_argument('--num_segments', type=int, default=30)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--num_workers', type=int, default=0, help='our CLI worker processes (0 = one per core)')
    parser.add_argument('--cache_dir', default=None,
                        help='keep the generated set here and reuse it on later runs (default: a temporary folder)')
    parser.add_argument('--panopticapi_venv',
                        default=os.path.join(os.path.expanduser('~'), '.cache', 'deeplab_axial', 'panopticapi-lite-venv'),
                        help='virtual environment with panopticapi-lite as pip installs it (created if missing); '
                             'empty: skip that run')
    args = parser.parse_args()
    venv_python = _panopticapi_python(args.panopticapi_venv) if args.panopticapi_venv else None

    from hotcoco.panoptic import pq_compute as hotcoco_pq
    from panopticapi.evaluation import pq_compute as panopticapi_pq

    with tempfile.TemporaryDirectory() as tmp:
        root = tmp
        if args.cache_dir:
            root = os.path.join(args.cache_dir, f'{args.num_images}x{args.height}x{args.width}x{args.num_segments}')
        paths = _dataset(root, args)
        print(f'{os.cpu_count()} CPU cores; {args.repeats} repeats')
        argv = ['--gt_json', paths['gt_json'], '--gt_folder', paths['gt_folder'], '--pred_json', paths['pred_json'],
                '--pred_folder', paths['pred_folder'], '--num_workers', str(args.num_workers)]
        out = os.path.join(tmp, 'ours.json')

        def ours(metrics='pq'):
            with contextlib.redirect_stdout(io.StringIO()):
                code = cli.main(argv + ['--metrics', metrics, '--output_json', out])
            if code:
                raise RuntimeError('our CLI failed')
            with open(out) as f:
                return json.load(f)

        def quiet(fn):
            def run():
                with contextlib.redirect_stdout(io.StringIO()):
                    return fn(paths['gt_json'], paths['pred_json'], paths['gt_folder'], paths['pred_folder'])
            return run

        def panopticapi_as_installed():
            out = subprocess.run([venv_python, '-c', _PANOPTICAPI_RUN, paths['gt_json'], paths['pred_json'],
                                  paths['gt_folder'], paths['pred_folder']], capture_output=True, text=True, check=True)
            run = json.loads(out.stdout.strip().splitlines()[-1])
            times['panopticapi_venv'].append((run['wall'], run['cpu']))
            return run

        times = {'ours': [], 'hotcoco': [], 'panopticapi': [], 'panopticapi_venv': [], 'full': []}
        r_venv = None
        for _ in range(args.repeats):
            r_ours = _measure(ours, times['ours'])
            r_hot = _measure(quiet(hotcoco_pq), times['hotcoco'])
            r_api = _measure(quiet(panopticapi_pq), times['panopticapi'])
            if venv_python:
                r_venv = panopticapi_as_installed()
        _measure(lambda: ours('pq,ap,miou'), times['full'])
        medians = {k: _medians(v) for k, v in times.items() if v}
        t_ours, c_ours = medians['ours']

        others = [r_api, r_hot] + ([r_venv['result']] if r_venv else [])
        worst = max(abs(r_ours['pq'][split][key] - other[split][key])
                    for other in others for split in ('All', 'Things', 'Stuff') for key in ('pq', 'sq', 'rq'))
        print(f'PQ (All) ours {r_ours["pq"]["All"]["pq"]:.6f}  panopticapi {r_api["All"]["pq"]:.6f}  '
              f'hotcoco {r_hot["All"]["pq"]:.6f}  largest PQ/SQ/RQ difference {worst:.2e}')
        if worst > 1e-9:
            raise SystemExit('the tools disagree')
        rows = [('ours (CLI, pq)', 'ours'), ('hotcoco pq_compute', 'hotcoco')]
        if r_venv:
            rows.append((f'panopticapi-lite, pip (numpy {r_venv["numpy"]})', 'panopticapi_venv'))
        rows += [(f'panopticapi-lite, numpy {np.__version__}', 'panopticapi'),
                 ('ours (CLI, pq,ap,miou; 1 run)', 'full')]
        print(f'{"tool":38s} {"wall s":>8s} {"vs ours":>8s} {"CPU s":>8s} {"vs ours":>8s}')
        for name, key in rows:
            t, c = medians[key]
            print(f'{name:38s} {t:8.3f} {t / t_ours:8.2f} {c:8.3f} {c / c_ours:8.2f}')
        t_hot, c_hot = medians['hotcoco']
        if r_venv:
            t_venv, c_venv = medians['panopticapi_venv']
            print(f'wall: ours is {t_venv / t_ours:.1f}x faster than panopticapi-lite as pip installs it (target >= '
                  f'20x)')
        t_api, c_api = medians['panopticapi']
        print(f'wall: ours is {t_api / t_ours:.1f}x faster than panopticapi-lite forced onto numpy {np.__version__}')
        print(f'wall: ours takes {t_ours / t_hot:.2f}x hotcoco\'s time (target <= 2x)')
        print(f'CPU:  ours uses {c_api / c_ours:.1f}x less than panopticapi-lite on numpy {np.__version__} and '
              f'{c_ours / c_hot:.2f}x hotcoco\'s')


if __name__ == '__main__':
    main()

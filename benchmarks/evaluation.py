"""PQ evaluation speed: our CLI against panopticapi-lite and hotcoco on the same COCO panoptic files.

    python benchmarks/evaluation.py [--num_images 200] [--height 512] [--width 1024] [--repeats 3] [--cache_dir D]

Generates a synthetic set (about 30 segments per image, void, crowd, score ties; COCO's 133 categories), or reuses
it from --cache_dir, checks that the three tools agree on PQ/SQ/RQ, and prints median wall and CPU times (this
process and its worker processes; CPU time separates a loaded machine from the cost) and ratios. The tools take
turns in each repeat, so a change of load hits all of them. Also times the full pq,ap,miou run of our CLI once.
"""

import argparse
import contextlib
import io
import json
import os
import resource
import statistics
import sys
import tempfile
import time

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
    args = parser.parse_args()

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

        times = {'ours': [], 'hotcoco': [], 'panopticapi': [], 'full': []}
        for _ in range(args.repeats):
            r_ours = _measure(ours, times['ours'])
            r_hot = _measure(quiet(hotcoco_pq), times['hotcoco'])
            r_api = _measure(quiet(panopticapi_pq), times['panopticapi'])
        _measure(lambda: ours('pq,ap,miou'), times['full'])
        (t_ours, c_ours), (t_hot, c_hot), (t_api, c_api), (t_full, c_full) = (
            _medians(times[k]) for k in ('ours', 'hotcoco', 'panopticapi', 'full'))

        worst = 0.0
        for split in ('All', 'Things', 'Stuff'):
            for key in ('pq', 'sq', 'rq'):
                worst = max(worst, abs(r_ours['pq'][split][key] - r_api[split][key]),
                            abs(r_ours['pq'][split][key] - r_hot[split][key]))
        print(f'PQ (All) ours {r_ours["pq"]["All"]["pq"]:.6f}  panopticapi {r_api["All"]["pq"]:.6f}  '
              f'hotcoco {r_hot["All"]["pq"]:.6f}  largest PQ/SQ/RQ difference {worst:.2e}')
        if worst > 1e-9:
            raise SystemExit('the tools disagree')
        print(f'{"tool":34s} {"wall s":>8s} {"vs ours":>8s} {"CPU s":>8s} {"vs ours":>8s}')
        for name, t, c in (('ours (CLI, pq)', t_ours, c_ours), ('hotcoco pq_compute', t_hot, c_hot),
                           ('panopticapi-lite pq_compute', t_api, c_api),
                           ('ours (CLI, pq,ap,miou; 1 run)', t_full, c_full)):
            print(f'{name:34s} {t:8.3f} {t / t_ours:8.2f} {c:8.3f} {c / c_ours:8.2f}')
        print(f'wall: ours is {t_api / t_ours:.1f}x faster than panopticapi-lite (target >= 20x) and takes '
              f'{t_ours / t_hot:.2f}x hotcoco\'s time (target <= 2x)')
        print(f'CPU:  ours uses {c_api / c_ours:.1f}x less than panopticapi-lite and {c_ours / c_hot:.2f}x hotcoco\'s')


if __name__ == '__main__':
    main()

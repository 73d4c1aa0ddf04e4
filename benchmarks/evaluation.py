"""PQ evaluation speed: our CLI against panopticapi-lite and hotcoco on the same COCO panoptic files.

    python benchmarks/evaluation.py [--num_images 200] [--height 512] [--width 1024] [--repeats 3]

Generates a synthetic set (about 30 segments per image, void, crowd, score ties; COCO's 133 categories), checks
that the three tools agree on PQ/SQ/RQ, and prints median wall times and ratios. Also times the full
pq,ap,miou run of our CLI once.
"""

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deeplab_axial.data import dataset  # noqa: E402
from evaluation import evaluate as cli  # noqa: E402
from evaluation.synthetic_panoptic import random_panoptic_pair, write_panoptic_dataset  # noqa: E402


def _median_time(fn, repeats):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--num_images', type=int, default=200)
    parser.add_argument('--height', type=int, default=512)
    parser.add_argument('--width', type=int, default=1024)
    parser.add_argument('--num_segments', type=int, default=30)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--num_workers', type=int, default=0, help='our CLI threads (0 = one per core)')
    args = parser.parse_args()

    from hotcoco.panoptic import pq_compute as hotcoco_pq
    from panopticapi.evaluation import pq_compute as panopticapi_pq

    descriptor = dataset.get('coco_panoptic')
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        pairs = (random_panoptic_pair(rng, descriptor, args.height, args.width, args.num_segments)
                 for _ in range(args.num_images))
        paths = write_panoptic_dataset(root, descriptor, pairs)
        print(f'generated {args.num_images} images of {args.height}x{args.width} in '
              f'{time.perf_counter() - start:.1f} s; {os.cpu_count()} CPU cores')
        argv = ['--gt_json', paths['gt_json'], '--gt_folder', paths['gt_folder'], '--pred_json', paths['pred_json'],
                '--pred_folder', paths['pred_folder'], '--num_workers', str(args.num_workers)]
        out = os.path.join(root, 'ours.json')

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

        t_ours, r_ours = _median_time(ours, args.repeats)
        t_hot, r_hot = _median_time(quiet(hotcoco_pq), args.repeats)
        t_api, r_api = _median_time(quiet(panopticapi_pq), max(1, args.repeats - 2))
        t_full, _ = _median_time(lambda: ours('pq,ap,miou'), 1)

        worst = 0.0
        for split in ('All', 'Things', 'Stuff'):
            for key in ('pq', 'sq', 'rq'):
                worst = max(worst, abs(r_ours['pq'][split][key] - r_api[split][key]),
                            abs(r_ours['pq'][split][key] - r_hot[split][key]))
        print(f'PQ (All) ours {r_ours["pq"]["All"]["pq"]:.6f}  panopticapi {r_api["All"]["pq"]:.6f}  '
              f'hotcoco {r_hot["All"]["pq"]:.6f}  largest PQ/SQ/RQ difference {worst:.2e}')
        if worst > 1e-9:
            raise SystemExit('the tools disagree')
        print(f'{"tool":34s} {"median s":>9s} {"vs ours":>8s}')
        print(f'{"ours (CLI, pq)":34s} {t_ours:9.3f} {1.0:8.2f}')
        print(f'{"hotcoco pq_compute":34s} {t_hot:9.3f} {t_hot / t_ours:8.2f}')
        print(f'{"panopticapi-lite pq_compute":34s} {t_api:9.3f} {t_api / t_ours:8.2f}')
        print(f'{"ours (CLI, pq,ap,miou; 1 run)":34s} {t_full:9.3f} {t_full / t_ours:8.2f}')
        print(f'ours is {t_api / t_ours:.1f}x faster than panopticapi-lite (target >= 20x) and takes '
              f'{t_ours / t_hot:.2f}x hotcoco\'s time (target <= 2x)')


if __name__ == '__main__':
    main()

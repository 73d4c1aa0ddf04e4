"""Evaluates COCO-panoptic-format predictions: PQ, AP and mIoU with the official tools' numbers.

    python -m evaluation.evaluate --gt_json G --gt_folder GF --pred_json P --pred_folder PF \
        --metrics pq,ap,miou [--output_json OUT] [--num_workers N]

Works for COCO and for Cityscapes panoptic GT made by cityscapesscripts (same format). Images are spread over
forked worker processes, not threads: PNG decoding is 40% (with zlib-ng) to 70% of the time and pyspng holds the
GIL while it decodes. Each image costs two decodes plus one table gather + bincount pass (segment_overlap). Results
come back in image order, so the sums and the numbers do not depend on the number of workers. Any bad input stops
the run with an error naming the image; OUT is written only when everything succeeded.
"""

import argparse
import ctypes
import multiprocessing
import os
import sys
import time
from typing import Dict, Iterator, List, Optional, Sequence, TextIO

from evaluation.coco_panoptic_format import load_panoptic_json, read_panoptic_png, write_json_atomic
from evaluation.panoptic_evaluator import METRICS, PanopticEvaluator
from evaluation.segment_overlap import SegmentOverlap, compile_for_png_ids, compute_overlap


def _pairs(gt: dict, pred: dict) -> List[tuple]:
    pairs = []
    for image_id, gt_ann in gt['annotations_by_image'].items():
        if image_id not in pred['annotations_by_image']:
            raise ValueError(f'Image {image_id!r}: no prediction in the prediction JSON')
        pairs.append((image_id, gt_ann, pred['annotations_by_image'][image_id]))
    return pairs


def _overlap(pair: tuple, gt_folder: str, pred_folder: str, categories: Dict[int, dict]) -> SegmentOverlap:
    image_id, gt_ann, pred_ann = pair
    name = f'{image_id!r} ({gt_ann["file_name"]})'
    gt_ids = read_panoptic_png(os.path.join(gt_folder, gt_ann['file_name']), f'{name} ground truth')
    pred_ids = read_panoptic_png(os.path.join(pred_folder, pred_ann['file_name']), f'{name} prediction')
    return compute_overlap(name, gt_ids, gt_ann['segments_info'], pred_ids, pred_ann['segments_info'], categories)


# A worker's (pairs, gt_folder, pred_folder, categories), inherited through fork (not pickled).
_JOB: Optional[tuple] = None


def _init_worker(job: tuple) -> None:
    global _JOB
    _JOB = job
    _keep_freed_memory()


def _overlap_of(index: int) -> SegmentOverlap:
    pairs, gt_folder, pred_folder, categories = _JOB
    return _overlap(pairs[index], gt_folder, pred_folder, categories)


def _keep_freed_memory() -> None:
    """Worker set-up: glibc would hand each image's multi-megabyte arrays back to the OS and fault them in again for
    the next image (a third of the time); a worker keeps them instead. Only slower where mallopt is missing."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: arrays below 32 MiB come from the heap ...
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD: ... which keeps up to 256 MiB of freed memory.
    except (OSError, AttributeError):
        pass


def _overlaps(pairs: List[tuple], gt_folder: str, pred_folder: str, categories: Dict[int, dict],
              workers: int) -> Iterator[SegmentOverlap]:
    """Yields each pair's SegmentOverlap in order, from `workers` forked processes (in this process without fork)."""
    if len(pairs) <= 1 or 'fork' not in multiprocessing.get_all_start_methods():
        yield from (_overlap(pair, gt_folder, pred_folder, categories) for pair in pairs)
        return
    job = (pairs, gt_folder, pred_folder, categories)
    compile_for_png_ids()
    with multiprocessing.get_context('fork').Pool(min(workers, len(pairs)), _init_worker, (job,)) as pool:
        # A result is a few small arrays and this process only adds them up, so the queue ahead stays short.
        yield from pool.imap(_overlap_of, range(len(pairs)), chunksize=4)


class _Progress:
    """A one-line progress bar on a stream, redrawn at most ten times a second."""

    def __init__(self, total: int, stream: TextIO):
        self.total, self.stream, self.done, self.start, self.last = total, stream, 0, time.time(), 0.0

    def step(self) -> None:
        self.done += 1
        now = time.time()
        if now - self.last > 0.1 or self.done == self.total:
            self.last = now
            width = 30
            filled = int(width * self.done / max(self.total, 1))
            self.stream.write(f'\r[{"#" * filled}{"." * (width - filled)}] {self.done}/{self.total} images '
                              f'{now - self.start:.1f}s')
            if self.done == self.total:
                self.stream.write('\n')
            self.stream.flush()


def evaluate(gt_json: str, gt_folder: str, pred_json: str, pred_folder: str, metrics: Sequence[str] = METRICS,
             num_workers: int = 0, progress: Optional[TextIO] = None) -> Dict[str, dict]:
    """Evaluates prediction files against GT files and returns the metrics dict (see PanopticEvaluator.result).

    Args:
      num_workers: worker processes; 0 = one per CPU core.
      progress: stream for a progress bar (None = no bar).
    """
    for folder, role in ((gt_folder, 'ground truth'), (pred_folder, 'prediction')):
        if not os.path.isdir(folder):
            raise ValueError(f'The {role} folder {folder} does not exist')
    gt = load_panoptic_json(gt_json, 'ground truth')
    pred = load_panoptic_json(pred_json, 'prediction')
    if 'categories' not in gt:
        raise ValueError(f'The ground truth JSON {gt_json} has no "categories" list')
    categories = {c['id']: c for c in gt['categories']}
    pairs = _pairs(gt, pred)
    evaluator = PanopticEvaluator(categories, metrics)
    bar = _Progress(len(pairs), progress) if progress is not None else None
    workers = num_workers or os.cpu_count() or 1
    for overlap in _overlaps(pairs, gt_folder, pred_folder, categories, workers):
        evaluator.add_overlap(overlap)
        if bar is not None:
            bar.step()
    return evaluator.result()


def format_table(results: Dict[str, dict]) -> str:
    """A readable summary (percentages)."""
    lines = []
    if 'pq' in results:
        lines += [f'{"":10s}|{"PQ":>7s}{"SQ":>7s}{"RQ":>7s}{"N":>6s}', '-' * 37]
        for split in ('All', 'Things', 'Stuff'):
            r = results['pq'][split]
            lines.append(f'{split:10s}|{100 * r["pq"]:7.2f}{100 * r["sq"]:7.2f}{100 * r["rq"]:7.2f}{r["n"]:6d}')
    if 'ap' in results:
        ap = results['ap']
        # pycocotools reports -1 for an area range without GT.
        lines.append('COCO mask AP: ' + '  '.join(f'{k} {100 * ap[k]:.2f}' if ap[k] >= 0 else f'{k} n/a'
                                                  for k in ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl')))
        lines.append(f'Cityscapes instance AP: AP {100 * ap["cityscapes_AP"]:.2f}  '
                     f'AP50 {100 * ap["cityscapes_AP50"]:.2f}')
    if 'miou' in results:
        lines.append(f'mIoU: {100 * results["miou"]["mIoU"]:.2f}')
    return '\n'.join(lines)


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='python -m evaluation.evaluate', description=__doc__.split('\n')[0])
    parser.add_argument('--gt_json', required=True, help='COCO panoptic ground-truth JSON')
    parser.add_argument('--gt_folder', required=True, help='folder of ground-truth PNGs')
    parser.add_argument('--pred_json', required=True, help='COCO panoptic prediction JSON (segments may carry score)')
    parser.add_argument('--pred_folder', required=True, help='folder of prediction PNGs')
    parser.add_argument('--metrics', default='pq', help=f'comma-separated subset of {",".join(METRICS)}')
    parser.add_argument('--output_json', default=None, help='where to write the results as JSON')
    parser.add_argument('--num_workers', type=int, default=0, help='worker processes (0 = one per CPU core)')
    args = parser.parse_args(argv)
    args.metrics = [m.strip() for m in args.metrics.split(',') if m.strip()]
    bad = sorted(set(args.metrics) - set(METRICS))
    if bad or not args.metrics:
        parser.error(f'--metrics: unknown {bad}; expected a comma-separated subset of {",".join(METRICS)}')
    if args.num_workers < 0:
        parser.error(f'--num_workers must be >= 0; received {args.num_workers}')
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse_args(argv)
    try:
        results = evaluate(args.gt_json, args.gt_folder, args.pred_json, args.pred_folder, args.metrics,
                           args.num_workers, progress=sys.stderr)
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(format_table(results))
    if args.output_json:
        write_json_atomic(args.output_json, results)
    return 0


if __name__ == '__main__':
    sys.exit(main())

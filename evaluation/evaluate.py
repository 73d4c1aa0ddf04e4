"""Evaluates COCO-panoptic-format predictions: PQ, AP and mIoU with the official tools' numbers.

    python -m evaluation.evaluate --gt_json G --gt_folder GF --pred_json P --pred_folder PF \
        --metrics pq,ap,miou [--output_json OUT] [--num_workers N]

Works for COCO and for Cityscapes panoptic GT made by cityscapesscripts (same format). Images are spread over
forked worker processes, not threads: PNG decoding is 40% (with zlib-ng) to 70% of the time and pyspng holds the
GIL while it decodes. Each image costs two decodes plus one table gather + bincount pass (segment_overlap). Results
come back in image order, so the sums and the numbers do not depend on the number of workers. Any bad input stops
the run with an error naming the image, and a worker that dies (e.g. killed for memory) stops it at once with an
error naming the worker and the images it held; OUT is written only when everything succeeded.
"""

import argparse
import ctypes
import multiprocessing
from multiprocessing import connection
import os
import pickle
import signal
import sys
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, TextIO

from deeplab_axial import atomic_files
from deeplab_axial import io_errors
from deeplab_axial.data.coco_panoptic_format import load_panoptic_json
from deeplab_axial.data.panoptic_png import read_panoptic_png
from evaluation import metrics as metric_table
from evaluation.panoptic_evaluator import PanopticEvaluator
from evaluation.segment_overlap import SegmentOverlap, compile_for_png_ids, compute_overlap


def _pairs(gt: dict, pred: dict) -> List[tuple]:
    pairs = []
    for image_id, gt_ann in gt['annotations_by_image'].items():
        if image_id not in pred['annotations_by_image']:
            raise ValueError(f'Image {image_id!r}: no prediction in the prediction JSON')
        pairs.append((image_id, gt_ann, pred['annotations_by_image'][image_id]))
    return pairs


def _image_name(pair: tuple) -> str:
    """How errors name an image: its id and ground-truth file."""
    return f'{pair[0]!r} ({pair[1]["file_name"]})'


def _overlap(pair: tuple, gt_folder: str, pred_folder: str, categories: Dict[int, dict]) -> SegmentOverlap:
    _, gt_ann, pred_ann = pair
    name = _image_name(pair)
    gt_ids = read_panoptic_png(os.path.join(gt_folder, gt_ann['file_name']), f'{name} ground truth')
    pred_ids = read_panoptic_png(os.path.join(pred_folder, pred_ann['file_name']), f'{name} prediction')
    return compute_overlap(name, gt_ids, gt_ann['segments_info'], pred_ids, pred_ann['segments_info'], categories)


class WorkerDiedError(RuntimeError):
    """A worker process ended without returning the images it held (e.g. killed by the system for memory)."""


# A worker's (pairs, gt_folder, pred_folder, categories), inherited through fork (not pickled).
_JOB: Optional[tuple] = None
# Images per task: a few, so that one message carries several results, and a dead worker held few images.
_CHUNK = 4


def _worker_loop(conn: connection.Connection, job: tuple) -> None:
    """A worker: receives lists of pair indices, sends back ('ok', [SegmentOverlap]) or ('error', exception)."""
    global _JOB
    _JOB = job
    _keep_freed_memory()
    while True:
        try:
            indices = conn.recv()
        except EOFError:
            return
        if indices is None:
            return
        try:
            reply = ('ok', [_overlap_of(i) for i in indices])
        except Exception as e:  # noqa: BLE001 - handed to the main process, which raises it there.
            reply = ('error', e)
        try:
            conn.send(reply)
        except (pickle.PicklingError, TypeError, AttributeError):  # an exception that does not pickle
            conn.send(('error', RuntimeError(f'{type(reply[1]).__name__}: {reply[1]}')))


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


class _Workers:
    """Forked worker processes, each fed its own tasks through a pipe, so that the main process knows which images
    every worker holds: a worker that dies (unlike with multiprocessing.Pool, which waits forever for its lost task)
    ends the run at once with an error naming it and them."""

    def __init__(self, count: int, job: tuple):
        context = multiprocessing.get_context('fork')
        self._conns, self._processes = [], []
        try:
            for _ in range(count):
                parent, child = context.Pipe()
                process = context.Process(target=_worker_loop, args=(child, job), daemon=True)
                process.start()
                child.close()  # only the worker holds its end: its death reads as end-of-file here
                self._conns.append(parent)
                self._processes.append(process)
        except BaseException:
            self.close(wait=False)
            raise

    def imap(self, tasks: Sequence[Sequence[int]], describe: Callable[[int], str]) -> Iterator[SegmentOverlap]:
        """Yields the results of `tasks` (lists of pair indices) in order; `describe(index)` names an image."""
        held: Dict[int, int] = {}  # worker -> task it works on
        done: Dict[int, list] = {}  # task -> results not yet yielded
        next_task = next_yield = 0
        ahead = 4 * len(self._processes)  # tasks in flight or waiting to be yielded, bounding the memory used
        while next_yield < len(tasks):
            for worker in range(len(self._processes)):
                if worker not in held and next_task < len(tasks) and next_task - next_yield < ahead:
                    self._send(worker, list(tasks[next_task]), describe)
                    held[worker] = next_task
                    next_task += 1
            while next_yield in done:
                yield from done.pop(next_yield)
                next_yield += 1
            if not held:
                continue  # everything asked for is done: yield it, then send more
            busy = {self._conns[w]: w for w in held}
            for conn in connection.wait(list(busy) + [self._processes[w].sentinel for w in held]):
                worker = busy.get(conn)
                if worker is None:
                    continue  # a sentinel: the worker's pipe reads end-of-file too, handled there
                try:
                    status, payload = conn.recv()
                except EOFError:
                    raise self._died(worker, tasks[held[worker]], describe) from None
                if status == 'error':
                    raise payload
                done[held.pop(worker)] = payload

    def _send(self, worker: int, indices: list, describe: Callable[[int], str]) -> None:
        try:
            self._conns[worker].send(indices)
        except (BrokenPipeError, ConnectionResetError):
            raise self._died(worker, (), describe) from None

    def _died(self, worker: int, indices: Sequence[int], describe: Callable[[int], str]) -> WorkerDiedError:
        process = self._processes[worker]
        process.join(timeout=5)
        code = process.exitcode
        if code is None:
            how = 'closed its pipe'
        elif code < 0:
            how = f'was killed by signal {signal.Signals(-code).name}'
            if -code == signal.SIGKILL:
                how += ' (often the system ending it for memory: try fewer --num_workers)'
        else:
            how = f'exited with status {code}'
        images = ', '.join(describe(i) for i in indices) or 'none'
        return WorkerDiedError(f'Evaluation worker {worker} (pid {process.pid}) {how}; the images it held: {images}')

    def close(self, wait: bool = True) -> None:
        """Stops the workers: asks them to finish (wait=True) or terminates them."""
        for conn in self._conns:
            if wait:
                try:
                    conn.send(None)
                except OSError:
                    pass
        for process in self._processes:
            process.join(timeout=5 if wait else 0)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        for conn in self._conns:
            conn.close()


def _overlaps(pairs: List[tuple], gt_folder: str, pred_folder: str, categories: Dict[int, dict],
              workers: int) -> Iterator[SegmentOverlap]:
    """Yields each pair's SegmentOverlap in order, from `workers` forked processes (in this process without fork)."""
    if len(pairs) <= 1 or 'fork' not in multiprocessing.get_all_start_methods():
        yield from (_overlap(pair, gt_folder, pred_folder, categories) for pair in pairs)
        return
    compile_for_png_ids()
    tasks = [range(start, min(start + _CHUNK, len(pairs))) for start in range(0, len(pairs), _CHUNK)]
    pool = _Workers(min(workers, len(tasks)), (pairs, gt_folder, pred_folder, categories))
    finished = False
    try:
        # A result is a few small arrays and this process only adds them up, so the queue ahead stays short.
        yield from pool.imap(tasks, lambda i: _image_name(pairs[i]))
        finished = True
    finally:
        pool.close(wait=finished)


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


def evaluate(gt_json: str, gt_folder: str, pred_json: str, pred_folder: str,
             metrics: Optional[Sequence[str]] = None, num_workers: int = 0,
             progress: Optional[TextIO] = None) -> Dict[str, dict]:
    """Evaluates prediction files against GT files and returns the metrics dict (see PanopticEvaluator.result).

    Args:
      metrics: names in the metric table (evaluation/metrics.py); None = all of them.
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
    for name in sorted(set(results) - {'pq', 'ap', 'miou'}):  # other metrics of the table: their summaries
        scalars = metric_table.summaries({name: results[name]})
        lines.append(f'{name}: ' + '  '.join(f'{tag.rsplit("/", 1)[-1]} {value:.4f}' for tag, value in scalars.items()))
    return '\n'.join(lines)


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='python -m evaluation.evaluate', description=__doc__.split('\n')[0])
    parser.add_argument('--gt_json', required=True, help='COCO panoptic ground-truth JSON')
    parser.add_argument('--gt_folder', required=True, help='folder of ground-truth PNGs')
    parser.add_argument('--pred_json', required=True, help='COCO panoptic prediction JSON (segments may carry score)')
    parser.add_argument('--pred_folder', required=True, help='folder of prediction PNGs')
    names = ','.join(metric_table.METRICS)
    parser.add_argument('--metrics', default='pq', help=f'comma-separated subset of {names}')
    parser.add_argument('--output_json', default=None, help='where to write the results as JSON')
    parser.add_argument('--num_workers', type=int, default=0, help='worker processes (0 = one per CPU core)')
    args = parser.parse_args(argv)
    args.metrics = [m.strip() for m in args.metrics.split(',') if m.strip()]
    bad = sorted(set(args.metrics) - set(metric_table.METRICS))
    if bad or not args.metrics:
        parser.error(f'--metrics: unknown {bad}; expected a comma-separated subset of {names}')
    if args.num_workers < 0:
        parser.error(f'--num_workers must be >= 0; received {args.num_workers}')
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse_args(argv)
    try:
        results = evaluate(args.gt_json, args.gt_folder, args.pred_json, args.pred_folder, args.metrics,
                           args.num_workers, progress=sys.stderr)
        print(format_table(results))
        if args.output_json:
            atomic_files.write_json(args.output_json, results)
    except (ValueError, WorkerDiedError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    except OSError as e:  # a full disk, a missing permission: one line naming the path
        message = io_errors.user_io_message(e)
        if message is None:
            raise
        print(f'error: {message}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())

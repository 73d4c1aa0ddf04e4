"""Evaluation throughput of the trainer with 1 and 2 workers (MultiWorkerMirroredStrategy on 127.0.0.1 ports).

Each worker evaluates its share of the eval records (trainer/sharded_eval.py) and the accumulators are merged across
workers; the tiny Axial-DeepLab (random weights) on synthetic panoptic validation images. The tiny model is cheap
per image, so the images are larger than the demo's and the batches big enough that the per-image work, which the
workers split, outweighs the per-call and per-pass costs that each worker pays in full. Every setting evaluates the set several times in one process; the first pass (tracing) is left out and the median
of the others gives images/s (wall clock, chief) and images per CPU second of the busiest worker (each worker's
process CPU time of the pass; what the wall clock would show if every worker had a core to itself), each with its
ratio to one worker in the same setting.

Two settings: `shared`, TensorFlow's default threads, where one worker already uses both cores of this 2-core host
and two workers share them; `one core each`, every worker pinned to a core of its own with one TensorFlow thread,
as the workers of a cluster each have their own host. On this shared machine other tenants' jobs take most of
the cores, so the wall clock mostly measures them; the CPU-time column is the one to read there.

  python benchmarks/multi_worker_eval.py [--num_val 96] [--size 160 224] [--batch 8] [--repeats 4]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Tuple

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)

_TINY = os.path.join(_REPO, 'configs', 'synthetic', 'axial_deeplab_tiny.textproto')


def _worker(args) -> None:
    """One worker: evaluation passes over the eval set; the chief prints the seconds of each."""
    if args.pinned:
        task = json.loads(os.environ.get('TF_CONFIG', '{}')).get('task', {}).get('index', 0)
        os.sched_setaffinity(0, {task % os.cpu_count()})
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if args.pinned:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    from deeplab_axial import config_utils  # pylint: disable=g-import-not-at-top
    from deeplab_axial.model import builder  # pylint: disable=g-import-not-at-top
    from trainer import cluster, controller, data_options, distribution_utils, panoptic_task, train_lib  # noqa: E401

    strategy = distribution_utils.create_strategy(None)
    config = config_utils.load_config(_TINY, params={'DATA_DIR': args.data_dir})
    # The smallest k * 16 + 1 that holds the images (the tiny model's output stride is 16).
    config.eval_dataset_options.crop_size[:] = [-(-(s - 1) // 16) * 16 + 1 for s in args.size]
    config.eval_dataset_options.batch_size = args.batch
    descriptor = config_utils.validate(config)['eval']
    crop = tuple(config.eval_dataset_options.crop_size)
    with strategy.scope():
        model = builder.build_model(config, descriptor)
        model.build((None, *crop, 3))
        step = tf.Variable(0, dtype=tf.int64, trainable=False)
    experiment_dir = tempfile.mkdtemp()
    evaluator = panoptic_task.build_evaluator(config, descriptor, strategy, model, crop, experiment_dir, step)
    options = data_options.to_data_options(config.eval_dataset_options, descriptor, is_training=False)
    loop = controller.Controller(strategy, experiment_dir, step, {}, evaluator=evaluator,
                                 eval_dataset=train_lib._eval_dataset(options, strategy))  # pylint: disable=protected-access
    wall, cpu = [], []
    for _ in range(args.repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        loop.evaluate()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    print('RESULT' + json.dumps({'wall': wall, 'cpu': cpu, 'chief': cluster.worker_info(strategy).is_chief}),
          flush=True)


def _measure(args, data_dir: str, workers: int, pinned: bool, log_dir: str) -> Tuple[float, float]:
    """Medians over the warm passes of one setting: the chief's wall-clock seconds, the busiest worker's CPU
    seconds."""
    from trainer import local_cluster  # pylint: disable=g-import-not-at-top
    command = [sys.executable, os.path.abspath(__file__), '--worker', f'--data_dir={data_dir}',
               f'--repeats={args.repeats}', f'--batch={args.batch}', '--size', *map(str, args.size)]
    command += ['--pinned'] if pinned else []
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=_REPO, GCE_METADATA_IP='127.0.0.1:9')
    if workers == 1:
        env.pop('TF_CONFIG', None)
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
        outputs = [proc.stdout + proc.stderr]
    else:
        with local_cluster.LocalCluster([command] * workers, os.path.join(log_dir, f'{workers}{pinned}'), env=env,
                                        cwd=_REPO) as workers_run:
            workers_run.wait(1800)
            outputs = [workers_run.log(i) for i in range(workers)]
    results = []
    for output in outputs:
        lines = [line for line in output.splitlines() if line.startswith('RESULT')]
        if not lines:
            raise RuntimeError(f'No result from a worker of the {workers}-worker run:\n{output[-3000:]}')
        results.append(json.loads(lines[0][len('RESULT'):]))
    chief = next(r for r in results if r['chief'])
    busiest = [max(r['cpu'][i] for r in results) for i in range(1, args.repeats)]
    return statistics.median(chief['wall'][1:]), statistics.median(busiest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--num_val', type=int, default=96)
    parser.add_argument('--size', type=int, nargs=2, default=[160, 224], help='Image height and width.')
    parser.add_argument('--batch', type=int, default=8, help='Global eval batch size.')
    parser.add_argument('--repeats', type=int, default=4, help='Passes per setting; the first is left out.')
    parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--pinned', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--data_dir', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    with tempfile.TemporaryDirectory() as root:
        subprocess.run([sys.executable, '-m', 'deeplab_axial.data.synthetic', f'--output_dir={root}/coco',
                        f'--tfrecord_dir={root}/tfrecord', '--num_train=1', f'--num_val={args.num_val}',
                        f'--height={args.size[0]}', f'--width={args.size[1]}'],
                       cwd=_REPO, check=True, capture_output=True, timeout=600)
        print(f'Evaluation of {args.num_val} synthetic images ({args.size[0]}x{args.size[1]}), tiny Axial-DeepLab, '
              f'eval batch {args.batch}; median of {args.repeats - 1} warm passes')
        print(f'{"setting":>14} {"workers":>8} {"images/s":>9} {"ratio":>6} {"images/CPU-s":>13} {"ratio":>6}')
        for pinned in (False, True):
            base = None
            for workers in (1, 2):
                wall, cpu = _measure(args, os.path.join(root, 'tfrecord'), workers, pinned, root)
                rates = (args.num_val / wall, args.num_val / cpu)
                base = base or rates
                setting = 'one core each' if pinned else 'shared'
                print(f'{setting:>14} {workers:>8} {rates[0]:>9.2f} {rates[0] / base[0]:>6.2f} {rates[1]:>13.2f} '
                      f'{rates[1] / base[1]:>6.2f}', flush=True)


if __name__ == '__main__':
    main()

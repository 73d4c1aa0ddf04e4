"""Two worker processes (MultiWorkerMirroredStrategy, TF_CONFIG on 127.0.0.1) with one shared model_dir.

The tiny Axial-DeepLab through `python -m trainer.train`: one checkpoint series written by the chief alone, weights
of a one-process run on the same global batches, sharded evaluation equal to one process (metrics and prediction
files), a restart that resumes both workers at the chief's step, a killed worker that ends the run with an error,
and a mismatched restore refused. A small Keras model through the Controller: preemption (SIGTERM) saves at one
step on both workers and exits with the restart code, the restart resumes there, and a worker killed mid-training
ends the run with an error.

Every process runs under a timeout; ports are picked free at run time.
"""

import json
import os
import re
import shutil
import signal
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format

from deeplab_axial.data import input_pipeline
from trainer import local_cluster
from trainer import panoptic_eval
from trainer import train_lib

import test_controller
import tiny_experiment

pytestmark = pytest.mark.slow

_REPO = tiny_experiment.REPO
_EXPERIMENT = 'synthetic_axial_deeplab_tiny'
_STEPS = 4
# A run's bound: start-up, tracing the train step on two processes sharing two cores, four steps, one evaluation.
_RUN_TIMEOUT = 600


def _env(tmp_dir: str) -> dict:
    # GCE_METADATA_IP: PreemptionCheckpointHandler asks the GCE metadata server whether it runs on GCP; a closed
    # loopback port answers at once and keeps the question on this host. TMPDIR: where the non-chief's scratch
    # checkpoints go (checked to be removed).
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=_REPO, GCE_METADATA_IP='127.0.0.1:9', TMPDIR=tmp_dir)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('synthetic'))
    tiny_experiment.write_synthetic_data(root, _env(root), num_val=7)
    return os.path.join(root, 'tfrecord')


def _config(data_dir: str, steps: int = _STEPS):
    """Global batch 4 (2 per worker), eval batch 4 over 7 images (each worker: batches of 2, the last partial)."""
    config = tiny_experiment.tiny_config(data_dir, train_batch=4, eval_batch=4, steps=steps)
    solver = config.trainer_options.solver_options
    # Plain SGD: float-rounding differences between the two-process and one-process sums stay rounding-sized
    # (Adam would turn a near-zero gradient's rounding into a full step).
    solver.optimizer = 'sgd'
    solver.base_learning_rate = 0.001
    config.evaluator_options.save_predictions = True
    return config


def _write(config, path: str) -> str:
    with open(path, 'w') as f:
        f.write(text_format.MessageToString(config))
    return path


def _trainer(config_file: str, mode: str, model_dir: str):
    return [sys.executable, '-m', 'trainer.train', f'--config_file={config_file}', f'--mode={mode}',
            f'--model_dir={model_dir}', '--seed=0']


def _wait_for(cluster: local_cluster.LocalCluster, pattern: str, timeout: float) -> bool:
    """Waits until every worker's log matches `pattern` (True) or a worker exits or time runs out (False)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(re.search(pattern, cluster.log(i)) for i in range(len(cluster.procs))):
            return True
        if any(p.poll() is not None for p in cluster.procs):
            return False
        time.sleep(0.3)
    return False


def _variables(prefix: str) -> dict:
    """The model's and optimizer's values in a checkpoint (not the step counters of the checkpoint machinery)."""
    reader = tf.train.load_checkpoint(prefix)
    skip = ('save_counter', 'checkpointed_runs', '_CHECKPOINTABLE_OBJECT_GRAPH', 'train_iterator')
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if not any(s in name for s in skip)}


@pytest.fixture(scope='module')
def two_workers(data_dir, tmp_path_factory):
    """Two workers train 4 steps and evaluate (train_and_eval) into one model_dir; the folder is snapshotted."""
    root = str(tmp_path_factory.mktemp('two_workers'))
    config_file = _write(_config(data_dir), os.path.join(root, 'config.textproto'))
    scratch = os.path.join(root, 'tmp')
    os.makedirs(scratch)
    start = time.time()
    with local_cluster.LocalCluster([_trainer(config_file, 'train_and_eval', os.path.join(root, 'model'))] * 2,
                                    os.path.join(root, 'logs'), env=_env(scratch), cwd=_REPO) as cluster:
        codes = cluster.wait(_RUN_TIMEOUT)
        logs = [cluster.log(i) for i in range(2)]
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    experiment_dir = os.path.join(root, 'model', _EXPERIMENT)
    snapshot = os.path.join(root, 'snapshot')
    shutil.copytree(experiment_dir, snapshot)
    return dict(root=root, experiment_dir=experiment_dir, snapshot=snapshot, logs=logs, scratch=scratch,
                seconds=time.time() - start, data_dir=data_dir)


def test_only_the_chief_writes_one_checkpoint_series(two_workers):
    names = sorted(os.listdir(two_workers['snapshot']))
    checkpoints = [n for n in names if n.startswith('ckpt-')]
    assert checkpoints == ['ckpt-0.data-00000-of-00001', 'ckpt-0.index', 'ckpt-2.data-00000-of-00001', 'ckpt-2.index',
                           'ckpt-4.data-00000-of-00001', 'ckpt-4.index']
    assert set(names) - set(checkpoints) == {'checkpoint', 'config.textproto', 'eval', 'eval_results.json',
                                             'predictions', 'train'}
    assert os.listdir(two_workers['scratch']) == []  # the other worker's scratch checkpoints and PNGs are gone
    with open(os.path.join(two_workers['snapshot'], 'eval_results.json')) as f:
        assert json.load(f)['global_step'] == _STEPS
    # Both workers finished with the same metrics (each logs the merged result).
    lines = [re.search(r'eval at step 4 .*?: (.*)', log).group(1) for log in two_workers['logs']]
    assert lines[0] == lines[1]


def test_two_workers_train_like_one_process_on_the_same_batches(two_workers, tmp_path, monkeypatch):
    """The one-process run reads, per step, worker 0's batch and worker 1's batch side by side: the same 4
    examples, the same seed, so the same initial weights, losses and batch-norm statistics (up to rounding)."""
    def both_shards(options, strategy):
        del strategy
        shards = [input_pipeline.build_dataset(options, tf.distribute.InputContext(2, i, 2)) for i in range(2)]
        return tf.data.Dataset.zip(tuple(shards)).map(lambda a, b: {k: tf.concat([a[k], b[k]], 0) for k in a})

    monkeypatch.setattr(train_lib, '_train_dataset', both_shards)
    config = _config(two_workers['data_dir'])
    train_lib.run_experiment(config, 'train', str(tmp_path), tf.distribute.OneDeviceStrategy('/cpu:0'), seed=0)
    one = _variables(os.path.join(str(tmp_path), 'ckpt-4'))
    two = _variables(os.path.join(two_workers['snapshot'], 'ckpt-4'))
    assert sorted(one) == sorted(two) and len(one) > 400
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-6, err_msg=name)
    earlier = _variables(os.path.join(str(tmp_path), 'ckpt-2'))
    assert sum(not np.array_equal(earlier[n], one[n]) for n in one) > 300  # trained weights are compared


def test_sharded_evaluation_equals_one_process(two_workers, tmp_path):
    """The same checkpoint evaluated by one process, at the per-worker batch size: identical metrics, details and
    prediction files (the other worker's PNGs reached the chief; the JSON lists images in record order)."""
    experiment_dir = str(tmp_path / 'one')
    os.makedirs(experiment_dir)
    for name in os.listdir(two_workers['snapshot']):
        if name.startswith('ckpt-4') or name == 'checkpoint':
            shutil.copy(os.path.join(two_workers['snapshot'], name), experiment_dir)
    with open(os.path.join(experiment_dir, 'checkpoint'), 'w') as f:
        f.write('model_checkpoint_path: "ckpt-4"\n')
    config = _config(two_workers['data_dir'])
    config.eval_dataset_options.batch_size = 2
    train_lib.run_experiment(config, 'eval', experiment_dir, tf.distribute.OneDeviceStrategy('/cpu:0'))

    def load(directory, name):
        with open(os.path.join(directory, name)) as f:
            return json.load(f)

    one, two = load(experiment_dir, 'eval_results.json'), load(two_workers['snapshot'], 'eval_results.json')
    assert one == two
    assert two['details']['miou']['mIoU'] > 0
    predictions = os.path.join(panoptic_eval.PREDICTIONS_DIR, panoptic_eval.PREDICTIONS_NAME)
    one_json = load(experiment_dir, predictions + '.json')
    assert one_json == load(two_workers['snapshot'], predictions + '.json')
    assert len(one_json['annotations']) == 7
    for annotation in one_json['annotations']:
        with open(os.path.join(experiment_dir, predictions, annotation['file_name']), 'rb') as f, \
                open(os.path.join(two_workers['snapshot'], predictions, annotation['file_name']), 'rb') as g:
            assert f.read() == g.read(), annotation['file_name']


def test_restart_resumes_both_workers_and_a_killed_worker_ends_the_run(two_workers):
    """Both workers restart on the chief's folder with a longer run: each restores the chief's ckpt-4. Then
    worker 1 is killed (SIGKILL): the chief stops with an error (at its next collective, or when the coordination
    service misses worker 1's heartbeats) instead of waiting for it."""
    root = two_workers['root']
    config_file = _write(_config(two_workers['data_dir'], steps=1000), os.path.join(root, 'long.textproto'))
    with local_cluster.LocalCluster([_trainer(config_file, 'train', os.path.join(root, 'model'))] * 2,
                                    os.path.join(root, 'logs_restart'), env=_env(two_workers['scratch']),
                                    cwd=_REPO) as cluster:
        restored = _wait_for(cluster, r'Restored \S+/ckpt-4 at step 4', _RUN_TIMEOUT)
        assert restored, cluster.log(0)[-3000:] + cluster.log(1)[-3000:]
        cluster.procs[1].send_signal(signal.SIGKILL)
        killed = time.time()
        codes = cluster.wait(120)
        seconds = time.time() - killed
    assert codes[0] not in (None, 0) and codes[1] == -signal.SIGKILL, (codes, cluster.log(0)[-3000:])
    assert seconds < 120


def test_workers_that_restore_different_steps_are_refused(two_workers, tmp_path):
    """Worker 1 is given a folder of its own (as with a model_dir on each machine's local disk): it finds no
    checkpoint while the chief restores ckpt-4, and both stop with the same message."""
    root = two_workers['root']
    config_file = _write(_config(two_workers['data_dir']), str(tmp_path / 'config.textproto'))
    commands = [_trainer(config_file, 'train', os.path.join(root, 'model')),
                _trainer(config_file, 'train', str(tmp_path / 'elsewhere'))]
    with local_cluster.LocalCluster(commands, str(tmp_path / 'logs'), env=_env(str(tmp_path)),
                                    cwd=_REPO) as cluster:
        codes = cluster.wait(_RUN_TIMEOUT)
        logs = [cluster.log(i) for i in range(2)]
    assert codes == [1, 1], logs
    for log in logs:
        assert 'error: The workers restored different checkpoints' in log
        assert re.search(r'worker 0: step 4 \(\S+ckpt-4\); worker 1: step 0 \(no checkpoint\)', log), log[-2000:]


_SMALL_MODEL_WORKER = textwrap.dedent('''
    import sys
    sys.path[:0] = [{repo!r}, {tests!r}]
    from absl import logging
    logging.set_verbosity(logging.INFO)  # the controller's progress lines
    from trainer import distribution_utils
    strategy = distribution_utils.create_strategy(None)
    import test_controller as t
    controller, _, _ = t._controller({model_dir!r}, strategy=strategy, steps_per_loop=5, checkpoint_interval=100000,
                                     summary_interval=100000)
    print('START', controller.global_step, flush=True)
    controller.train({steps})
    print('END', controller.global_step, flush=True)
''')


def _small_model_cluster(tmp_path, name: str, steps: int) -> local_cluster.LocalCluster:
    script = _SMALL_MODEL_WORKER.format(repo=_REPO, tests=os.path.join(_REPO, 'tests'),
                                       model_dir=str(tmp_path / 'model'), steps=steps)
    return local_cluster.LocalCluster([[sys.executable, '-c', script]] * 2, str(tmp_path / name),
                                      env=_env(str(tmp_path)), cwd=_REPO)


def test_preemption_saves_on_both_workers_and_the_restart_resumes(tmp_path):
    """SIGTERM to worker 1 (a preemption notice): PreemptionCheckpointHandler has both workers save at the same
    step (the chief into model_dir) and exit with the restart code 42; restarted, both resume from that step."""
    with _small_model_cluster(tmp_path, 'logs', 10 ** 7) as cluster:
        assert _wait_for(cluster, r'step \d+/10000000', 120), cluster.log(0)[-3000:]
        cluster.procs[1].send_signal(signal.SIGTERM)
        codes = cluster.wait(120)
    assert codes == [42, 42], (codes, cluster.log(0)[-3000:], cluster.log(1)[-3000:])
    saved = tf.train.latest_checkpoint(str(tmp_path / 'model'))
    assert saved is not None
    step = int(saved.rsplit('-', 1)[1])
    assert step > 0 and step % 5 == 0
    assert sorted(n for n in os.listdir(tmp_path / 'model') if n.endswith('.index')) == ['ckpt-0.index',
                                                                                        f'ckpt-{step}.index']

    with _small_model_cluster(tmp_path, 'logs_restart', step + 5) as cluster:
        codes = cluster.wait(120)
        logs = [cluster.log(i) for i in range(2)]
    assert codes == [0, 0], logs
    for log in logs:
        assert f'START {step}\n' in log and f'END {step + 5}\n' in log


def test_a_worker_killed_mid_training_ends_the_run(tmp_path):
    """SIGKILL to worker 1 while both train: the chief's next collective fails and it exits with an error within
    the bound, instead of hanging."""
    with _small_model_cluster(tmp_path, 'logs', 10 ** 7) as cluster:
        assert _wait_for(cluster, r'step \d+/10000000', 120), cluster.log(0)[-3000:]
        cluster.procs[1].send_signal(signal.SIGKILL)
        killed = time.time()
        codes = cluster.wait(60)
        seconds = time.time() - killed
    assert codes[0] not in (None, 0, 42) and codes[1] == -signal.SIGKILL, (codes, cluster.log(0)[-3000:])
    assert 'UnavailableError' in cluster.log(0) and seconds < 60


_CONTINUOUS_EVAL_WORKER = textwrap.dedent('''
    import sys
    sys.path[:0] = [{repo!r}, {tests!r}]
    from trainer import distribution_utils
    strategy = distribution_utils.create_strategy(None)
    import numpy as np
    import tensorflow as tf
    import test_controller as t
    from trainer import controller as controller_lib
    with strategy.scope():
        model, step = t._model(), tf.Variable(0, dtype=tf.int64)
    evaluator = t._MSEEvaluator(model, step)
    data = tf.data.Dataset.from_tensor_slices({{'x': np.eye(4, dtype=np.float32), 'y': t._TRUE_W}}).batch(4)
    controller = controller_lib.Controller(strategy, {model_dir!r}, step, {{'model': model}}, evaluator=evaluator,
                                           eval_dataset=data)
    results = controller.evaluate_continuously(timeout=3, final_step=100)
    print('EVALUATED', evaluator.steps, results, flush=True)
''')


def test_continuous_evaluation_follows_the_chiefs_checkpoints(tmp_path):
    """Two evaluation workers: the chief watches model_dir and hands its checkpoint, then the end of its wait, to
    worker 1 (a collective each time), so both evaluate the same checkpoint once and stop together."""
    trained, model, _ = test_controller._controller(tmp_path / 'model')
    trained.train(4)
    script = _CONTINUOUS_EVAL_WORKER.format(repo=_REPO, tests=os.path.join(_REPO, 'tests'),
                                            model_dir=str(tmp_path / 'model'))
    with local_cluster.LocalCluster([[sys.executable, '-c', script]] * 2, str(tmp_path / 'logs'),
                                    env=_env(str(tmp_path)), cwd=_REPO) as cluster:
        codes = cluster.wait(120)
        logs = [cluster.log(i) for i in range(2)]
    assert codes == [0, 0], logs
    expected = float(np.mean((model(np.eye(4, dtype=np.float32)).numpy() - test_controller._TRUE_W) ** 2))
    for log in logs:
        steps, mse = re.search(r"EVALUATED \[(.*?)\] \{'evaluation/mse': (\S+)\}", log).groups()
        assert steps == '4' and float(mse) == pytest.approx(expected, rel=1e-6)

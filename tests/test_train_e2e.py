"""End to end: trainer.train_lib.run_experiment on the synthetic datasets with tiny models.

One synthetic dataset (8 train, 4 val images of 33x49) is written once per module. Panoptic runs train at crop
33x33 with batch 2 and evaluate at 33x49 with batch 3 (so the last eval batch is partial).
"""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format

from deeplab_axial import common
from deeplab_axial import config_utils
from deeplab_axial.inference import multi_scale
from deeplab_axial.protos import config_pb2
from evaluation import evaluate as evaluate_lib
from trainer import classification_task
from trainer import controller as controller_lib
from trainer import eval_results
from trainer import panoptic_eval
from trainer import train
from trainer import train_lib

import tiny_experiment

pytestmark = pytest.mark.slow

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CLASSIFICATION = os.path.join(_REPO, 'configs', 'synthetic', 'axial_resnet_tiny.textproto')
_ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
_PQ_KEYS = [f'evaluation/pq/{m}{s}' for m in ('PQ', 'SQ', 'RQ') for s in ('', '_Things', '_Stuff')]


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('synthetic'))
    tiny_experiment.write_synthetic_data(root, _ENV, num_val=4, classification=True)
    return root


def _panoptic_config(data_dir: str, steps: int = 4):
    return tiny_experiment.tiny_config(os.path.join(data_dir, 'tfrecord'), train_batch=2, eval_batch=3, steps=steps)


def _strategy():
    return tf.distribute.OneDeviceStrategy('/cpu:0')


def _checkpoint_steps(directory: str) -> list:
    state = tf.train.get_checkpoint_state(directory)
    return sorted(int(p.rsplit('-', 1)[1]) for p in state.all_model_checkpoint_paths) if state else []


def _write_config(config, path: str) -> str:
    with open(path, 'w') as f:
        f.write(text_format.MessageToString(config))
    return path


def _check_panoptic_metrics(metrics: dict) -> None:
    for key in _PQ_KEYS + ['evaluation/ap/AP_Mask', 'evaluation/iou/IoU']:
        assert key in metrics, key
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics[key])


@pytest.fixture(scope='module')
def resumed_run(data_dir, tmp_path_factory):
    """A `trainer.train` process killed (SIGKILL) after its first checkpoint, then resumed in-process for two
    more steps with train_and_eval and save_predictions."""
    root = tmp_path_factory.mktemp('panoptic')
    long_run = _panoptic_config(data_dir, steps=1000)
    config_file = _write_config(long_run, str(root / 'config.textproto'))
    experiment_dir = os.path.join(str(root), long_run.experiment_name)
    proc = subprocess.Popen([sys.executable, '-m', 'trainer.train', f'--config_file={config_file}', '--mode=train',
                             f'--model_dir={root}'], cwd=_REPO, env=_ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 400
    # ckpt-0 (the initial state) comes first; wait for a trained one.
    while max(_checkpoint_steps(experiment_dir), default=0) == 0 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate(timeout=60)
    assert alive and max(_checkpoint_steps(experiment_dir), default=0) > 0, stderr[-3000:]
    assert _checkpoint_steps(experiment_dir)[0] == 0
    killed_at = max(_checkpoint_steps(experiment_dir))

    config = _panoptic_config(data_dir, steps=killed_at + 2)
    config.evaluator_options.save_predictions = True
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    absl_logger = logging.getLogger('absl')
    level = absl_logger.level
    absl_logger.addHandler(handler)
    absl_logger.setLevel(logging.INFO)
    try:
        out = train_lib.run_experiment(config, common.MODE_TRAIN_AND_EVAL, experiment_dir, _strategy(), seed=0)
    finally:
        absl_logger.removeHandler(handler)
        absl_logger.setLevel(level)
    return dict(config=config, experiment_dir=experiment_dir, killed_at=killed_at, out=out,
                messages=[r.getMessage() for r in records], data_dir=data_dir)


def test_killed_run_resumes_from_its_checkpoint(resumed_run):
    killed_at = resumed_run['killed_at']
    assert killed_at >= 2
    assert any(f'at step {killed_at}' in m and 'Restored' in m for m in resumed_run['messages'])
    # Two steps ran (one loop of 2), from the checkpoint's step: no step-2 progress line in the resumed run.
    progress = [m for m in resumed_run['messages'] if m.startswith('step ')]
    assert progress and all(m.startswith(f'step {killed_at + 2}/') for m in progress), progress
    assert max(_checkpoint_steps(resumed_run['experiment_dir'])) == killed_at + 2
    losses = resumed_run['out']['train']
    keys = ('total_loss', 'semantic_loss', 'center_loss', 'regression_loss')
    assert set(keys) <= set(losses) and all(np.isfinite(losses[k]) for k in keys)


def test_train_and_eval_writes_metrics_summaries_and_predictions(resumed_run):
    experiment_dir = resumed_run['experiment_dir']
    metrics = resumed_run['out']['eval']
    _check_panoptic_metrics(metrics)
    with open(os.path.join(experiment_dir, eval_results.EVAL_RESULTS_NAME)) as f:
        saved = json.load(f)
    assert saved['global_step'] == resumed_run['killed_at'] + 2
    assert saved['metrics'] == pytest.approx(metrics)
    assert saved['details']['pq']['All']['n'] == 6  # 3 things + 3 stuff classes of synthetic_panoptic.
    tags = set()
    for path in tf.io.gfile.glob(os.path.join(experiment_dir, 'eval', 'events.*')):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    assert {'evaluation/pq/PQ', 'evaluation/pq/TP', 'evaluation/iou/IoU', 'evaluation/ap/AP_Mask_@IoU=0.5',
            'losses/eval_total_loss', 'losses/eval_center_loss', 'vis/prediction_vs_ground_truth/0'} <= tags
    assert np.isfinite(metrics['losses/eval_total_loss']) and metrics['losses/eval_total_loss'] > 0
    train_tags = set()
    for path in tf.io.gfile.glob(os.path.join(experiment_dir, 'train', 'events.*')):
        for event in tf.compat.v1.train.summary_iterator(path):
            train_tags.update(v.tag for v in event.summary.value)
    assert {'losses/train_total_loss', 'losses/train_center_loss', 'learning_rate'} <= train_tags  # deeplab2's


def test_saved_predictions_are_scored_by_the_evaluation_cli_like_in_memory(resumed_run):
    """The COCO-format predictions at the raw size, scored by evaluation.evaluate against the dataset's own
    ground-truth PNGs, give the in-memory PQ (same images, same segments)."""
    coco = os.path.join(resumed_run['data_dir'], 'coco')
    predictions = os.path.join(resumed_run['experiment_dir'], panoptic_eval.PREDICTIONS_DIR)
    with open(os.path.join(predictions, panoptic_eval.PREDICTIONS_NAME + '.json')) as f:
        written = json.load(f)
    with open(os.path.join(coco, 'annotations', 'panoptic_val2017.json')) as f:
        gt = json.load(f)
    assert sorted(a['image_id'] for a in written['annotations']) == sorted(a['image_id'] for a in gt['annotations'])
    official = evaluate_lib.evaluate(
        os.path.join(coco, 'annotations', 'panoptic_val2017.json'),
        os.path.join(coco, 'annotations', 'panoptic_val2017'),
        os.path.join(predictions, panoptic_eval.PREDICTIONS_NAME + '.json'),
        os.path.join(predictions, panoptic_eval.PREDICTIONS_NAME), metrics=('pq',))
    metrics = resumed_run['out']['eval']
    for part, suffix in (('All', ''), ('Things', '_Things'), ('Stuff', '_Stuff')):
        assert official['pq'][part]['pq'] == pytest.approx(metrics[f'evaluation/pq/PQ{suffix}'], abs=1e-9)
        assert official['pq'][part]['sq'] == pytest.approx(metrics[f'evaluation/pq/SQ{suffix}'], abs=1e-9)


def test_eval_and_continuous_eval_modes(resumed_run, tmp_path):
    """eval scores the newest checkpoint; continuous_eval scores the one it finds, then a newer one written while
    it waits, and stops at training_number_of_steps."""
    source = resumed_run['experiment_dir']
    config = resumed_run['config']
    final = resumed_run['killed_at'] + 2
    out = train_lib.run_experiment(config, common.MODE_EVAL, source, _strategy())
    _check_panoptic_metrics(out['eval'])
    assert out['eval'] == pytest.approx(resumed_run['out']['eval'])  # Same checkpoint, same data.

    # A folder holding only the older checkpoint; the final one is copied in while continuous_eval waits.
    target = str(tmp_path / 'follow')
    os.makedirs(target)
    older = f'ckpt-{resumed_run["killed_at"]}'
    for name in os.listdir(source):
        if name.startswith(older + '.'):
            shutil.copy(os.path.join(source, name), target)
    tf.train.CheckpointManager(tf.train.Checkpoint(), target, max_to_keep=None)  # (no state file yet)
    with open(os.path.join(target, 'checkpoint'), 'w') as f:
        f.write(f'model_checkpoint_path: "{older}"\nall_model_checkpoint_paths: "{older}"\n')
    config.evaluator_options.continuous_eval_timeout = 120
    steps_seen = []
    result = {}
    original = panoptic_eval.PanopticEval.result

    def recording_result(self):
        metrics = original(self)
        steps_seen.append(json.load(open(os.path.join(target, eval_results.EVAL_RESULTS_NAME)))['global_step'])
        return metrics

    panoptic_eval.PanopticEval.result = recording_result
    try:
        thread = threading.Thread(target=lambda: result.update(
            train_lib.run_experiment(config, common.MODE_CONTINUOUS_EVAL, target, _strategy())))
        thread.start()
        while not steps_seen and thread.is_alive():
            thread.join(0.2)
        newer = f'ckpt-{final}'
        for name in sorted(os.listdir(source), key=lambda n: n.endswith('.index')):  # index last
            if name.startswith(newer + '.'):
                shutil.copy(os.path.join(source, name), target)
        with open(os.path.join(target, 'checkpoint.tmp'), 'w') as f:
            f.write(f'model_checkpoint_path: "{newer}"\nall_model_checkpoint_paths: "{older}"\n'
                    f'all_model_checkpoint_paths: "{newer}"\n')
        os.replace(os.path.join(target, 'checkpoint.tmp'), os.path.join(target, 'checkpoint'))
        thread.join(300)
    finally:
        panoptic_eval.PanopticEval.result = original
    assert not thread.is_alive()
    assert steps_seen[0] == resumed_run['killed_at'] and steps_seen[-1] == final
    _check_panoptic_metrics(result['eval'])


def _record_multi_scale(monkeypatch) -> list:
    """Records (scales, flip, model input sizes) of every multi-scale average the evaluators trace."""
    calls = []
    average = multi_scale.multi_scale_predict

    def recording(predict_raw, images, scales=(1.0,), flip=False):
        sizes = []

        def run(x):
            sizes.append(tuple(x.shape[1:3]))
            return predict_raw(x)
        out = average(run, images, scales, flip)
        calls.append((tuple(scales), flip, sizes))
        return out

    monkeypatch.setattr(multi_scale, 'multi_scale_predict', recording)
    return calls


def test_eval_scales_and_flipped_images_reach_the_evaluation(resumed_run, monkeypatch):
    config = config_pb2.ExperimentOptions()
    config.CopyFrom(resumed_run['config'])
    config.evaluator_options.eval_scales[:] = [0.75, 1.0]
    config.evaluator_options.add_flipped_images = True
    calls = _record_multi_scale(monkeypatch)
    out = train_lib.run_experiment(config, common.MODE_EVAL, resumed_run['experiment_dir'], _strategy())
    # Eval crop 33 x 49: (33 - 1) * 0.75 + 1 = 25 and (49 - 1) * 0.75 + 1 = 37, each plain and mirrored.
    assert calls and all(c == ((0.75, 1.0), True, [(25, 37)] * 2 + [(33, 49)] * 2) for c in calls)
    _check_panoptic_metrics(out['eval'])


def test_eval_mode_without_checkpoint_is_a_clear_error(data_dir, tmp_path):
    with pytest.raises(ValueError, match='no checkpoint'):
        train_lib.run_experiment(_panoptic_config(data_dir), common.MODE_EVAL, str(tmp_path), _strategy())


def test_classification_train_and_eval(data_dir, tmp_path, monkeypatch):
    config = config_utils.load_config(_CLASSIFICATION,
                                      params={'DATA_DIR': os.path.join(data_dir, 'classification')})
    config.evaluator_options.eval_scales[:] = [1.0, 1.5]
    config.evaluator_options.add_flipped_images = True
    calls = _record_multi_scale(monkeypatch)
    config.train_dataset_options.batch_size = 4
    config.eval_dataset_options.batch_size = 5
    trainer = config.trainer_options
    trainer.steps_per_loop = trainer.save_checkpoints_steps = trainer.save_summaries_steps = 2
    trainer.solver_options.training_number_of_steps = 2
    trainer.solver_options.warmup_steps = 1
    config.evaluator_options.eval_interval = 2
    config.evaluator_options.eval_steps = 3
    out = train_lib.run_experiment(config, common.MODE_TRAIN_AND_EVAL, str(tmp_path), _strategy(), seed=0)
    assert np.isfinite(out['train']['total_loss'])
    # Label-smoothed cross-entropy over 6 classes of an untrained net: near log(6).
    assert 0.5 * np.log(6) < out['train']['classification_loss'] < 3 * np.log(6)
    top1, top5 = out['eval'][classification_task.TOP1_KEY], out['eval'][classification_task.TOP5_KEY]
    assert 0.0 <= top1 <= top5 <= 1.0
    # The loss on the eval images (deeplab2's eval loss tags), near log(6) as well.
    assert out['eval']['losses/eval_total_loss'] == out['eval']['losses/eval_classification_loss']
    assert 0.5 * np.log(6) < out['eval']['losses/eval_classification_loss'] < 3 * np.log(6)
    # Probabilities averaged over the 32 x 32 eval crop and its 1.5x (47 x 47), each plain and mirrored.
    assert calls and all(c == ((1.0, 1.5), True, [(32, 32)] * 2 + [(47, 47)] * 2) for c in calls)
    with open(tmp_path / eval_results.EVAL_RESULTS_NAME) as f:
        saved = json.load(f)
    assert saved['global_step'] == 2 and saved['details']['num_examples'] == 15  # 3 batches of 5.
    # Accuracies are counts over 15 examples.
    assert top1 * 15 == pytest.approx(round(top1 * 15)) and top5 * 15 == pytest.approx(round(top5 * 15))


def test_train_py_reports_non_finite_loss_without_traceback(monkeypatch, tmp_path, capsys):
    message = 'Non-finite training loss at step 3: {total_loss: nan}. The last good checkpoint is ckpt-2.'

    def diverge(*args, **kwargs):
        raise controller_lib.NonFiniteLossError(message)

    monkeypatch.setattr(train_lib, 'run_experiment', diverge)
    monkeypatch.setattr(train, 'load_experiment_config', lambda *a: None)
    monkeypatch.setattr(train, 'set_up_experiment', lambda *a: (None, str(tmp_path), None))
    from absl import flags
    flags.FLAGS(['train', '--config_file=c', '--mode=train', f'--model_dir={tmp_path}'])
    try:
        status = train.main(['train'])
    finally:
        flags.FLAGS.unparse_flags()
    # A runtime outcome, not a user error: exit status 1 and the message as the one error line, no traceback.
    assert status == 1
    err = capsys.readouterr().err
    assert f'error: {message}' in err and 'Traceback' not in err

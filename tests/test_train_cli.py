"""`python -m trainer.train` owning its folder: a second trainer is refused, a seeded run killed (SIGKILL) mid-way and
rerun ends with the weights of an uninterrupted seeded run (bit for bit), the rerun takes over the dead trainer's
lock and removes the temporaries of an interrupted save."""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format

from deeplab_axial import config_utils
from trainer import model_dir

import tiny_experiment

pytestmark = pytest.mark.slow

_REPO = tiny_experiment.REPO
_EXPERIMENT = 'synthetic_axial_deeplab_tiny'
_ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=_REPO)
_STEPS = 40
_TIMEOUT = 600


@pytest.fixture(scope='module')
def config_file(tmp_path_factory):
    root = tmp_path_factory.mktemp('cli')
    tiny_experiment.write_synthetic_data(str(root), _ENV, num_val=4)
    config = tiny_experiment.tiny_config(str(root / 'tfrecord'), train_batch=2, eval_batch=4, steps=_STEPS)
    path = root / 'config.textproto'
    path.write_text(text_format.MessageToString(config))
    return str(path)


def _command(config_file: str, directory: str, seed: int = 7):
    return [sys.executable, '-m', 'trainer.train', f'--config_file={config_file}', '--mode=train',
            f'--model_dir={directory}', f'--seed={seed}']


def _run(command):
    proc = subprocess.run(command, cwd=_REPO, env=_ENV, capture_output=True, text=True, timeout=_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _values(prefix: str) -> dict:
    reader = tf.train.load_checkpoint(prefix)
    # Everything but the object graph and the input iterator's state (a variant tensor numpy cannot hold).
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name != '_CHECKPOINTABLE_OBJECT_GRAPH' and not name.endswith('ITERATOR_STATE')}


def _assert_same(a: str, b: str) -> None:
    first, second = _values(a), _values(b)
    assert sorted(first) == sorted(second)
    for name in first:
        assert np.array_equal(first[name], second[name]), name


def _steps(experiment_dir: str) -> list:
    return sorted(int(m.group(1)) for m in (re.match(r'ckpt-(\d+)\.index$', n) for n in os.listdir(experiment_dir))
                  if m) if os.path.isdir(experiment_dir) else []


def test_seeded_kill_and_rerun_equals_an_uninterrupted_run(config_file, tmp_path):
    # The uninterrupted run goes on beside the others (two processes use the two cores better than one).
    straight = str(tmp_path / 'straight')
    uninterrupted = subprocess.Popen(_command(config_file, straight), cwd=_REPO, env=_ENV,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    interrupted = str(tmp_path / 'interrupted')
    experiment_dir = os.path.join(interrupted, _EXPERIMENT)
    lock = os.path.join(experiment_dir, model_dir.LOCK_NAME)
    first = subprocess.Popen(_command(config_file, interrupted), cwd=_REPO, env=_ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + _TIMEOUT
        while not os.path.exists(lock) and first.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        # A second trainer on the same folder, while the first builds and trains: refused, naming the holder.
        second = subprocess.run(_command(config_file, interrupted, seed=8), cwd=_REPO, env=_ENV,
                                capture_output=True, text=True, timeout=_TIMEOUT)
        assert second.returncode == 1, second.stderr[-3000:]
        assert 'is in use by another trainer (host ' in second.stderr and f'pid {first.pid},' in second.stderr
        assert 'Traceback' not in second.stderr
        while not _steps(experiment_dir) and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        running = first.poll() is None
        first.send_signal(signal.SIGKILL)
        _, stderr = first.communicate(timeout=60)
        _, straight_log = uninterrupted.communicate(timeout=_TIMEOUT)
    finally:
        for proc in (first, uninterrupted):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert uninterrupted.returncode == 0, straight_log[-3000:]
    killed_at = max(_steps(experiment_dir), default=0)
    assert running and 0 < killed_at < _STEPS, stderr[-3000:]
    assert os.path.exists(lock)  # a SIGKILL leaves the lock behind
    # Seeded runs are identical: the killed run's first checkpoint is the uninterrupted run's.
    _assert_same(os.path.join(experiment_dir, 'ckpt-2'), os.path.join(straight, _EXPERIMENT, 'ckpt-2'))
    # What a kill during a save leaves behind.
    os.makedirs(os.path.join(experiment_dir, f'ckpt-{killed_at + 2}_temp'))
    with open(os.path.join(experiment_dir, f'ckpt-{killed_at + 2}_temp', 'part-00000-of-00001.index'), 'wb') as f:
        f.write(b'partial')

    rerun = _run(_command(config_file, interrupted))
    assert 'Taking over the lock of a trainer that is gone (host ' in rerun.stderr
    assert f'pid {first.pid},' in rerun.stderr
    assert re.search(rf'Restored \S+ckpt-{killed_at} at step {killed_at}', rerun.stderr)
    _assert_same(os.path.join(experiment_dir, f'ckpt-{_STEPS}'), os.path.join(straight, _EXPERIMENT,
                                                                             f'ckpt-{_STEPS}'))
    leftovers = [n for n in os.listdir(experiment_dir) if n.endswith('_temp') or n == model_dir.LOCK_NAME]
    assert leftovers == []
    copy = config_utils.load_config(os.path.join(experiment_dir, model_dir.CONFIG_COPY_NAME))
    assert copy.trainer_options.seed == 7
